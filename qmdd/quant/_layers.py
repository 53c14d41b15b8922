"""Fake-quantized Conv2d and Linear.

They *are* ``nn.Conv2d`` / ``nn.Linear`` (subclasses whose ``forward`` reads
``self.weight``) and share the float layer's Parameters, so state-dict keys, pruning masks
(``torch.nn.utils.prune``), FLOP counters and checkpoints speak the same names for float and
quantized models. The quantizers are child modules: ``weight_quantizer`` acts on the weight,
``input_quantizer`` on the layer input (the activation of the previous layer).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from qmdd.quant._base import FullPrecision, Quantizer

__all__ = ["QConv2d", "QLinear", "QUANTIZED_LAYERS", "QUANTIZER_ATTRIBUTES", "conv_sharing_parameters"]

#: The child modules through which a quantized layer quantizes; their state-dict entries
#: (``<layer>.weight_quantizer.step`` ...) belong to the quantizers, not to the float layer.
QUANTIZER_ATTRIBUTES = ("weight_quantizer", "input_quantizer")


def conv_sharing_parameters(cls: type[nn.Conv2d], conv: nn.Conv2d) -> nn.Conv2d:
    """A ``cls`` conv with ``conv``'s geometry whose weight and bias *are* ``conv``'s.

    Built on the meta device, so no memory is allocated for Parameters that are replaced
    at once; used to change a conv's type (float <-> quantized, plain -> shortcut) in place.
    """
    layer = cls(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device="meta",
    )
    layer.weight, layer.bias = conv.weight, conv.bias  # shared, not copied
    layer.train(conv.training)
    return layer


class _QuantizedLayerMixin:
    weight: nn.Parameter
    weight_quantizer: Quantizer
    input_quantizer: Quantizer

    @property
    def weight_bits(self) -> int:
        return self.weight_quantizer.bits

    @property
    def act_bits(self) -> int:
        return self.input_quantizer.bits

    def quantized_weight(self) -> torch.Tensor:
        """The effective (fake-quantized) weight the forward pass uses."""
        return self.weight_quantizer(self.weight)

    def _attach(self, weight_quantizer: Quantizer | None, input_quantizer: Quantizer | None) -> None:
        self.weight_quantizer = weight_quantizer or FullPrecision()
        self.input_quantizer = input_quantizer or FullPrecision()


class QConv2d(_QuantizedLayerMixin, nn.Conv2d):
    """``nn.Conv2d`` whose weight and input pass through fake quantizers."""

    @classmethod
    def from_float(
        cls,
        conv: nn.Conv2d,
        weight_quantizer: Quantizer | None = None,
        input_quantizer: Quantizer | None = None,
    ) -> "QConv2d":
        """Wrap ``conv``'s own Parameters (not copies) with the given quantizers."""
        layer = conv_sharing_parameters(cls, conv)
        layer._attach(weight_quantizer, input_quantizer)
        return layer

    def to_float(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` sharing this layer's (float, unquantized) Parameters."""
        return conv_sharing_parameters(nn.Conv2d, self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)


class QLinear(_QuantizedLayerMixin, nn.Linear):
    """``nn.Linear`` whose weight and input pass through fake quantizers."""

    @classmethod
    def from_float(
        cls,
        linear: nn.Linear,
        weight_quantizer: Quantizer | None = None,
        input_quantizer: Quantizer | None = None,
    ) -> "QLinear":
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        layer.weight = linear.weight
        layer.bias = linear.bias
        layer.train(linear.training)
        layer._attach(weight_quantizer, input_quantizer)
        return layer

    def to_float(self) -> nn.Linear:
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.weight = self.weight
        linear.bias = self.bias
        linear.train(self.training)
        return linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)


#: The swap table: float layer type -> its fake-quantized twin (exact types only, so an
#: already-quantized layer is never wrapped twice).
QUANTIZED_LAYERS: dict[type[nn.Module], type[nn.Module]] = {nn.Conv2d: QConv2d, nn.Linear: QLinear}
