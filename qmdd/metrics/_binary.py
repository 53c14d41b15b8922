"""Average precision and thresholded accuracies for a real(0)/fake(1) detector."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np

__all__ = ["BinaryMetrics", "average_precision", "accuracy_at", "binary_metrics", "mean_metrics"]

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


@dataclass(frozen=True)
class BinaryMetrics:
    """Per-set detection metrics (fractions in [0, 1]; NaN where undefined)."""

    ap: float
    acc: float
    real_acc: float
    fake_acc: float
    n_real: int
    n_fake: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def binary_metrics(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> BinaryMetrics:
    """AP, accuracy, real accuracy and fake accuracy at ``threshold``, plus counts."""
    y, s = _as_arrays(labels, scores)
    real, fake = y == 0, y == 1
    return BinaryMetrics(
        ap=average_precision(y, s),
        acc=accuracy_at(y, s, threshold),
        real_acc=accuracy_at(y[real], s[real], threshold),
        fake_acc=accuracy_at(y[fake], s[fake], threshold),
        n_real=int(real.sum()),
        n_fake=int(fake.sum()),
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
    )
