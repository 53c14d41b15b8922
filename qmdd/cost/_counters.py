"""Compute and storage counters for (fake-)quantized detectors.

Conventions (docs/deployment.md, after Bi-Real Net, Liu et al. ECCV 2018, and ReActNet, Liu et
al. ECCV 2020):

* **MACs**: multiply-accumulates of the convolutions and linear layers for one image,
  ``out_h * out_w * out_channels * (in_channels / groups) * kh * kw`` for a convolution and
  ``out_features * in_features`` for a linear layer. BatchNorm, activations, pooling and
  residual additions are not counted (the same convention the papers use, and what
  ``torch.utils.flop_counter.FlopCounterMode`` counts: FLOPs = 2 * MACs).
* **BOPs** of a low-bit layer (weights *and* inputs below 32 bits) = MACs * b_w * b_a.
* **FLOPs** of a full-precision layer = MACs (one FLOP per multiply-accumulate, the
  Bi-Real/ReActNet reading). A layer whose weights or inputs stay at 32 bits counts here.
* **OPs** = BOPs / 64 + FLOPs.
* **Input filter** (``model.input_filter``, e.g. NPR): a parameter-free elementwise map in
  full precision; its arithmetic operations per image count as FLOPs, in a row of its own
  (``kind`` ``filter``, 0 MACs), and in the FP32 baseline's OPs too.
* **Storage**: every tensor of the state dict; quantized conv/linear weights at their bit
  width, pruning masks (``*_mask`` buffers from ``torch.nn.utils.prune``) at 1 bit per
  element, everything else (first/last layers, biases, BatchNorm, quantizer steps) at 32
  bits. This includes a handful of training-only scalars (LSQ gradient scales, BatchNorm
  batch counters), well under 0.01 % of a ResNet.

The FP32 baseline is the same architecture with every layer at 32 bits and no quantizer or
mask tensors: its OPs equal its MACs and its storage is 32 bits per weight.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
from torch import nn

from qmdd.config import FULL_PRECISION
from qmdd.models import InputFilter
from qmdd.quant import QUANTIZER_ATTRIBUTES, Quantizer, quantized_layers

__all__ = [
    "LayerCost",
    "CostReport",
    "BOPS_PER_OP",
    "layer_costs",
    "count_costs",
    "macs",
    "bops",
    "flops",
    "ops",
    "parameter_count",
    "storage_bits",
    "fp32_storage_bits",
    "cost_summary",
    "summary_of",
    "report_to_dict",
    "format_cost_table",
]

#: OPs = BOPs / 64 + FLOPs: 64 one-bit operations count as one FLOP (Bi-Real Net, ReActNet).
BOPS_PER_OP = 64
#: Bits of a mask element: a kept/pruned flag.
MASK_BITS = 1
_FLOAT_BITS = 32


@dataclass(frozen=True)
class LayerCost:
    """Cost of one conv/linear layer for one image.

    Attributes:
        name: module path.
        kind: ``conv``, ``linear`` or ``filter`` (the input filter: FLOPs only).
        shape: e.g. ``3x3 64->64 s1 g1`` (kernel, channels, stride, groups).
        weight_bits, act_bits: bit widths of the weights and of the layer input (32 = FP).
        params: weights plus bias elements.
        macs: multiply-accumulates for one image (0 if the layer never ran).
        bops: MACs * b_w * b_a for low-bit layers, else 0.
        flops: MACs for full-precision layers, else 0.
        storage_bits: weights at their bit width, bias and quantizer tensors at 32 bits,
            pruning masks at 1 bit.
    """

    name: str
    kind: str
    shape: str
    weight_bits: int
    act_bits: int
    params: int
    macs: int
    bops: int
    flops: int
    storage_bits: int

    @property
    def ops(self) -> float:
        """OPs = BOPs / 64 + FLOPs."""
        return self.bops / BOPS_PER_OP + self.flops


@dataclass(frozen=True)
class CostReport:
    """Per-layer costs and totals of one model at one input size.

    ``other_storage_bits`` and ``other_params`` hold what is outside the conv/linear layers
    (BatchNorm and any other tensors), so the totals are the whole model.
    """

    input_size: tuple[int, int, int]
    layers: tuple[LayerCost, ...]
    other_params: int
    other_storage_bits: int
    fp32_storage_bits: int

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers) + self.other_params

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def bops(self) -> int:
        return sum(layer.bops for layer in self.layers)

    @property
    def flops(self) -> int:
        return sum(layer.flops for layer in self.layers)

    @property
    def ops(self) -> float:
        return self.bops / BOPS_PER_OP + self.flops

    @property
    def storage_bits(self) -> int:
        return sum(layer.storage_bits for layer in self.layers) + self.other_storage_bits

    @property
    def fp32_ops(self) -> float:
        """OPs of the same architecture in FP32: every MAC is one FLOP, plus the filter's."""
        return float(self.macs + sum(layer.flops for layer in self.layers if layer.kind == "filter"))

    @property
    def ops_ratio(self) -> float:
        """How many times fewer OPs than FP32 (>= 1 for a quantized model)."""
        return self.fp32_ops / self.ops if self.ops else float("nan")

    @property
    def storage_ratio(self) -> float:
        """How many times less storage than FP32."""
        return self.fp32_storage_bits / self.storage_bits if self.storage_bits else float("nan")


def _is_mask_key(key: str) -> bool:
    return key.endswith("_mask")


def _tensor_bits(tensor: torch.Tensor, bits: int) -> int:
    return tensor.numel() * bits


def _layer_weight_key(layer: nn.Module) -> str:
    # torch.nn.utils.prune moves the weight Parameter to ``weight_orig``.
    return "weight_orig" if hasattr(layer, "weight_orig") else "weight"


def _describe(layer: nn.Module) -> tuple[str, str]:
    if isinstance(layer, nn.Conv2d):
        kh, kw = layer.kernel_size
        stride = layer.stride[0] if layer.stride[0] == layer.stride[1] else f"{layer.stride[0]}x{layer.stride[1]}"
        return "conv", f"{kh}x{kw} {layer.in_channels}->{layer.out_channels} s{stride} g{layer.groups}"
    return "linear", f"{layer.in_features}->{layer.out_features}"


def _layer_bits(model: nn.Module) -> dict[str, tuple[int, int]]:
    return {name: (layer.weight_bits, layer.act_bits) for name, layer in quantized_layers(model)}


def _count_macs(model: nn.Module, input_size: tuple[int, int, int]) -> dict[str, int]:
    """MACs per conv/linear module for one image, from output shapes seen by forward hooks.

    The forward pass runs in eval mode with every quantizer bypassed (shapes do not depend
    on quantization), so uncalibrated models can be counted too; all flags are restored.
    """
    counts: dict[str, int] = {}

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            per_image = output.numel() // output.shape[0]
            if isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                # Each output element sums over in_channels / groups input channels.
                per_output = (module.in_channels // module.groups) * kh * kw
            else:
                per_output = module.in_features
            counts[name] = counts.get(name, 0) + per_image * per_output

        return record

    def filter_hook(name: str):
        def record(module: InputFilter, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            per_image = inputs[0].numel() // inputs[0].shape[0]
            counts[name] = counts.get(name, 0) + round(per_image * module.flops_per_element)

        return record

    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            counts[name] = 0
            handles.append(module.register_forward_hook(hook(name)))
        elif isinstance(module, InputFilter):
            counts[name] = 0
            handles.append(module.register_forward_hook(filter_hook(name)))
    quantizers = [m for m in model.modules() if isinstance(m, Quantizer)]
    saved_enabled = [q.enabled for q in quantizers]
    was_training = model.training
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    try:
        for q in quantizers:
            q.enabled = False
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_size, device=device))
    finally:
        for handle in handles:
            handle.remove()
        for q, enabled in zip(quantizers, saved_enabled):
            q.enabled = enabled
        model.train(was_training)
    return counts


def _check_input_size(input_size: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(input_size, int):
        size = (3, input_size, input_size)
    else:
        size = tuple(int(v) for v in input_size)
        if len(size) == 2:
            size = (3, *size)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"input_size must be an int, (H, W) or (C, H, W) of positive sizes, got {input_size!r}")
    return size  # type: ignore[return-value]


def layer_costs(model: nn.Module, input_size: int | Sequence[int]) -> list[LayerCost]:
    """Per-layer costs of every ``nn.Conv2d``/``nn.Linear`` (quantized or not) in module order.

    ``input_size``: the side of a square image, (H, W) or (C, H, W); counts are per image.
    """
    return list(count_costs(model, input_size).layers)


def count_costs(model: nn.Module, input_size: int | Sequence[int]) -> CostReport:
    """Count params, MACs, BOPs, FLOPs, OPs and storage of ``model`` (see module docstring)."""
    size = _check_input_size(input_size)
    mac_counts = _count_macs(model, size)
    bits = _layer_bits(model)
    tensor_bits = _storage_by_tensor(model)
    claimed: set[str] = set()
    layers = []
    for name, module in model.named_modules():
        if isinstance(module, InputFilter):
            layers.append(_filter_cost(name, module, mac_counts.get(name, 0)))
            continue
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        weight_bits, act_bits = bits.get(name, (FULL_PRECISION, FULL_PRECISION))
        prefix = f"{name}." if name else ""
        bias = module.bias
        params = getattr(module, _layer_weight_key(module)).numel() + (bias.numel() if bias is not None else 0)
        # The layer's own tensors (weight or weight_orig, bias, mask) and its quantizers'.
        own = [
            key
            for key in tensor_bits
            if key.startswith(prefix)
            and key not in claimed
            and ("." not in key[len(prefix):] or key[len(prefix):].split(".")[0] in QUANTIZER_ATTRIBUTES)
        ]
        claimed.update(own)
        storage = sum(tensor_bits[key] for key in own)
        layer_macs = mac_counts.get(name, 0)
        low_bit = weight_bits < FULL_PRECISION and act_bits < FULL_PRECISION
        kind, shape = _describe(module)
        layers.append(
            LayerCost(
                name=name,
                kind=kind,
                shape=shape,
                weight_bits=weight_bits,
                act_bits=act_bits,
                params=params,
                macs=layer_macs,
                bops=layer_macs * weight_bits * act_bits if low_bit else 0,
                flops=0 if low_bit else layer_macs,
                storage_bits=storage,
            )
        )
    other_storage = sum(b for key, b in tensor_bits.items() if key not in claimed)
    layer_params = sum(layer.params for layer in layers)
    return CostReport(
        input_size=size,
        layers=tuple(layers),
        other_params=parameter_count(model) - layer_params,
        other_storage_bits=other_storage,
        fp32_storage_bits=fp32_storage_bits(model),
    )


def _filter_cost(name: str, module: InputFilter, filter_flops: int) -> LayerCost:
    """The input filter as a row: no parameters, no MACs, its operations as FP32 FLOPs."""
    return LayerCost(
        name=name, kind="filter", shape=module.name, weight_bits=FULL_PRECISION, act_bits=FULL_PRECISION,
        params=0, macs=0, bops=0, flops=filter_flops, storage_bits=0,
    )


def _storage_by_tensor(model: nn.Module) -> dict[str, int]:
    """Counted bits of every state-dict tensor (the storage convention of this module)."""
    low_bit_weights = {
        (f"{name}." if name else "") + _layer_weight_key(layer): layer.weight_bits
        for name, layer in quantized_layers(model)
        if layer.weight_bits < FULL_PRECISION
    }
    result = {}
    for key, tensor in model.state_dict().items():
        if key in low_bit_weights:
            bits = low_bit_weights[key]
        elif _is_mask_key(key):
            bits = MASK_BITS
        else:
            bits = _FLOAT_BITS
        result[key] = _tensor_bits(tensor, bits)
    return result


def _quantizer_prefixes(model: nn.Module) -> list[str]:
    return [f"{name}." for name, m in model.named_modules() if isinstance(m, Quantizer) and name]


def parameter_count(model: nn.Module) -> int:
    """Learnable parameters of the architecture (quantizer steps excluded: they are not
    weights, and excluding them keeps the count equal to the FP32 model's)."""
    prefixes = _quantizer_prefixes(model)
    return sum(p.numel() for key, p in model.named_parameters() if not any(key.startswith(q) for q in prefixes))


def fp32_storage_bits(model: nn.Module) -> int:
    """Storage of the same architecture in FP32: every state tensor except quantizer and
    mask tensors, at 32 bits (``weight_orig`` stands for the dense weight)."""
    prefixes = _quantizer_prefixes(model)
    total = 0
    for key, tensor in model.state_dict().items():
        if _is_mask_key(key) or any(key.startswith(q) for q in prefixes):
            continue
        total += _tensor_bits(tensor, _FLOAT_BITS)
    return total


def macs(model: nn.Module, input_size: int | Sequence[int]) -> int:
    """Multiply-accumulates of all conv/linear layers for one image."""
    return count_costs(model, input_size).macs


def bops(model: nn.Module, input_size: int | Sequence[int]) -> int:
    """Binary operations: sum over low-bit layers of MACs * b_w * b_a (Bi-Real Net, ReActNet)."""
    return count_costs(model, input_size).bops


def flops(model: nn.Module, input_size: int | Sequence[int]) -> int:
    """FLOPs of the full-precision layers, one per MAC (Bi-Real/ReActNet convention)."""
    return count_costs(model, input_size).flops


def ops(model: nn.Module, input_size: int | Sequence[int]) -> float:
    """OPs = BOPs / 64 + FLOPs (Bi-Real Net, ReActNet)."""
    return count_costs(model, input_size).ops


def storage_bits(model: nn.Module) -> int:
    """Counted storage in bits (weights at their bit width, masks 1 bit, the rest 32)."""
    return sum(_storage_by_tensor(model).values())


def cost_summary(model: nn.Module, input_size: int | Sequence[int]) -> dict[str, Any]:
    """Totals and ratios as flat, JSON-safe numbers (for ``metrics.json`` and TensorBoard).

    Keys: ``input_size`` ([C, H, W]), ``params``, ``macs``, ``bops``, ``flops``, ``ops``,
    ``storage_bits``, ``storage_bytes``, ``fp32_ops``, ``fp32_storage_bits``, ``ops_ratio``
    and ``storage_ratio`` (FP32 / this model), and ``convention`` (a sentence).
    """
    return summary_of(count_costs(model, input_size))


def summary_of(report: CostReport) -> dict[str, Any]:
    """:func:`cost_summary` of an already counted report."""
    return {
        "input_size": list(report.input_size),
        "params": report.params,
        "macs": report.macs,
        "bops": report.bops,
        "flops": report.flops,
        "ops": float(report.ops),
        "storage_bits": report.storage_bits,
        "storage_bytes": (report.storage_bits + 7) // 8,
        "fp32_ops": float(report.fp32_ops),
        "fp32_storage_bits": report.fp32_storage_bits,
        "ops_ratio": float(report.ops_ratio),
        "storage_ratio": float(report.storage_ratio),
        "convention": (
            "MACs of conv/linear layers per image; BOPs = MACs*b_w*b_a (low-bit layers); "
            "FLOPs = MACs (FP layers); OPs = BOPs/64 + FLOPs (Bi-Real Net/ReActNet)"
        ),
    }


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def _bits_text(bits: int) -> str:
    return "fp" if bits == FULL_PRECISION else str(bits)


def format_cost_table(report: CostReport) -> str:
    """The per-layer table, totals and FP32 ratios as text."""
    header = f"{'layer':<28}{'shape':<26}{'W/A':>6}{'params':>10}{'MACs':>10}{'BOPs':>10}{'FLOPs':>10}{'OPs':>10}{'storage':>11}"
    lines = [header, "-" * len(header)]
    for layer in report.layers:
        lines.append(
            f"{layer.name:<28.28}{layer.shape:<26.26}"
            f"{_bits_text(layer.weight_bits) + '/' + _bits_text(layer.act_bits):>6}"
            f"{_si(layer.params):>10}{_si(layer.macs):>10}{_si(layer.bops):>10}{_si(layer.flops):>10}"
            f"{_si(layer.ops):>10}{_si(layer.storage_bits / 8) + 'B':>11}"
        )
    lines.append(
        f"{'(BatchNorm and other tensors)':<60}{_si(report.other_params):>10}{'':>40}"
        f"{_si(report.other_storage_bits / 8) + 'B':>11}"
    )
    lines.append("-" * len(header))
    lines.append(
        f"{'total':<60}{_si(report.params):>10}{_si(report.macs):>10}{_si(report.bops):>10}"
        f"{_si(report.flops):>10}{_si(report.ops):>10}{_si(report.storage_bits / 8) + 'B':>11}"
    )
    c, h, w = report.input_size
    lines += [
        "",
        f"input {c}x{h}x{w}, per image. OPs = BOPs/64 + FLOPs (Bi-Real Net/ReActNet); "
        "BOPs = MACs*b_w*b_a for low-bit layers, FLOPs = MACs for FP layers.",
        f"FP32 same architecture: {_si(report.fp32_ops)} OPs, {_si(report.fp32_storage_bits / 8)}B",
        f"ratios vs FP32: OPs {report.ops_ratio:.2f}x fewer, storage {report.storage_ratio:.2f}x smaller",
    ]
    return "\n".join(lines)


def report_to_dict(report: CostReport) -> dict[str, Any]:
    """The summary plus a ``layers`` list of per-layer dicts (JSON-safe)."""
    layers = []
    for layer in report.layers:
        values = asdict(layer)
        values["ops"] = float(layer.ops)
        layers.append(values)
    return {**summary_of(report), "other_params": report.other_params, "other_storage_bits": report.other_storage_bits, "layers": layers}
