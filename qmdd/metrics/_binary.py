"""Average precision and thresholded accuracies for a real(0)/fake(1) detector."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np

__all__ = ["BinaryMetrics", "average_precision", "accuracy_at", "best_threshold_accuracy", "binary_metrics", "mean_metrics", "DEFAULT_THRESHOLD"]

#: CNNDetection's decision threshold on sigmoid scores: fake when score > 0.5.
DEFAULT_THRESHOLD = 0.5


def _as_arrays(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} vs {s.size}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (real) or 1 (fake)")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    return y, s


def average_precision(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """AP = sum_n (R_n - R_{n-1}) * P_n over the distinct score thresholds, descending.

    Identical to ``sklearn.metrics.average_precision_score`` (no interpolation; tied scores
    form one threshold). NaN when there is no positive (fake) example.
    """
    y, s = _as_arrays(labels, scores)
    positives = int(y.sum())
    if positives == 0:
        return math.nan
    order = np.argsort(-s, kind="mergesort")
    y_sorted, s_sorted = y[order], s[order]
    # Last index of each run of tied scores: one precision/recall point per threshold.
    threshold_ends = np.r_[np.flatnonzero(np.diff(s_sorted)), y_sorted.size - 1]
    true_pos = np.cumsum(y_sorted)[threshold_ends]
    predicted_pos = threshold_ends + 1
    precision = true_pos / predicted_pos
    recall = true_pos / positives
    recall_steps = np.diff(np.r_[0.0, recall])
    return float(np.sum(recall_steps * precision))


def accuracy_at(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> float:
    """Share of images whose prediction ``score > threshold`` equals the label."""
    y, s = _as_arrays(labels, scores)
    if y.size == 0:
        return math.nan
    return float(np.mean((s > threshold) == (y == 1)))


def best_threshold_accuracy(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """The highest accuracy any threshold reaches on these scores, and that threshold.

    Fitted on the images it is then scored on, it is an *oracle*: it only says how
    separable the scores are. Fitted on validation images and applied to test images, it
    is a calibrated decision threshold (``train`` stores one in every checkpoint). The
    threshold ``t`` uses the rule of :func:`accuracy_at` (fake when ``score > t``); among
    equally good splits the first (lowest) wins.
    """
    y = np.asarray(labels).astype(np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.size == 0:
        return math.nan, math.nan
    order = np.argsort(s, kind="mergesort")
    s, y = s[order], y[order]
    # Split k: items [0, k) called real, [k, n) called fake.
    real_below = np.r_[0, np.cumsum(y == 0)]
    fake_at_or_above = int((y == 1).sum()) - np.r_[0, np.cumsum(y == 1)]
    correct = real_below + fake_at_or_above
    splits = np.arange(y.size + 1)
    valid = (splits == 0) | (splits == y.size)
    valid[1:-1] = s[1:] != s[:-1]  # only between distinct scores
    k = int(splits[valid][np.argmax(correct[valid])])
    if k == 0:
        threshold = float(np.nextafter(s[0], -np.inf))
    elif k == y.size:
        threshold = float(s[-1])
    else:
        threshold = float((s[k - 1] + s[k]) / 2)
        if not s[k - 1] <= threshold < s[k]:  # adjacent floats: the midpoint rounds up
            threshold = float(s[k - 1])
    return float(correct[k] / y.size), threshold


@dataclass(frozen=True)
class BinaryMetrics:
    """Per-set detection metrics (fractions in [0, 1]; NaN where undefined).

    ``acc`` is the accuracy at 0.5 (the field's number). ``cal_acc`` is the accuracy at a
    threshold calibrated on validation images (NaN when none was given): its own column,
    never a replacement for ``acc``.
    """

    ap: float
    acc: float
    real_acc: float
    fake_acc: float
    n_real: int
    n_fake: int
    cal_acc: float = math.nan

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def binary_metrics(
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    calibrated_threshold: float | None = None,
) -> BinaryMetrics:
    """AP, accuracy, real accuracy and fake accuracy at ``threshold``, plus counts, and
    the accuracy at ``calibrated_threshold`` (a threshold fitted on validation) if given."""
    y, s = _as_arrays(labels, scores)
    real, fake = y == 0, y == 1
    return BinaryMetrics(
        ap=average_precision(y, s),
        acc=accuracy_at(y, s, threshold),
        real_acc=accuracy_at(y[real], s[real], threshold),
        fake_acc=accuracy_at(y[fake], s[fake], threshold),
        n_real=int(real.sum()),
        n_fake=int(fake.sum()),
        cal_acc=math.nan if calibrated_threshold is None else accuracy_at(y, s, calibrated_threshold),
    )


def mean_metrics(per_set: Iterable[BinaryMetrics]) -> BinaryMetrics:
    """Unweighted mean over sets, as the papers' tables report it (counts are summed)."""
    items = list(per_set)
    if not items:
        raise ValueError("mean_metrics needs at least one set")

    def mean(field: str) -> float:
        values = [getattr(m, field) for m in items if not math.isnan(getattr(m, field))]
        return float(np.mean(values)) if values else math.nan

    return BinaryMetrics(
        ap=mean("ap"),
        acc=mean("acc"),
        real_acc=mean("real_acc"),
        fake_acc=mean("fake_acc"),
        n_real=sum(m.n_real for m in items),
        n_fake=sum(m.n_fake for m in items),
        cal_acc=mean("cal_acc"),
    )
