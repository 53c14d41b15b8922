"""Typed, validated run configuration.

A run is described by one :class:`RunConfig`, made of frozen sections (``data``,
``model``, ``quant``, ``train``, ``prune`` for ``python -m qmdd.lth`` and ``slim`` for
``python -m qmdd.slim``). It is loaded
from YAML, overridden from the command line with dotted keys (``train.lr=1e-3``), validated
field by field, and written back to YAML next to every run and into every checkpoint, so a
run can always be reproduced.

Every field carries its own help text in ``metadata["help"]``: ``python -m qmdd.train
--list-keys`` prints them, so the documentation cannot drift away from the fields.

Unknown keys are errors with a "did you mean" hint; bad values raise :class:`ConfigError`
naming the key.

This module imports neither torch nor the registries: names that only a registry knows
(backbones, input filters, quantizer families, block forms) and the supported bit widths
are checked by :func:`qmdd.detector.validate_config`, which every entry point calls right
after building a config.

Each field's ``metadata`` may also say what a continued run may change:
``"resume": "free"`` for keys that alter neither the model nor the data it sees (more
epochs, another device), ``"resume": "extend"`` for keys that add stages to a multi-run
experiment (more pruning levels). :func:`config_diff` reads it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

__all__ = [
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "QuantConfig",
    "TrainConfig",
    "PruneConfig",
    "SlimConfig",
    "RunConfig",
    "FULL_PRECISION",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "apply_overrides",
    "save_config",
    "describe_keys",
    "config_diff",
    "carry_over",
    "suggest",
]

#: The bit width that means full precision (no fake quantization). The low bit widths a
#: quantizer supports are ``qmdd.quant.SUPPORTED_BITS``.
FULL_PRECISION = 32


class ConfigError(ValueError):
    """A configuration key is unknown or its value is invalid."""


def _help(text: str, resume: str | None = None, **kwargs: Any) -> Any:
    metadata = {"help": text}
    if resume is not None:
        metadata["resume"] = resume
    return field(metadata=metadata, **kwargs)


def _check_bits(key: str, value: int) -> None:
    # The supported set is qmdd.quant's (checked by qmdd.detector.validate_config); here
    # only what no quantizer could mean.
    if not 1 <= value <= FULL_PRECISION:
        raise ConfigError(f"{key}={value} is not a bit width; use 1..{FULL_PRECISION} (32 = full precision)")


def _check_probability(key: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{key}={value} must be a probability in [0, 1]")


def _check_range(key: str, low: float, high: float, minimum: float, maximum: float) -> None:
    if not (minimum <= low <= high <= maximum):
        raise ConfigError(
            f"{key}=[{low}, {high}] must satisfy {minimum} <= low <= high <= {maximum}"
        )


@dataclass(frozen=True)
class DataConfig:
    root: str | None = _help(
        "ForenSynths-layout root (train/, val/, test/). None builds and uses the embedded "
        "benchmark in the cache folder.",
        default=None,
    )
    classes: tuple[str, ...] | None = _help(
        "Training classes under train/ and val/ (e.g. car,cat,chair,horse for the 4-class "
        "setting). None uses every class folder.",
        default=None,
    )
    seen_family: str | None = _help(
        "Test family the detector was trained on; every other test family counts as unseen. "
        "None reads it from benchmark.json, or uses 'progan' for ForenSynths.",
        default=None,
    )
    embedded_scale: float = _help(
        "Size multiplier of the embedded benchmark (1.0 = the documented size).", default=1.0
    )
    load_size: int | None = _help(
        "Resize the shorter side to this many pixels before cropping (CNNDetection: 256). "
        "None keeps native pixels, which keeps generator traces intact.",
        default=None,
    )
    crop_size: int = _help(
        "Square crop in pixels: random in training, centred in val/test (CNNDetection: 224).",
        default=64,
    )
    crop_align: int | None = _help(
        "Crop offsets (random in training, centred in val/test) are multiples of this many "
        "pixels, so every crop keeps the phase of a generator's upsampling grid (2 for x2 "
        "upsampling, 8 also keeps 4x and 8x grids); 1 = any offset. null: what the model's "
        "input filter needs (2 for npr and dwt_hh, which are anchored to 2x2 blocks; 1 for "
        "highpass and none, which commute with shifts and gain shift robustness from random "
        "offsets). Keep 1 on data whose reals are JPEG and fakes PNG: an aligned crop also "
        "keeps the 8x8 JPEG grid, a format shortcut (docs/method.md).",
        default=None,
    )
    blur_prob: float = _help(
        "Probability of Gaussian blur augmentation in training (CNNDetection: 0.1 or 0.5; "
        "NPR: 0). 0 by default: on the embedded benchmark it costs training time and "
        "gains no AP (docs/results.md); real data with unknown processing wants 0.1.",
        default=0.0,
    )
    blur_sigma: tuple[float, float] = _help(
        "Range of the blur sigma in pixels, drawn uniformly (CNNDetection: 0-3).",
        default=(0.0, 3.0),
    )
    jpeg_prob: float = _help(
        "Probability of JPEG re-compression in training (CNNDetection: 0.1 or 0.5; NPR: 0).",
        default=0.0,
    )
    jpeg_quality: tuple[int, int] = _help(
        "Range of the JPEG quality, drawn uniformly (CNNDetection: 30-100).", default=(30, 100)
    )
    val_blur_sigma: float = _help(
        "Fixed blur sigma applied with blur_prob during validation (CNNDetection: 1.5).",
        default=1.5,
    )
    val_jpeg_quality: int = _help(
        "Fixed JPEG quality applied with jpeg_prob during validation (CNNDetection: 65).",
        default=65,
    )
    num_workers: int = _help("DataLoader worker processes (0 loads in the main process).", resume="free", default=0)

    def __post_init__(self) -> None:
        _check_probability("data.blur_prob", self.blur_prob)
        _check_probability("data.jpeg_prob", self.jpeg_prob)
        _check_range("data.blur_sigma", *self.blur_sigma, 0.0, 50.0)
        _check_range("data.jpeg_quality", *self.jpeg_quality, 1, 100)
        if not 1 <= self.val_jpeg_quality <= 100:
            raise ConfigError(f"data.val_jpeg_quality={self.val_jpeg_quality} must be in 1..100")
        if self.crop_align is not None and self.crop_align < 1:
            raise ConfigError(f"data.crop_align={self.crop_align} must be >= 1 (1 = any offset)")
        if self.crop_size < 8:
            raise ConfigError(f"data.crop_size={self.crop_size} must be at least 8 pixels")
        if self.load_size is not None and self.load_size < self.crop_size:
            raise ConfigError(
                f"data.load_size={self.load_size} must be >= data.crop_size={self.crop_size}"
            )
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers={self.num_workers} must be >= 0")
        if self.embedded_scale <= 0:
            raise ConfigError(f"data.embedded_scale={self.embedded_scale} must be > 0")
        if self.classes is not None and len(self.classes) == 0:
            raise ConfigError("data.classes must name at least one class, or be null for all")


@dataclass(frozen=True)
class ModelConfig:
    arch: str = _help(
        "Backbone name from the model registry (python -m qmdd.train --list-models). The "
        "default, trunc_resnet18, is ResNet-18 cut after its second stage (NPR's design) "
        "on a high-pass residual input: 0.68M parameters, trained from scratch.",
        default="trunc_resnet18",
    )
    pretrained: bool = _help(
        "Start from torchvision's ImageNet weights (needs them in the torch hub cache).",
        default=False,
    )
    input_filter: str | None = _help(
        "Fixed filter in front of the backbone, part of the model: none (the image), "
        "highpass (prediction-error residual x - blur3x3(x)), npr (neighbouring-pixel "
        "residual, Tan et al. CVPR 2024) or dwt_hh (the wavelet HH band, SAFE, KDD 2025). "
        "null: the backbone's own (highpass for trunc_resnet18, npr for npr_resnet50, none "
        "otherwise). See docs/method.md.",
        default=None,
    )
    pruned_shapes: tuple[str, ...] = _help(
        "Layers narrowed by structured pruning (python -m qmdd.slim writes them): "
        "'layer=out,in' for a conv or linear, 'norm=channels' for a batch norm. The backbone "
        "is built, then these layers take these widths. Empty: the unpruned backbone.",
        default=(),
    )

    def __post_init__(self) -> None:
        for entry in self.pruned_shapes:
            if not re.fullmatch(r"[A-Za-z0-9_.]+=[1-9]\d*(,[1-9]\d*)?", entry):
                raise ConfigError(f"model.pruned_shapes entry {entry!r} must look like 'layer=out,in' or 'norm=channels'")


@dataclass(frozen=True)
class QuantConfig:
    bits: int = _help(
        "Weight and activation bits of the quantized layers (WbAb); 32 = full precision.",
        default=32,
    )
    weight_bits: int | None = _help(
        "Weight bits, when they differ from `bits` (e.g. W2A4). None follows `bits`.",
        default=None,
    )
    act_bits: int | None = _help(
        "Activation bits, when they differ from `bits`. None follows `bits`.", default=None
    )
    quantizer: str = _help(
        "Quantizer family: lsq (Esser et al. 2020), n2uq (Liu et al. 2022: learned "
        "non-uniform thresholds, uniform outputs) or slr (QMDD's shifted-log activations, "
        "LSQ weights). See docs/method.md.",
        default="lsq",
    )
    block: str = _help(
        "Residual block form: plain (the backbone's own blocks) or cqb (Connected Quantized "
        "Blocks: a full-precision shortcut around every quantized convolution of a ResNet "
        "block / MobileNet inverted residual; docs/method.md). Loads plain weights.",
        default="plain",
    )
    n2uq_threshold_lr_scale: float = _help(
        "n2uq only: the thresholds learn this many times as fast as other parameters "
        "(N2UQ's recipe: lr/10 = 0.1). Realised by the parametrisation, so it holds for "
        "Adam without a separate parameter group.",
        default=0.1,
    )
    slr_shift_init: float = _help(
        "slr only: initial shift beta of log(1 + x/beta), as a multiple of the calibration "
        "mean |x|. Smaller = levels denser near zero; large = close to LSQ's uniform grid.",
        default=0.5,
    )
    first_layer_bits: int = _help(
        "Bits of the first conv (weights and input). It sees raw pixels and dominates BOPs "
        "when low-bit, so it usually stays at 32 (or 8).",
        default=32,
    )
    last_layer_bits: int = _help(
        "Bits of the classifier (weights and input); usually 32 (or 8).", default=32
    )
    keep_full_precision: tuple[str, ...] = _help(
        "Extra module-name patterns (fnmatch) left in full precision, e.g. ['layer1.*'].",
        default=(),
    )
    calibration_batches: int = _help(
        "Training batches used to initialise the activation steps before the optimizer is "
        "built (LSQ initialises from the first batch).",
        default=1,
    )

    def __post_init__(self) -> None:
        _check_bits("quant.bits", self.bits)
        if self.weight_bits is not None:
            _check_bits("quant.weight_bits", self.weight_bits)
        if self.act_bits is not None:
            _check_bits("quant.act_bits", self.act_bits)
        _check_bits("quant.first_layer_bits", self.first_layer_bits)
        _check_bits("quant.last_layer_bits", self.last_layer_bits)
        if self.calibration_batches < 1:
            raise ConfigError("quant.calibration_batches must be >= 1")
        if not self.n2uq_threshold_lr_scale > 0:
            raise ConfigError(f"quant.n2uq_threshold_lr_scale={self.n2uq_threshold_lr_scale} must be > 0")
        if not self.slr_shift_init > 0:
            raise ConfigError(f"quant.slr_shift_init={self.slr_shift_init} must be > 0")

    @property
    def resolved_weight_bits(self) -> int:
        return self.bits if self.weight_bits is None else self.weight_bits

    @property
    def resolved_act_bits(self) -> int:
        return self.bits if self.act_bits is None else self.act_bits

    @property
    def enabled(self) -> bool:
        """True when any layer is fake-quantized."""
        return min(
            self.resolved_weight_bits,
            self.resolved_act_bits,
            self.first_layer_bits,
            self.last_layer_bits,
        ) < FULL_PRECISION

    def at_full_precision(self) -> "QuantConfig":
        """This config with every layer at 32 bits (same block form and family): the float
        twin of the model, e.g. what ``train.init`` weights are checked against."""
        return dataclasses.replace(
            self, bits=FULL_PRECISION, weight_bits=None, act_bits=None, first_layer_bits=FULL_PRECISION, last_layer_bits=FULL_PRECISION
        )

    @property
    def tag(self) -> str:
        """Short name such as ``fp32``, ``w2a2`` or ``w2a2-first8``, used in run folder names.

        The body's widths, then the first and last layers' when they are not 32 bits, so a
        model with an 8-bit first layer is never called ``fp32``.
        """
        body = "fp32" if self.resolved_weight_bits == self.resolved_act_bits == FULL_PRECISION else f"w{self.resolved_weight_bits}a{self.resolved_act_bits}"
        for name, bits in (("first", self.first_layer_bits), ("last", self.last_layer_bits)):
            if bits != FULL_PRECISION:
                body += f"-{name}{bits}"
        return body


#: Values of ``train.amp``: no autocast, or autocast to bfloat16.
_AMP_MODES = ("none", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _help(
        "Maximum number of epochs (early stopping may end sooner). The default keeps the "
        "quick start within a few CPU minutes (trunc_resnet18 at 64 px: about 30 s an epoch "
        "on 2 cores); real data wants many more (NPR: 50).",
        resume="free", default=6,
    )
    batch_size: int = _help("Images per optimizer step (CNNDetection: 64; NPR: 32).", default=32)
    lr: float = _help(
        "Adam learning rate (NPR from scratch: 2e-4; CNNDetection: 1e-4 from ImageNet weights).",
        default=2e-4,
    )
    betas: tuple[float, float] = _help("Adam betas (CNNDetection: 0.9, 0.999).", default=(0.9, 0.999))
    weight_decay: float = _help("Adam weight decay (CNNDetection: 0).", default=0.0)
    plateau_patience: int = _help(
        "Epochs without validation progress (see min_val_gain) before the lr is divided by "
        "lr_decay_factor: a plateau schedule (CNNDetection's 'early stopping': 5). Once the "
        "lr would fall below min_lr, training stops.",
        default=5,
    )
    min_val_gain: float = _help(
        "Smallest validation-accuracy gain that counts as progress, for the best epoch "
        "(best.pt) and the plateau schedule (CNNDetection: 0.001).",
        default=0.001,
    )
    lr_decay_factor: float = _help("Divide the lr by this at the end of patience.", default=10.0)
    min_lr: float = _help("Stop training once the lr falls below this (CNNDetection: 1e-6).", default=1e-6)
    seed: int = _help("Seed of the model init, the data order and the augmentation.", default=0)
    device: str = _help("'auto' (CUDA if present, else CPU), 'cpu' or 'cuda[:N]'.", resume="free", default="auto")
    log_every: int = _help("Log the training loss to TensorBoard every this many steps.", default=10)
    out: str | None = _help(
        "Run folder. None makes runs/<time>-<arch>-<bits>.", resume="free", default=None
    )
    init: str | None = _help(
        "Checkpoint (e.g. a trained FP32 run's best.pt) whose float weights initialise the "
        "model before it is quantized and calibrated: the usual recipe, train FP32 then "
        "fine-tune low-bit. Keys must match (quantizer entries are ignored).",
        default=None,
    )
    teacher: str | None = _help(
        "Checkpoint of a frozen teacher (usually the FP32 run's best.pt) to distil from: "
        "loss = distill_alpha * soft + (1 - distill_alpha) * BCE. None trains on BCE alone.",
        default=None,
    )
    distill_alpha: float = _help(
        "Weight of the soft (teacher) loss; 1 - alpha weighs the hard BCE on the labels.",
        default=0.5,
    )
    distill_temperature: float = _help(
        "Temperature T of the soft loss T^2 * BCE(sigmoid(z_s/T), sigmoid(z_t/T)).",
        default=4.0,
    )
    amp: str = _help(
        "Mixed precision: none (FP32) or bf16 (autocast to bfloat16 on CPU and CUDA; "
        "weights, optimizer state and quantizer steps stay FP32). Fast on GPUs and CPUs "
        "with native bf16 (AVX512-BF16/AMX); elsewhere emulated and slower than FP32.",
        default="none",
    )
    sync_bn: bool = _help(
        "Under torchrun (DDP), normalise BatchNorm with the statistics of the global batch "
        "(SyncBatchNorm). CUDA only; without it each rank uses its own batch's statistics.",
        default=False,
    )

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "plateau_patience", "log_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key}={getattr(self, key)} must be >= 1")
        if self.lr <= 0:
            raise ConfigError(f"train.lr={self.lr} must be > 0")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"train.betas={list(self.betas)} must each lie in [0, 1)")
        if self.lr_decay_factor <= 1.0:
            raise ConfigError(f"train.lr_decay_factor={self.lr_decay_factor} must be > 1")
        _check_probability("train.distill_alpha", self.distill_alpha)
        if not self.distill_temperature > 0:
            raise ConfigError(f"train.distill_temperature={self.distill_temperature} must be > 0")
        if self.seed < 0:
            raise ConfigError(f"train.seed={self.seed} must be >= 0")
        if not self.weight_decay >= 0:
            raise ConfigError(f"train.weight_decay={self.weight_decay} must be >= 0")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"train.device={self.device!r} must be 'auto', 'cpu' or 'cuda[:N]'")
        if self.amp not in _AMP_MODES:
            raise ConfigError(
                f"train.amp={self.amp!r} is unknown{suggest(self.amp, _AMP_MODES)}; "
                f"choose one of {', '.join(_AMP_MODES)}"
            )


#: Values of ``prune.scope``: one magnitude threshold for all prunable weights, or one per layer.
_PRUNE_SCOPES = ("global", "layer")
#: Named values of ``prune.rewind``; an integer K (optimizer steps) is the third form.
_REWIND_NAMES = ("none", "init")


@dataclass(frozen=True)
class PruneConfig:
    levels: int = _help(
        "Pruning levels after the dense level 0 (python -m qmdd.lth). Level k keeps "
        "(1 - fraction)^k of the prunable weights: 8 levels at 0.2 end at 83% sparsity. "
        "In a level's own run folder, the number of that level.",
        resume="extend", default=8,
    )
    fraction: float = _help(
        "Share of the *remaining* prunable weights removed per level, by smallest magnitude "
        "(a ceil-rounded count, as open_lth). The lottery-ticket papers use 0.2.",
        default=0.2,
    )
    scope: str = _help(
        "global: one magnitude threshold over all prunable weights (the paper's best); "
        "layer: each layer loses the same share of its own remaining weights.",
        default="global",
    )
    rewind: str = _help(
        "Weights a pruned level restarts from: none (keep the previous level's trained "
        "weights, as arXiv 2507.15636 does), init (the dense run's weights before its first "
        "step: the original lottery ticket), or an integer K (its weights after K optimizer "
        "steps: late rewinding).",
        default="none",
    )
    prunable: tuple[str, ...] = _help(
        "Module-name patterns (fnmatch) of the conv/linear layers whose weights may be "
        "pruned. Biases, BatchNorm and quantizer steps are never pruned.",
        default=("*",),
    )
    ignore: tuple[str, ...] = _help(
        "Module-name patterns (fnmatch) kept dense although they match `prunable`, e.g. "
        "['conv1', 'fc'] for ResNet's first conv and classifier.",
        default=(),
    )
    one_shot: bool = _help(
        "Also run the one-shot baseline: prune the dense level's trained weights once to the "
        "sparsity of an IMP level, then retrain with the same budget as that level.",
        resume="extend", default=False,
    )
    one_shot_levels: tuple[int, ...] | None = _help(
        "IMP levels whose sparsity the one-shot baseline matches (e.g. [7] for 79%). None: "
        "levels 2..levels (one-shot to level 1 is IMP's level 1: same mask, same start).",
        resume="extend", default=None,
    )

    def __post_init__(self) -> None:
        if self.levels < 0:
            raise ConfigError(f"prune.levels={self.levels} must be >= 0 (0: the dense level only)")
        if not 0.0 < self.fraction < 1.0:
            raise ConfigError(f"prune.fraction={self.fraction} must lie in (0, 1), e.g. 0.2")
        if self.scope not in _PRUNE_SCOPES:
            raise ConfigError(
                f"prune.scope={self.scope!r} is unknown{suggest(self.scope, _PRUNE_SCOPES)}; "
                f"choose one of {', '.join(_PRUNE_SCOPES)}"
            )
        if self.rewind not in _REWIND_NAMES and not (self.rewind.isdigit()):
            raise ConfigError(
                f"prune.rewind={self.rewind!r} must be none, init or a number of optimizer steps "
                f"(e.g. 500){suggest(self.rewind, _REWIND_NAMES)}"
            )
        if not self.prunable:
            raise ConfigError("prune.prunable must name at least one pattern ('*' = every conv/linear layer)")
        if self.one_shot_levels is not None:
            bad = [level for level in self.one_shot_levels if not 1 <= level <= self.levels]
            if bad or not self.one_shot_levels:
                raise ConfigError(
                    f"prune.one_shot_levels={list(self.one_shot_levels)} must be levels in 1..{self.levels} "
                    "(prune.levels), or null for all"
                )

    @property
    def rewind_step(self) -> int | None:
        """Optimizer step of the dense run to rewind to: 0 for init, K, or None (no rewind)."""
        if self.rewind == "none":
            return None
        return 0 if self.rewind == "init" else int(self.rewind)


#: Values of ``slim.importance``: first-order Taylor on training batches, or weight magnitude.
_SLIM_IMPORTANCES = ("taylor", "magnitude")


@dataclass(frozen=True)
class SlimConfig:
    ratio: float = _help(
        "Share of the detector's parameters removed by structured (channel) pruning "
        "(python -m qmdd.slim), e.g. 0.3. Channels go in dependency groups, so the result is "
        "a smaller dense network.",
        default=0.3,
    )
    steps: int = _help(
        "Pruning steps K: step k removes k/K of the ratio, with train.epochs of fine-tuning "
        "after each (1 = one-shot, then fine-tune).",
        default=1,
    )
    importance: str = _help(
        "Channel importance: taylor (|w * dL/dw| summed over the group, gradients of "
        "taylor_batches training batches) or magnitude (L2 norm of the group's weights).",
        default="taylor",
    )
    scope: str = _help(
        "global: one ranking of all groups' channels (importance normalised per group); "
        "layer: every group loses the same share of its channels.",
        default="global",
    )
    taylor_batches: int = _help("Training batches whose gradients give the Taylor importance.", default=4)
    distill: bool = _help(
        "Fine-tune each step against the unpruned detector as a frozen teacher "
        "(train.distill_alpha, train.distill_temperature).",
        default=False,
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ConfigError(f"slim.ratio={self.ratio} must lie in [0, 1), e.g. 0.3")
        if self.steps < 1 or self.taylor_batches < 1:
            raise ConfigError(f"slim.steps={self.steps} and slim.taylor_batches={self.taylor_batches} must be >= 1")
        for key, value, choices in (("importance", self.importance, _SLIM_IMPORTANCES), ("scope", self.scope, _PRUNE_SCOPES)):
            if value not in choices:
                raise ConfigError(f"slim.{key}={value!r} is unknown{suggest(value, choices)}; choose one of {', '.join(choices)}")


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    slim: SlimConfig = field(default_factory=SlimConfig)


# --------------------------------------------------------------------------- conversion


def suggest(name: str, choices: typing.Iterable[str]) -> str:
    """' (did you mean X?)' for the closest of ``choices``, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _to_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
        return value.lower() in ("true", "yes", "1")
    raise ConfigError(f"{key} must be true or false, got {value!r}")


def _to_int(key: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise ConfigError(f"{key} must be an integer, got {value!r}")


def _to_float(key: str, value: Any) -> float:
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            pass
    if number is None:
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if not math.isfinite(number):
        # No key means anything by NaN or infinity, and both pass every range check.
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    return number


def _to_str(key: str, value: Any) -> str:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"{key} must be a string, got {value!r}")


_SCALARS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def _convert(key: str, value: Any, annotation: Any) -> Any:
    """Coerce a YAML/CLI value to the field's annotated type, or raise ConfigError."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping, got {type(value).__name__}")
        return _build(annotation, value, prefix=f"{key}.")
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key} may not be null")
        errors = []
        for candidate in (a for a in args if a is not type(None)):
            try:
                return _convert(key, value, candidate)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0])
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key} must have {len(args)} entries, got {list(value)!r}")
        return tuple(_convert(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    if annotation in _SCALARS:
        return _SCALARS[annotation](key, value)
    raise TypeError(f"unsupported annotation {annotation!r} for {key}")  # a bug, not user error


def _build(cls: type, values: Mapping[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            raise ConfigError(
                f"unknown config key '{prefix}{key}'{suggest(str(key), names)}; "
                f"valid keys in {prefix.rstrip('.') or 'the top level'}: {', '.join(names)}"
            )
    kwargs = {k: _convert(f"{prefix}{k}", v, hints[k]) for k, v in values.items()}
    return cls(**kwargs)


#: Keys renamed since they were first written into configs and checkpoints: read under
#: either name, written under the new one.
_RENAMED_KEYS = {"train": {"early_stop_patience": "plateau_patience", "early_stop_min_delta": "min_val_gain"}}


def _with_current_names(values: Mapping[str, Any]) -> dict[str, Any]:
    updated = dict(values)
    for section, renames in _RENAMED_KEYS.items():
        if isinstance(updated.get(section), Mapping) and any(old in updated[section] for old in renames):
            updated[section] = {renames.get(key, key): value for key, value in updated[section].items()}
    return updated


def config_from_dict(values: Mapping[str, Any] | None) -> RunConfig:
    """Build a validated :class:`RunConfig` from nested plain data (e.g. parsed YAML)."""
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"a config must be a mapping of sections, got {type(values).__name__}")
    return _build(RunConfig, _with_current_names(values))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """Nested plain data (dicts, lists, scalars): YAML- and ``weights_only``-safe."""
    return _plain(config)


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> RunConfig:
    """Load a YAML config (or the defaults when ``path`` is None) and apply overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (a binary file?)") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {error}") from None
        if loaded is not None and not isinstance(loaded, dict):
            # `[]`, `0` or `false` would otherwise silently mean "the defaults".
            raise ConfigError(f"config file {str(path)!r} must be a mapping of sections (train:, data:, ...), got {type(loaded).__name__} {loaded!r}")
        values = loaded or {}
    config = config_from_dict(values)
    return apply_overrides(config, overrides)


def apply_overrides(config: RunConfig, overrides: typing.Sequence[str]) -> RunConfig:
    """Apply ``section.key=value`` overrides; values are parsed as YAML scalars/lists."""
    values = config_to_dict(config)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        dotted, raw = item.split("=", 1)
        parts = dotted.strip().split(".")
        if len(parts) != 2:
            raise ConfigError(f"override key {dotted!r} must be section.key, e.g. train.lr")
        section, key = parts
        if section not in values:
            raise ConfigError(
                f"unknown config section {section!r}{suggest(section, values)}; "
                f"valid sections: {', '.join(values)}"
            )
        if key not in values[section]:
            raise ConfigError(
                f"unknown config key '{section}.{key}'{suggest(key, values[section])}; "
                f"valid keys in {section}: {', '.join(values[section])}"
            )
        try:
            values[section][key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            values[section][key] = raw
    return config_from_dict(values)


def _resume_kind(section: str, key: str) -> str | None:
    section_type = {f.name: f.default_factory for f in dataclasses.fields(RunConfig)}[section]  # type: ignore[misc]
    return {f.name: f.metadata.get("resume") for f in dataclasses.fields(section_type)}[key]  # type: ignore[arg-type]


def config_diff(
    old: RunConfig,
    new: RunConfig,
    *,
    allow: typing.Collection[str] = (),
    sections: typing.Collection[str] | None = None,
) -> list[str]:
    """``"section.key: old -> new"`` for every key that differs between two configs.

    ``allow``: resume kinds (field metadata ``"resume"``: ``"free"``, ``"extend"``) whose
    keys may differ and are left out; ``sections``: compare only these sections. A resumed
    run allows ``{"free"}``, a continued multi-run experiment ``{"free", "extend"}``.
    """
    a, b = config_to_dict(old), config_to_dict(new)
    return [
        f"{section}.{key}: {a[section][key]!r} -> {b[section][key]!r}"
        for section in a
        if sections is None or section in sections
        for key in a[section]
        if a[section][key] != b[section][key] and _resume_kind(section, key) not in allow
    ]


def carry_over(saved: RunConfig, new: RunConfig, kinds: typing.Collection[str] = ("free",)) -> RunConfig:
    """``saved`` with the keys of the given resume kinds taken from ``new`` (e.g. more epochs)."""
    values, incoming = config_to_dict(saved), config_to_dict(new)
    for section in values:
        for key in values[section]:
            if _resume_kind(section, key) in kinds:
                values[section][key] = incoming[section][key]
    return config_from_dict(values)


def save_config(config: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    from qmdd.utils import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(config_to_dict(config), sort_keys=False))


def describe_keys() -> str:
    """One line per config key with its default and help text (for ``--list-keys``)."""
    lines = []
    for section in dataclasses.fields(RunConfig):
        cls = section.default_factory()  # type: ignore[misc]
        lines.append(f"{section.name}:")
        for f in dataclasses.fields(cls):
            default = _plain(getattr(cls, f.name))
            lines.append(f"  {f.name} = {default!r}")
            lines.append(f"      {f.metadata.get('help', '')}")
    return "\n".join(lines)
