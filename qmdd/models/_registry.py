"""Backbone registry: ``@register_model`` / ``create_model`` / ``list_models``."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Callable, overload

from torch import nn

from qmdd.models._filters import FilteredBackbone, filter_grid, list_input_filters, make_input_filter

__all__ = ["register_model", "create_model", "list_models", "default_input_filter", "resolved_input_filter", "crop_alignment"]

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class _Entry:
    builder: Builder
    input_filter: str  # the filter the backbone is published with ("none" for plain images)


_MODELS: dict[str, _Entry] = {}


@overload
def register_model(fn: Builder) -> Builder: ...
@overload
def register_model(*, input_filter: str = "none") -> Callable[[Builder], Builder]: ...


def register_model(fn: Builder | None = None, *, input_filter: str = "none"):
    """Register a builder ``fn(pretrained: bool = False) -> nn.Module`` under its name.

    Use bare (``@register_model``) or with the backbone's default input filter
    (``@register_model(input_filter="npr")``), the one ``model.input_filter: null`` picks.
    """

    def register(builder: Builder) -> Builder:
        if builder.__name__ in _MODELS:
            raise ValueError(f"model {builder.__name__!r} is already registered")
        if input_filter not in list_input_filters():
            raise ValueError(f"unknown input filter {input_filter!r}; available: {', '.join(list_input_filters())}")
        _MODELS[builder.__name__] = _Entry(builder, input_filter)
        return builder

    return register(fn) if fn is not None else register


def list_models(pattern: str = "*") -> list[str]:
    """Registered backbone names matching a glob pattern, e.g. ``list_models("resnet*")``."""
    return sorted(name for name in _MODELS if fnmatch.fnmatchcase(name, pattern))


def _entry(name: str) -> _Entry:
    try:
        return _MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}") from None


def default_input_filter(name: str) -> str:
    """The input filter backbone ``name`` is published with (``none`` for plain images)."""
    return _entry(name).input_filter


def resolved_input_filter(name: str, input_filter: str | None) -> str:
    """``input_filter``, or the backbone's own when it is None."""
    return default_input_filter(name) if input_filter is None else input_filter


def crop_alignment(name: str, input_filter: str | None) -> int:
    """The crop alignment (px) the detector's input filter needs: 1 for shift-invariant filters."""
    return filter_grid(resolved_input_filter(name, input_filter))


def create_model(name: str, pretrained: bool = False, input_filter: str | None = None) -> nn.Module:
    """Build a single-logit detector by registry name.

    ``input_filter``: a filter name (``none``, ``highpass``, ``npr``, ``dwt_hh``), or None for the
    backbone's default. With a filter other than ``none`` the backbone is wrapped in a
    :class:`~qmdd.models.FilteredBackbone` (state-dict keys under ``backbone.``).
    """
    model = _entry(name).builder(pretrained=pretrained)
    filter_name = resolved_input_filter(name, input_filter)
    if filter_name == "none":
        make_input_filter(filter_name)  # still validates the name
        return model
    return FilteredBackbone(make_input_filter(filter_name), model)
