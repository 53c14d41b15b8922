"""Registry of quantizer families selectable by name (``quant.quantizer``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from qmdd.quant._base import Quantizer
from qmdd.quant._lsq import LSQActivationQuantizer, LSQWeightQuantizer
from qmdd.quant._n2uq import N2UQActivationQuantizer, N2UQWeightQuantizer
from qmdd.quant._slr import SLRActivationQuantizer

__all__ = ["QuantizerFamily", "register_quantizer", "get_quantizer", "list_quantizers", "configure_quantizers"]


@dataclass(frozen=True)
class QuantizerFamily:
    """How one family builds its weight and activation quantizers.

    Attributes:
        name: the config name (``quant.quantizer``).
        weight: ``(bits, weight) -> Quantizer`` for a layer's weight.
        activation: ``(bits) -> Quantizer`` for a layer's input.
        source: the paper the formulas come from.
    """

    name: str
    weight: Callable[[int, torch.Tensor], Quantizer]
    activation: Callable[[int], Quantizer]
    source: str


_FAMILIES: dict[str, QuantizerFamily] = {}


def register_quantizer(family: QuantizerFamily) -> QuantizerFamily:
    if family.name in _FAMILIES:
        raise ValueError(f"quantizer family {family.name!r} is already registered")
    _FAMILIES[family.name] = family
    return family


def get_quantizer(name: str) -> QuantizerFamily:
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown quantizer {name!r}; available: {', '.join(list_quantizers())}") from None


def list_quantizers() -> list[str]:
    return sorted(_FAMILIES)


register_quantizer(
    QuantizerFamily(
        name="lsq",
        weight=LSQWeightQuantizer,
        activation=LSQActivationQuantizer,
        source="Esser et al., Learned Step Size Quantization, ICLR 2020",
    )
)

register_quantizer(
    QuantizerFamily(
        name="n2uq",
        weight=N2UQWeightQuantizer,
        activation=N2UQActivationQuantizer,
        source="Liu et al., Nonuniform-to-Uniform Quantization (N2UQ), CVPR 2022",
    )
)

register_quantizer(
    QuantizerFamily(
        name="slr",
        weight=LSQWeightQuantizer,  # SLR reshapes activations; weights stay on LSQ's grid
        activation=SLRActivationQuantizer,
        source="Tao et al., Unlocking the Potential of Lightweight Quantized Models for "
        "Deepfake Detection (QMDD), IJCAI 2025; log-domain step learned as in LSQ",
    )
)


def configure_quantizers(model: torch.nn.Module, config) -> int:
    """Hand the family options of a ``QuantConfig`` (e.g. ``n2uq_threshold_lr_scale``) to
    every quantizer of ``model`` that takes options; call after ``quantize`` and before
    ``calibrate`` or loading a state dict. Returns the number of quantizers configured.
    """
    configured = 0
    for module in model.modules():
        if isinstance(module, Quantizer) and hasattr(module, "configure"):
            module.configure(config)
            configured += 1
    return configured
