"""Registry of quantizer families selectable by name (``quant.quantizer``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from qmdd.quant._base import Quantizer
from qmdd.quant._lsq import LSQActivationQuantizer, LSQWeightQuantizer

__all__ = ["QuantizerFamily", "register_quantizer", "get_quantizer", "list_quantizers"]


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
