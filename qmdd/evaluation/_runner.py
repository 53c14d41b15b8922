"""Run one or more checkpoints over a suite: load each image once, score it with every model."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from qmdd.config import DataConfig, RunConfig
from qmdd.data import DetectorTransform, LoadFailure, TolerantImageSet, collate_skipping_failures, gaussian_blur, jpeg_compress
from qmdd.evaluation._resolve import OK, ResolvedSet, ResolvedSuite, resolve_suite
from qmdd.evaluation._suites import EMBEDDED_ROOT, Protocol, Suite
from qmdd.detector import fake_probability, load_detector
from qmdd.metrics import BinaryMetrics, best_threshold_accuracy, binary_metrics, mean_metrics
from qmdd.training import resolve_device

__all__ = [
    "EvalError",
    "EvalOptions",
    "EvalTransform",
    "SetResult",
    "CheckpointResult",
    "SuiteReport",
    "best_threshold_accuracy",
    "default_data_root",
    "evaluate",
    "checkpoint_labels",
]

#: Status of a set whose every image failed to load.
UNREADABLE = "unreadable"


class EvalError(RuntimeError):
    """An evaluation cannot run as asked (no data root, no checkpoint...)."""


@dataclass(frozen=True)
class EvalOptions:
    """How to run a suite (the suite itself says which images and which protocol).

    Attributes:
        batch_size: images per forward pass.
        workers: DataLoader worker processes (0 decodes in the main process).
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        blur_sigma: Gaussian blur sigma in pixels applied to every test image (0 = none);
            robustness evaluation, applied before ``jpeg_quality``.
        jpeg_quality: re-compress every test image as JPEG at this quality (None = none).
        oracle: also report the best-threshold accuracy, fitted on the test set itself.
        crop_shift: move the centre crop by this many pixels right and down, off the
            upsampling grid's phase the detector was trained on (a sensitivity check).
        progress: tqdm progress bars (None: only on a terminal).
    """

    batch_size: int = 64
    workers: int = 0
    device: str = "auto"
    blur_sigma: float = 0.0
    jpeg_quality: int | None = None
    oracle: bool = False
    crop_shift: int = 0
    progress: bool | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise EvalError(f"batch size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise EvalError(f"workers must be >= 0, got {self.workers}")
        if self.blur_sigma < 0:
            raise EvalError(f"blur sigma must be >= 0, got {self.blur_sigma}")
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 100:
            raise EvalError(f"JPEG quality must be in 1..100, got {self.jpeg_quality}")
        if self.crop_shift < 0:
            raise EvalError(f"crop shift must be >= 0 pixels, got {self.crop_shift}")


class EvalTransform:
    """Test-time image -> tensor: blur, then JPEG, then resize, then centre crop, normalise.

    Degradations come first: they model what happened to the image before the detector
    saw it. The crop/normalise step is :class:`qmdd.data.DetectorTransform` in ``test``
    mode, so the embedded suite scores exactly what training's own test pass scores.
    """

    def __init__(self, *, crop: int | None, resize: int | None = None, load_size: int | None = None, blur_sigma: float = 0.0, jpeg_quality: int | None = None, crop_align: int = 1, crop_shift: int = 0) -> None:
        size = crop if crop is not None else resize
        if size is None:
            raise EvalError("a test transform needs a crop or a resize")
        self.key = (crop, resize, load_size, blur_sigma, jpeg_quality, crop_align, crop_shift)
        self.resize, self.blur_sigma, self.jpeg_quality = resize, blur_sigma, jpeg_quality
        self._inner = DetectorTransform(DataConfig(load_size=load_size, crop_size=size, crop_align=crop_align), "test", crop_shift=crop_shift)

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        if self.blur_sigma > 0:
            image = gaussian_blur(image, self.blur_sigma)
        if self.jpeg_quality is not None:
            image = jpeg_compress(image, self.jpeg_quality)
        if self.resize is not None:
            image = image.resize((self.resize, self.resize), Image.BILINEAR)
        return self._inner(image, rng)


def transform_for(protocol: Protocol, config: RunConfig, options: EvalOptions) -> EvalTransform:
    """The checkpoint's test transform under ``protocol``.

    The centre crop keeps the checkpoint's ``data.crop_align`` in every protocol: a
    detector trained on grid-aligned crops is scored on a grid-aligned crop (at most
    align - 1 pixels from the exact centre), unless ``options.crop_shift`` moves it.
    """
    degrade = dict(blur_sigma=options.blur_sigma, jpeg_quality=options.jpeg_quality, crop_align=config.data.crop_align, crop_shift=options.crop_shift)
    if protocol.from_checkpoint:
        return EvalTransform(crop=config.data.crop_size, load_size=config.data.load_size, **degrade)
    return EvalTransform(crop=protocol.crop, resize=protocol.resize, **degrade)


@dataclass
class SetResult:
    """One set scored by one checkpoint. Metrics are None unless ``status == "ok"``."""

    name: str
    status: str
    reason: str = ""
    metrics: BinaryMetrics | None = None
    oracle_acc: float | None = None
    oracle_threshold: float | None = None
    found_real: int = 0
    found_fake: int = 0
    skipped: list[LoadFailure] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))


@dataclass
class CheckpointResult:
    label: str
    path: str
    arch: str
    quant: str
    transform: tuple
    sets: list[SetResult]
    threshold: float = 0.5  # fitted on the checkpoint's validation set; cal_acc uses it

    @property
    def evaluated(self) -> list[SetResult]:
        return [s for s in self.sets if s.status == OK]

    @property
    def mean(self) -> BinaryMetrics | None:
        done = self.evaluated
        return mean_metrics([s.metrics for s in done]) if done else None

    @property
    def mean_oracle_acc(self) -> float | None:
        values = [s.oracle_acc for s in self.evaluated if s.oracle_acc is not None]
        return float(np.mean(values)) if values else None


@dataclass
class SuiteReport:
    suite: Suite
    resolved: ResolvedSuite
    options: EvalOptions
    checkpoints: list[CheckpointResult]
    images_loaded: int  # decoded and scored, per pass over the images; skipped ones excluded
    seconds: float

    @property
    def name(self) -> str:
        """Report name: the suite, plus the test-time degradations (``forensynths_blur1_jpeg75``)."""
        name = self.suite.name
        if self.options.blur_sigma > 0:
            name += f"_blur{self.options.blur_sigma:g}"
        if self.options.jpeg_quality is not None:
            name += f"_jpeg{self.options.jpeg_quality}"
        if self.options.crop_shift:
            name += f"_shift{self.options.crop_shift}"
        return name

    @property
    def images_per_second(self) -> float:
        return self.images_loaded / self.seconds if self.seconds > 0 else math.nan


def default_data_root(suite: Suite, progress: bool | None = None, trained_on: Sequence[DataConfig] = ()) -> Path:
    """The data root of a suite run without ``--data-root``.

    For the embedded suite, the embedded build the checkpoints were trained with
    (``data.embedded_scale``), so the table scores what their own test pass scored.
    """
    if suite.default_root == EMBEDDED_ROOT:
        from qmdd.data import resolve_data_root

        scales = sorted({data.embedded_scale for data in trained_on}) or [DataConfig().embedded_scale]
        if len(scales) > 1:
            raise EvalError(f"the checkpoints were trained on different embedded builds (data.embedded_scale {scales}); evaluate them separately, or pass --data-root")
        try:
            return resolve_data_root(DataConfig(embedded_scale=scales[0]), progress)
        except ImportError as error:
            raise EvalError(f"the embedded benchmark is not available ({error}); pass --data-root") from None
    raise EvalError(f"suite {suite.name!r} needs --data-root (see docs/data.md for how to download it)")


def checkpoint_labels(paths: Sequence[str | Path]) -> list[str]:
    """Column names: ``<run folder>/<file stem>``, made unique with ``#2``, ``#3``..."""
    labels, seen = [], {}
    for path in paths:
        path = Path(path)
        label = f"{path.parent.name}/{path.stem}" if path.parent.name else path.stem
        seen[label] = seen.get(label, 0) + 1
        labels.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return labels


def _resolve_device(name: str) -> torch.device:
    try:
        return resolve_device(name)
    except Exception as error:
        raise EvalError(str(error)) from None


def _score_group(models: list[torch.nn.Module], sets: list[ResolvedSet], transform: EvalTransform, options: EvalOptions, device: torch.device, seed: int, desc: str):
    """Scores of every model on every image of ``sets``, loading each image once.

    Returns per set: (indices into the set's samples, labels, [scores per model],
    failures), all in the set's sample order.
    """
    samples, offsets = [], [0]
    for rset in sets:
        samples.extend(rset.samples)
        offsets.append(len(samples))
    dataset = TolerantImageSet(samples, transform, seed=seed, name=desc)
    loader = DataLoader(
        dataset,
        batch_size=options.batch_size,
        shuffle=False,
        num_workers=options.workers,
        collate_fn=collate_skipping_failures,
        pin_memory=device.type == "cuda",
        # workers decode ahead while the model runs: the point of multi-worker loading
        prefetch_factor=4 if options.workers > 0 else None,
    )
    indices, labels, failures = [], [], []
    scores: list[list[np.ndarray]] = [[] for _ in models]
    with torch.inference_mode():
        for images, batch_labels, batch_indices, batch_failures in tqdm(loader, desc=desc, leave=False, disable=None if options.progress is None else not options.progress):
            failures.extend(batch_failures)
            if images is None:
                continue
            images = images.to(device, non_blocking=True)
            for slot, model in enumerate(models):
                scores[slot].append(fake_probability(model, images).cpu().numpy())
            indices.append(batch_indices.numpy())
            labels.append(batch_labels.numpy())
    all_indices = np.concatenate(indices) if indices else np.zeros(0, dtype=np.int64)
    all_labels = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
    all_scores = [np.concatenate(s) if s else np.zeros(0) for s in scores]
    set_of = np.searchsorted(offsets, all_indices, side="right") - 1
    failure_set = np.searchsorted(offsets, [f.index for f in failures], side="right") - 1
    per_set = []
    for position, _ in enumerate(sets):
        mask = set_of == position
        per_set.append((
            all_indices[mask] - offsets[position],
            all_labels[mask],
            [s[mask] for s in all_scores],
            [f for f, where in zip(failures, failure_set) if where == position],
        ))
    return per_set


def _set_result(rset: ResolvedSet, scored: tuple | None, threshold: float, options: EvalOptions) -> SetResult:
    """One set's result for one checkpoint from its scores (None: the set was not scored)."""
    result = SetResult(rset.name, rset.status, rset.reason, found_real=rset.found_real, found_fake=rset.found_fake)
    if rset.status != OK or scored is None:
        return result
    indices, labels, scores, failures = scored
    result.skipped = failures
    result.paths = [str(rset.samples[i][0]) for i in indices]
    result.labels, result.scores = labels, scores
    present = set(labels.tolist())
    if present != {0, 1}:
        result.status = UNREADABLE
        lost = "real" if 0 not in present else "fake"
        result.reason = f"every {lost} image failed to load ({len(failures)} unreadable)"
        return result
    result.metrics = binary_metrics(labels, scores, calibrated_threshold=threshold)
    if options.oracle:
        result.oracle_acc, result.oracle_threshold = best_threshold_accuracy(labels, scores)
    return result


def evaluate(checkpoints: Sequence[str | Path], suite: Suite, data_root: str | Path | None = None, options: EvalOptions = EvalOptions(), labels: Sequence[str] | None = None) -> SuiteReport:
    """Score every checkpoint on every set of ``suite`` found under ``data_root``.

    Missing or empty sets and unreadable images are reported in the result, never
    raised: one absent generator folder must not cost the rest of the table.
    """
    if not checkpoints:
        raise EvalError("no checkpoint given")
    labels = list(labels) if labels else checkpoint_labels(checkpoints)
    if len(labels) != len(checkpoints):
        raise EvalError(f"{len(labels)} labels for {len(checkpoints)} checkpoints")
    device = _resolve_device(options.device)
    loaded = [load_detector(path, map_location=device) for path in checkpoints]
    if data_root is not None:
        root = Path(data_root).expanduser()
    else:
        root = default_data_root(suite, options.progress, [detector.config.data for detector in loaded])
    if not root.is_dir():
        raise EvalError(f"data root {root} does not exist")
    resolved = resolve_suite(suite, root)
    transforms = [transform_for(suite.protocol, detector.config, options) for detector in loaded]
    results = [
        CheckpointResult(label, str(path), detector.config.model.arch, detector.config.quant.tag, t.key, [], threshold=detector.threshold)
        for label, path, detector, t in zip(labels, checkpoints, loaded, transforms)
    ]

    ready = [rset for rset in resolved.sets if rset.status == OK]
    scored: dict[tuple[int, str], tuple] = {}
    start, images_loaded = time.perf_counter(), 0
    # Checkpoints that share a transform share one pass over the images: decoding, not
    # the forward pass, is what costs most on CPU.
    groups: dict[tuple, list[int]] = {}
    for slot, transform in enumerate(transforms):
        groups.setdefault(transform.key, []).append(slot)
    for slots in groups.values():
        if not ready:
            break
        per_set = _score_group([loaded[s].model for s in slots], ready, transforms[slots[0]], options, device, suite.protocol.seed, suite.name)
        images_loaded += sum(len(indices) for indices, *_ in per_set)  # unreadable ones not counted
        for rset, (indices, set_labels, set_scores, failures) in zip(ready, per_set):
            for slot, scores in zip(slots, set_scores):
                scored[(slot, rset.name)] = (indices, set_labels, scores, failures)
    seconds = time.perf_counter() - start

    for slot, result in enumerate(results):
        result.sets.extend(_set_result(rset, scored.get((slot, rset.name)), result.threshold, options) for rset in resolved.sets)
    return SuiteReport(suite, resolved, options, results, images_loaded, seconds)

