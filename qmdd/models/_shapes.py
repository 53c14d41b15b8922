"""Channel-pruned layer shapes: how a structurally pruned detector is written down and rebuilt.

Structured pruning (:mod:`qmdd.prune`, ``python -m qmdd.slim``) removes whole channels, so
the pruned detector is an ordinary network with narrower layers. Its config records the
layers whose widths changed, one string each (``model.pruned_shapes``)::

    "layer1.0.conv1=41,64"     Conv2d: out, in channels (a depthwise conv stays depthwise)
    "layer1.0.bn1=41"          BatchNorm2d: channels
    "fc=1,97"                  Linear: out, in features

Rebuilding is: build the named backbone, then give those layers the recorded widths
(:func:`apply_layer_shapes`) before the state dict is loaded. Nothing of the pruning
library is needed to read a pruned checkpoint, and every reader that rebuilds a detector
from its config (load_detector, the packed file on the meta device, the int8 path, the
counters) sees the smaller network. The tensors are left uninitialised: their values come
from the checkpoint.
"""

from __future__ import annotations

import re
from typing import Iterable

import torch
from torch import nn

__all__ = ["ShapeError", "layer_shapes", "apply_layer_shapes"]

_ENTRY = re.compile(r"^([A-Za-z0-9_.]+)=(\d+)(?:,(\d+))?$")


class ShapeError(ValueError):
    """A ``model.pruned_shapes`` entry does not fit the backbone it is applied to."""


def _is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def _describe(module: nn.Module) -> tuple[int, ...] | None:
    if isinstance(module, nn.Conv2d):
        return (module.out_channels, module.in_channels)
    if isinstance(module, nn.Linear):
        return (module.out_features, module.in_features)
    if isinstance(module, nn.BatchNorm2d):
        return (module.num_features,)
    return None


def layer_shapes(model: nn.Module, reference: nn.Module) -> tuple[str, ...]:
    """The ``model.pruned_shapes`` entries of ``model``: its layers whose widths differ from
    the same-named layers of ``reference`` (the unpruned build of its backbone)."""
    original = dict(reference.named_modules())
    entries = []
    for name, module in model.named_modules():
        shape = _describe(module)
        if shape is not None and name in original and shape != _describe(original[name]):
            entries.append(f"{name}=" + ",".join(str(v) for v in shape))
    return tuple(entries)


def _resize_conv(conv: nn.Conv2d, out_channels: int, in_channels: int) -> None:
    if _is_depthwise(conv):
        if out_channels != in_channels:
            raise ShapeError(f"depthwise conv needs as many outputs as inputs, got {out_channels},{in_channels}")
        conv.groups = in_channels
    elif in_channels % conv.groups:
        raise ShapeError(f"{in_channels} input channels do not split into {conv.groups} groups")
    conv.out_channels, conv.in_channels = out_channels, in_channels
    weight = conv.weight
    conv.weight = nn.Parameter(torch.empty((out_channels, in_channels // conv.groups, *weight.shape[2:]), dtype=weight.dtype, device=weight.device))
    if conv.bias is not None:
        conv.bias = nn.Parameter(torch.empty(out_channels, dtype=weight.dtype, device=weight.device))


def _resize_linear(linear: nn.Linear, out_features: int, in_features: int) -> None:
    weight = linear.weight
    linear.out_features, linear.in_features = out_features, in_features
    linear.weight = nn.Parameter(torch.empty((out_features, in_features), dtype=weight.dtype, device=weight.device))
    if linear.bias is not None:
        linear.bias = nn.Parameter(torch.empty(out_features, dtype=weight.dtype, device=weight.device))


def _resize_norm(norm: nn.BatchNorm2d, channels: int) -> None:
    norm.num_features = channels
    device = norm.running_mean.device if norm.running_mean is not None else None
    for name in ("weight", "bias"):
        if getattr(norm, name) is not None:
            setattr(norm, name, nn.Parameter(torch.empty(channels, device=device)))
    for name in ("running_mean", "running_var"):
        if getattr(norm, name) is not None:
            setattr(norm, name, torch.empty(channels, device=device))


def _parse(entry: str) -> tuple[str, tuple[int, ...]]:
    match = _ENTRY.match(entry) if isinstance(entry, str) else None
    if match is None:
        raise ShapeError(f"pruned shape {entry!r} must look like 'layer=out,in' or 'norm=channels'")
    name, first, second = match.groups()
    return name, (int(first),) if second is None else (int(first), int(second))


def apply_layer_shapes(model: nn.Module, shapes: Iterable[str]) -> nn.Module:
    """Give the layers named in ``shapes`` those widths, in place; returns ``model``.

    Raises :class:`ShapeError` naming the entry when a layer does not exist, has another
    type, or the widths are impossible (zero, or a depthwise conv with in != out).
    """
    modules = dict(model.named_modules())
    for entry in shapes:
        name, widths = _parse(entry)
        module = modules.get(name)
        if module is None or _describe(module) is None:
            raise ShapeError(f"pruned shape {entry!r}: the backbone has no conv, linear or batch-norm layer {name!r}")
        if len(widths) != len(_describe(module)) or min(widths) < 1:
            raise ShapeError(f"pruned shape {entry!r} does not fit {type(module).__name__} {name!r}")
        try:
            if isinstance(module, nn.Conv2d):
                _resize_conv(module, *widths)
            elif isinstance(module, nn.Linear):
                _resize_linear(module, *widths)
            else:
                _resize_norm(module, widths[0])
        except ShapeError as error:
            raise ShapeError(f"pruned shape {entry!r}: {error}") from None
    return model
