"""The detector factory: one place that turns a config (or a checkpoint) into a model.

Everything that needs a detector (training, evaluation, deployment, pruning, Grad-CAM, the
cost reports, the benchmarks) imports it from here, at module top level: this module
depends only on the config, the model and quantizer registries and the checkpoint format,
never on the packages that use it.

    detector = build_detector(config)                  # backbone + input filter, quantized as configured
    loaded = load_detector("runs/<run>/best.pt")      # .model (eval mode), .config, .threshold
    probabilities = fake_probability(loaded.model, images)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qmdd.checkpoint import CheckpointError, checkpoint_threshold, load_checkpoint, stored_config
from qmdd.config import ConfigError, RunConfig, suggest
from qmdd.models import ShapeError, apply_layer_shapes, create_model, crop_alignment, list_input_filters, list_models, resolved_input_filter
from qmdd.quant import BLOCKS, SUPPORTED_BITS, has_connectable_blocks, list_quantizers, quantize

__all__ = ["validate_config", "resolve_model_defaults", "build_detector", "LoadedDetector", "load_detector", "fake_probability"]


def _check_name(key: str, value: str, choices: list[str] | tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is unknown{suggest(value, choices)}; available: {', '.join(choices)}")


def validate_config(config: RunConfig) -> RunConfig:
    """Check the names and bit widths that only the registries know; returns ``config``.

    :mod:`qmdd.config` checks values on their own (ranges, types) without importing torch;
    the registries are consulted here, where a config is about to become a model (the
    command-line entry points call it right after building the config).
    """
    _check_name("model.arch", config.model.arch, list_models())
    if config.model.input_filter is not None:
        _check_name("model.input_filter", config.model.input_filter, list_input_filters())
    quant = config.quant
    _check_name("quant.quantizer", quant.quantizer, list_quantizers())
    _check_name("quant.block", quant.block, BLOCKS)
    if quant.block == "cqb" and not has_connectable_blocks(create_model(config.model.arch)):
        raise ConfigError(
            f"quant.block=cqb needs residual blocks, and model.arch={config.model.arch!r} has none "
            "(Connected Quantized Blocks connect ResNet blocks and MobileNet inverted residuals); use quant.block=plain"
        )
    if config.model.pruned_shapes:
        try:  # on the meta device: no memory, no init
            with torch.device("meta"):
                apply_layer_shapes(create_model(config.model.arch, input_filter=config.model.input_filter), config.model.pruned_shapes)
        except ShapeError as error:
            raise ConfigError(f"model.pruned_shapes does not fit model.arch={config.model.arch!r}: {error}") from None
    for key in ("bits", "weight_bits", "act_bits", "first_layer_bits", "last_layer_bits"):
        value = getattr(quant, key)
        if value is not None and value not in SUPPORTED_BITS:
            raise ConfigError(
                f"quant.{key}={value} is not a supported bit width; choose one of {list(SUPPORTED_BITS)} (32 = full precision)"
            )
    return config


def resolve_model_defaults(config: RunConfig) -> RunConfig:
    """``config`` with the choices left to the backbone made explicit.

    ``model.input_filter: null`` becomes the backbone's own filter, and
    ``data.crop_align: null`` the alignment that filter needs. Runs write the resolved
    config into ``config.yaml`` and their checkpoints, so a checkpoint says exactly how it
    was trained even if a default changes later.
    """
    input_filter = resolved_input_filter(config.model.arch, config.model.input_filter)
    align = config.data.crop_align if config.data.crop_align is not None else crop_alignment(config.model.arch, input_filter)
    return replace(config, model=replace(config.model, input_filter=input_filter), data=replace(config.data, crop_align=align))


def build_detector(config: RunConfig, *, pretrained: bool | None = None, init_state: dict[str, Any] | None = None) -> nn.Module:
    """The backbone named in ``config`` with its input filter, quantized as ``config.quant``
    says (block form, bit widths, quantizer family and its options), not yet calibrated.

    Args:
        pretrained: load torchvision's ImageNet weights; None follows ``model.pretrained``.
            Rebuilding a trained detector passes False: its weights come from the file.
        init_state: float weights (e.g. a trained FP32 run's, see ``train.init``) loaded
            strictly into the float model before it is quantized.
    """
    use_pretrained = config.model.pretrained if pretrained is None else pretrained
    model = create_model(config.model.arch, pretrained=use_pretrained, input_filter=config.model.input_filter)
    # A channel-pruned detector: the same backbone with narrower layers (qmdd.models._shapes).
    apply_layer_shapes(model, config.model.pruned_shapes)
    if init_state is not None:
        # Connected blocks keep every parameter name, so the plain float model takes them.
        model.load_state_dict(init_state)
    return quantize(model, config.quant)


@dataclass(frozen=True)
class LoadedDetector:
    """A trained detector rebuilt from its checkpoint or packed file.

    Attributes:
        model: in eval mode, on the requested device.
        config: the run config it was trained with, backbone defaults resolved.
        threshold: the decision threshold on ``sigmoid(logit)`` fitted on validation
            (0.5 for files without one).
    """

    model: nn.Module
    config: RunConfig
    threshold: float


def load_detector(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedDetector:
    """Rebuild the trained detector of a checkpoint, in eval mode, with its config and threshold."""
    payload = load_checkpoint(path, map_location)
    try:
        config = resolve_model_defaults(validate_config(stored_config(payload, path)))
    except (ConfigError, ValueError) as error:
        raise CheckpointError(f"{path}: its stored config is not usable: {error}") from None
    model = build_detector(config, pretrained=False)
    try:
        model.load_state_dict(payload["model"])
    except (KeyError, RuntimeError) as error:
        reason = " ".join(str(error).split())  # torch's message spans lines and tabs
        reason = reason if len(reason) <= 300 else reason[:300] + "..."
        raise CheckpointError(f"{path}: its weights do not fit the {config.model.arch} architecture it names: {reason}") from None
    model.to(map_location)
    model.eval()
    return LoadedDetector(model, config, checkpoint_threshold(payload))


def fake_probability(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``sigmoid(logit)``, the probability of *fake*, one float32 value per image.

    The one way every prediction loop (validation, test, evaluation suites, predict) reads
    a detector's output: the single logit, in FP32 even under autocast.
    """
    logits = model(images)
    return torch.sigmoid(logits.reshape(logits.shape[0], -1)[:, 0].float())
