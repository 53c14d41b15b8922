"""Registry of quantizer families selectable by name (``quant.quantizer``).

A family is how one method builds its weight and activation quantizers, with its own
options: a dataclass whose fields are read from the ``QuantConfig`` keys
``<family>_<field>`` (``n2uq_threshold_lr_scale``, ``slr_shift_init``), so
``quantize(model, config)`` alone applies them and no second call is needed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch

from qmdd.config import QuantConfig
from qmdd.quant._base import Quantizer
from qmdd.quant._lsq import LSQActivationQuantizer, LSQWeightQuantizer
from qmdd.quant._n2uq import N2UQActivationQuantizer, N2UQWeightQuantizer
from qmdd.quant._slr import SLRActivationQuantizer

__all__ = ["QuantizerFamily", "N2UQOptions", "SLROptions", "register_quantizer", "get_quantizer", "list_quantizers"]


@dataclass(frozen=True)
class N2UQOptions:
    """N2UQ's options (``quant.n2uq_*``)."""

    threshold_lr_scale: float = 0.1


@dataclass(frozen=True)
class SLROptions:
    """SLR's options (``quant.slr_*``)."""

    shift_init: float = 0.5


@dataclass(frozen=True)
class QuantizerFamily:
    """How one family builds its weight and activation quantizers.

    Attributes:
        name: the config name (``quant.quantizer``).
        weight_factory: ``(bits, weight, options) -> Quantizer`` for a layer's weight.
        activation_factory: ``(bits, options) -> Quantizer`` for a layer's input.
        source: the paper the formulas come from.
        options: the family's options dataclass (None: it takes none); its fields are read
            from the ``QuantConfig`` keys ``<name>_<field>``.
    """

    name: str
    weight_factory: Callable[[int, torch.Tensor, Any], Quantizer]
    activation_factory: Callable[[int, Any], Quantizer]
    source: str
    options: type | None = None

    def weight(self, bits: int, weight: torch.Tensor, options: Any = None) -> Quantizer:
        """A weight quantizer; ``options`` None means the family's defaults."""
        return self.weight_factory(bits, weight, self._or_defaults(options))

    def activation(self, bits: int, options: Any = None) -> Quantizer:
        """An input (activation) quantizer; ``options`` None means the family's defaults."""
        return self.activation_factory(bits, self._or_defaults(options))

    def _or_defaults(self, options: Any) -> Any:
        return self.options() if options is None and self.options is not None else options

    def options_from(self, config: QuantConfig) -> Any:
        """This family's options as ``config`` sets them (None for a family without options)."""
        if self.options is None:
            return None
        values = {f.name: getattr(config, f"{self.name}_{f.name}") for f in dataclasses.fields(self.options)}
        return self.options(**values)


_FAMILIES: dict[str, QuantizerFamily] = {}


def register_quantizer(family: QuantizerFamily) -> QuantizerFamily:
    """Add a family; its options' keys must exist in ``QuantConfig``."""
    if family.name in _FAMILIES:
        raise ValueError(f"quantizer family {family.name!r} is already registered")
    if family.options is not None:
        keys = {f.name for f in dataclasses.fields(QuantConfig)}
        missing = [f"{family.name}_{f.name}" for f in dataclasses.fields(family.options) if f"{family.name}_{f.name}" not in keys]
        if missing:
            raise ValueError(f"quantizer family {family.name!r} reads options {missing} that QuantConfig does not have")
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
        weight_factory=lambda bits, weight, options: LSQWeightQuantizer(bits, weight),
        activation_factory=lambda bits, options: LSQActivationQuantizer(bits),
        source="Esser et al., Learned Step Size Quantization, ICLR 2020",
    )
)

register_quantizer(
    QuantizerFamily(
        name="n2uq",
        weight_factory=lambda bits, weight, options: N2UQWeightQuantizer(bits, weight),
        activation_factory=lambda bits, options: N2UQActivationQuantizer(bits, threshold_lr_scale=options.threshold_lr_scale),
        source="Liu et al., Nonuniform-to-Uniform Quantization (N2UQ), CVPR 2022",
        options=N2UQOptions,
    )
)

register_quantizer(
    QuantizerFamily(
        name="slr",
        # SLR reshapes activations; weights stay on LSQ's grid.
        weight_factory=lambda bits, weight, options: LSQWeightQuantizer(bits, weight),
        activation_factory=lambda bits, options: SLRActivationQuantizer(bits, shift_init=options.shift_init),
        source="Tao et al., Unlocking the Potential of Lightweight Quantized Models for "
        "Deepfake Detection (QMDD), IJCAI 2025; log-domain step learned as in LSQ",
        options=SLROptions,
    )
)
