"""A ReLU6 run inside the activation quantizer that reads its output.

In MobileNetV2's inverted residuals (and any ``nn.Sequential`` chain like them) a ReLU6
feeds exactly one quantized conv: expand -> ReLU6 -> depthwise, depthwise -> ReLU6 ->
project. In training both are passes over the widest tensors of the network: the ReLU6
reads and writes them forward (in place, as a clamp and a copy back) and reads them twice
and writes once backward, before the quantizer reads them again. :func:`fuse_activation_clamps`
moves the clamp into the quantizer's kernel, where it costs a compare per element of a
block already in cache (docs/performance.md, "ReLU6 inside the quantizer").

The values are those of the two modules in a row: the forward is ``quantize(hardtanh(x,
0, 6))`` and the input gradient goes through hardtanh's backward mask, in every family
(tests/quant/test_fused_clamp.py). The clamp moves only while autograd records
(:func:`clamp_deferred`): inference, calibration and tracing (the int8 and ONNX exports)
see the original module order, a :class:`DeferredClamp` that clamps as the ReLU6 did.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from qmdd.quant._base import ActivationQuantizer, clamp_deferred
from qmdd.quant._layers import QConv2d, QLinear

__all__ = ["DeferredClamp", "clamp_deferred", "fuse_activation_clamps", "unfuse_activation_clamps"]


class DeferredClamp(nn.Hardtanh):
    """``hardtanh(x, 0, max_val)`` (a ReLU6) whose output feeds one activation quantizer
    only: a pass-through while :func:`clamp_deferred` (the quantizer clamps), the clamp
    itself otherwise."""

    def __init__(self, max_val: float) -> None:
        super().__init__(0.0, max_val)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if clamp_deferred():
            return x
        return super().forward(x)


def _chain(sequential: nn.Sequential) -> list[tuple[nn.Module, str, nn.Module]]:
    """The modules ``sequential`` runs one after the other, as (parent, name, module),
    descending into nested ``nn.Sequential`` children (whose outputs only feed the next
    module), not into other modules (whose inputs may have other readers)."""
    chain = []
    for name, child in sequential.named_children():
        if isinstance(child, nn.Sequential) and type(child).forward is nn.Sequential.forward:
            chain.extend(_chain(child))
        else:
            chain.append((sequential, name, child))
    return chain


def _is_zero_floor_clamp(module: nn.Module) -> bool:
    return type(module) in (nn.ReLU6, nn.Hardtanh) and module.min_val == 0.0 and module.max_val > 0.0


def _takes_ceiling(quantizer: ActivationQuantizer) -> bool:
    """Whether the family's ``quantize`` takes the clamp (LSQ, N2UQ and SLR do; a family
    registered elsewhere may not, and then keeps its ReLU6)."""
    return "ceiling" in inspect.signature(type(quantizer).quantize).parameters


def fuse_activation_clamps(model: nn.Module) -> int:
    """Replace each ReLU6 (``hardtanh(x, 0, c)``) that feeds only a quantized layer's
    activation quantizer by a :class:`DeferredClamp` and give that quantizer the ceiling
    c. Only pairs in one ``nn.Sequential`` chain qualify. Returns how many were fused."""
    fused = 0
    for sequential in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        chain = _chain(sequential)
        for (parent, name, module), (_, _, reader) in zip(chain, chain[1:]):
            if not _is_zero_floor_clamp(module) or not isinstance(reader, (QConv2d, QLinear)):
                continue
            quantizer = reader.input_quantizer
            if not isinstance(quantizer, ActivationQuantizer) or quantizer.input_ceiling is not None or not _takes_ceiling(quantizer):
                continue
            setattr(parent, name, DeferredClamp(float(module.max_val)))
            quantizer.input_ceiling = float(module.max_val)
            fused += 1
    return fused


def unfuse_activation_clamps(model: nn.Module) -> int:
    """Undo :func:`fuse_activation_clamps`: each :class:`DeferredClamp` becomes the
    ``nn.Hardtanh(0, c)`` it stands for and no quantizer clamps. The exports call it so that
    their graphs hold plain modules. Returns how many were restored."""
    restored = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, DeferredClamp):
                setattr(parent, name, nn.Hardtanh(child.min_val, child.max_val))
                restored += 1
    for module in model.modules():
        if isinstance(module, ActivationQuantizer):
            module.input_ceiling = None
    return restored
