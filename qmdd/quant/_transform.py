"""The one verb that swaps layers (``quantize``) and the explicit calibration pass."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from qmdd.config import FULL_PRECISION, QuantConfig
from qmdd.quant._base import SUPPORTED_BITS, Quantizer
from qmdd.quant._cqb import BLOCKS, connect_blocks
from qmdd.quant._fuse import fuse_activation_clamps
from qmdd.quant._layers import QUANTIZED_LAYERS, QConv2d, QLinear
from qmdd.quant._registry import get_quantizer

__all__ = ["LayerPrecision", "plan_precision", "quantize", "calibrate", "quantized_layers", "is_quantized"]


@dataclass(frozen=True)
class LayerPrecision:
    """The bit widths one conv/linear layer gets, and why."""

    name: str
    weight_bits: int
    act_bits: int
    reason: str  # "first layer", "last layer", "kept by pattern ...", "body"


def _swappable(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if type(m) in QUANTIZED_LAYERS]


def plan_precision(model: nn.Module, config: QuantConfig) -> list[LayerPrecision]:
    """Decide every conv/linear layer's bit widths under ``config``'s policy.

    Policy: the first conv (in module order) gets ``first_layer_bits`` for weight and input,
    the last linear (the classifier) ``last_layer_bits``, layers matching a
    ``keep_full_precision`` pattern stay at 32 bits, everything else gets
    ``weight_bits``/``act_bits``.
    """
    layers = _swappable(model)
    convs = [name for name, m in layers if isinstance(m, nn.Conv2d)]
    linears = [name for name, m in layers if isinstance(m, nn.Linear)]
    first = convs[0] if convs else None
    last = linears[-1] if linears else None
    plan = []
    for name, _ in layers:
        if name == first:
            bits = (config.first_layer_bits, config.first_layer_bits, "first layer")
        elif name == last:
            bits = (config.last_layer_bits, config.last_layer_bits, "last layer")
        elif pattern := next((p for p in config.keep_full_precision if fnmatch.fnmatchcase(name, p)), None):
            bits = (FULL_PRECISION, FULL_PRECISION, f"kept by pattern {pattern!r}")
        else:
            bits = (config.resolved_weight_bits, config.resolved_act_bits, "body")
        plan.append(LayerPrecision(name, *bits))
    return plan


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _check_bits(config: QuantConfig) -> None:
    for key in ("bits", "weight_bits", "act_bits", "first_layer_bits", "last_layer_bits"):
        value = getattr(config, key)
        if value is not None and value not in SUPPORTED_BITS:
            raise ValueError(f"quant.{key}={value} is not a supported bit width; choose one of {list(SUPPORTED_BITS)}")


def quantize(model: nn.Module, config: QuantConfig) -> nn.Module:
    """Apply a whole ``QuantConfig`` to a float ``model``, in place.

    1. ``config.block``: ``cqb`` turns the residual blocks into Connected Quantized Blocks
       (:func:`connect_blocks`; their shortcut convs stay full precision);
    2. every conv/linear layer whose plan (:func:`plan_precision`) is below 32 bits is
       swapped for its fake-quantized twin, with the quantizers of ``config.quantizer``
       built with that family's options (``n2uq_threshold_lr_scale``, ``slr_shift_init``);
    3. a ReLU6 whose output feeds only a quantized layer (MobileNetV2's expand and
       depthwise blocks) moves into that layer's activation quantizer while training
       (:func:`fuse_activation_clamps`: the same values, two passes fewer each way).

    The swapped layers share the float Parameters, so an optimizer, a checkpoint or a mask
    keyed on parameter names keeps working. Call :func:`calibrate` afterwards, before
    building the optimizer. Returns ``model`` for chaining.
    """
    if is_quantized(model):
        raise ValueError("model is already quantized; quantize() a float model once")
    _check_bits(config)
    family = get_quantizer(config.quantizer)
    options = family.options_from(config)
    if config.block not in BLOCKS:
        raise ValueError(f"unknown block form {config.block!r}; choose one of {', '.join(BLOCKS)}")
    if config.block == "cqb":
        connect_blocks(model)
    for layer in plan_precision(model, config):
        if layer.weight_bits == layer.act_bits == FULL_PRECISION:
            continue
        float_layer = model.get_submodule(layer.name)
        weight_q = family.weight(layer.weight_bits, float_layer.weight, options) if layer.weight_bits < FULL_PRECISION else None
        input_q = family.activation(layer.act_bits, options) if layer.act_bits < FULL_PRECISION else None
        quantized = QUANTIZED_LAYERS[type(float_layer)].from_float(float_layer, weight_q, input_q)
        if weight_q is not None:
            weight_q.to(float_layer.weight.device)
        if input_q is not None:
            input_q.to(float_layer.weight.device)
        _set_submodule(model, layer.name, quantized)
    fuse_activation_clamps(model)
    return model


def quantized_layers(model: nn.Module) -> list[tuple[str, QConv2d | QLinear]]:
    """``(name, layer)`` for every fake-quantized conv/linear layer, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (QConv2d, QLinear))]


def is_quantized(model: nn.Module) -> bool:
    return any(True for _ in quantized_layers(model))


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Initialise every quantizer from data, before the optimizer and DDP are built.

    Runs ``model`` on ``batches`` in training mode with all quantizers observing (passing
    values through unchanged), then turns what they saw into initial steps. BatchNorm
    running statistics are restored afterwards, so calibration changes nothing but the
    quantizers. Returns the number of batches used.
    """
    quantizers = [m for m in model.modules() if isinstance(m, Quantizer)]
    if not quantizers:
        return 0
    was_training = model.training
    saved_buffers = {name: b.clone() for name, b in model.named_buffers()}
    for q in quantizers:
        q.start_calibration()
    used = 0
    try:
        model.train()
        for batch in batches:
            model(batch)
            used += 1
        if used == 0:
            raise ValueError("calibrate() needs at least one batch")
        for q in quantizers:
            q.finish_calibration()
    finally:
        for q in quantizers:
            q.observing = False
        for name, buffer in model.named_buffers():
            if name in saved_buffers and not _is_quantizer_buffer(model, name):
                buffer.copy_(saved_buffers[name])
        model.train(was_training)
    return used


def _is_quantizer_buffer(model: nn.Module, name: str) -> bool:
    owner_name = name.rpartition(".")[0]
    return isinstance(model.get_submodule(owner_name) if owner_name else model, Quantizer)
