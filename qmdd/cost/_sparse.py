"""Counters for pruned (sparse) detectors: non-zero parameters and sparse storage.

A pruned weight is an exact zero in the tensor the forward pass uses (``qmdd.prune`` keeps
it so; see docs/lottery.md), so what a sparse model costs to store follows from counting
zeros:

* **non-zero parameters**: conv/linear weights counted *after* their weight quantizer (a
  trained weight within half a step of zero becomes code 0 and is stored as a zero too),
  every other parameter as it is; quantizer parameters are excluded, as in
  :func:`qmdd.cost.parameter_count`.
* **sparse storage**: every conv/linear weight tensor takes the cheaper of its dense form
  (``n * b`` bits for n weights of b bits) and a bitmap plus the non-zero values
  (``n * 1 + nonzero * b`` bits), the choice the ``.qmdd`` export makes per tensor
  (``lsq_codes_sparse`` / ``float32_sparse``; it rounds each part up to whole bytes and
  adds a JSON header, so the file is a few hundred bytes larger). Every other tensor is
  counted as :func:`qmdd.cost.storage_bits` counts it (32 bits, masks 1 bit).

The break-even density is ``1 - 1/b`` non-zeros: a bitmap pays off for FP32 weights below
97 % density, for 2-bit weights only below 50 %.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from qmdd.config import FULL_PRECISION
from qmdd.cost._counters import MASK_BITS, fp32_storage_bits, parameter_count, storage_bits
from qmdd.quant import Quantizer, quantized_layers

__all__ = ["nonzero_parameter_count", "sparse_storage_bits", "sparse_weight_bits", "sparse_cost_summary"]

_FLOAT_BITS = 32


def sparse_weight_bits(elements: int, nonzero: int, bits: int) -> int:
    """Bits of one weight tensor: min(dense ``n*b``, bitmap ``n`` + ``nonzero*b``)."""
    if not 0 <= nonzero <= elements:
        raise ValueError(f"nonzero={nonzero} must lie in [0, {elements}]")
    return min(elements * bits, elements * MASK_BITS + nonzero * bits)


@torch.no_grad()
def _effective_weights(model: nn.Module) -> list[tuple[str, torch.Tensor, int]]:
    """``(state-dict key, weight the forward uses, bits)`` of every conv/linear layer."""
    bits = {name: layer.weight_bits for name, layer in quantized_layers(model)}
    result = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        weight_bits = bits.get(name, FULL_PRECISION)
        weight = module.weight.detach()  # under torch.nn.utils.prune: already weight_orig * mask
        quantizer = getattr(module, "weight_quantizer", None)
        if weight_bits < FULL_PRECISION and quantizer is not None and quantizer.calibrated:
            weight = quantizer(weight)
        prefix = f"{name}." if name else ""
        key = prefix + ("weight_orig" if hasattr(module, "weight_orig") else "weight")
        result.append((key, weight, weight_bits))
    return result


def nonzero_parameter_count(model: nn.Module) -> int:
    """Parameters that are non-zero in the forward pass (module docstring)."""
    weights = {key.removesuffix("_orig"): weight for key, weight, _ in _effective_weights(model)}
    quantizers = [f"{name}." for name, m in model.named_modules() if isinstance(m, Quantizer) and name]
    total = 0
    for key, parameter in model.named_parameters():
        if any(key.startswith(prefix) for prefix in quantizers):
            continue
        value = weights.get(key.removesuffix("_orig"), parameter.detach())
        total += int(torch.count_nonzero(value))
    return total


def sparse_storage_bits(model: nn.Module) -> int:
    """Counted storage with sparse conv/linear weights in their cheaper encoding (module docstring)."""
    state = model.state_dict()
    total = storage_bits(model)
    for key, weight, bits in _effective_weights(model):
        dense = state[key].numel() * bits
        mask_key = key[: -len("_orig")] + "_mask" if key.endswith("_orig") else None
        if mask_key in state:
            dense += state[mask_key].numel() * MASK_BITS  # the bitmap replaces torch's mask
        total += sparse_weight_bits(weight.numel(), int(torch.count_nonzero(weight)), bits) - dense
    return total


def sparse_cost_summary(model: nn.Module) -> dict[str, Any]:
    """Parameters, non-zeros and storage, dense and sparse, as JSON-safe numbers."""
    params = parameter_count(model)
    nonzero = nonzero_parameter_count(model)
    dense_bits = storage_bits(model)
    sparse_bits = sparse_storage_bits(model)
    fp32_bits = fp32_storage_bits(model)
    return {
        "params": params,
        "nonzero_params": nonzero,
        "density": nonzero / params if params else float("nan"),
        "storage_bits": dense_bits,
        "sparse_storage_bits": sparse_bits,
        "sparse_storage_bytes": (sparse_bits + 7) // 8,
        "fp32_storage_bits": fp32_bits,
        "sparse_storage_ratio": fp32_bits / sparse_bits if sparse_bits else float("nan"),
    }
