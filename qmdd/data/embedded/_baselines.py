"""Sanity baselines for a ForenSynths-layout root: is the benchmark neither trivial nor hopeless?

- :func:`histogram_baseline_ap`: per-channel 16-bin colour histograms + logistic regression.
  It sees colour content only, not traces; if it reached a high AP the fakes would differ
  from the reals by colour, and a detector could win without learning any trace.
- :func:`spectral_probe`: a linear probe on spectral and neighbouring-pixel features of
  the high-pass residual, scored by AP and ROC AUC. It sees traces; the seen family should
  be near 1.0, unseen families lower. It shows that the seen family's trace is there to be
  learnt, whatever a given network manages in a given budget.

Both train on ``train/`` and score every ``test/<family>`` folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

__all__ = ["histogram_baseline_ap", "spectral_probe", "spectral_probe_auc", "histogram_features", "spectral_features"]

Features = Callable[[np.ndarray], np.ndarray]


def _labelled_images(folder: Path) -> tuple[list[Path], np.ndarray]:
    paths, labels = [], []
    for label, name in ((0, "0_real"), (1, "1_fake")):
        found = sorted(folder.rglob(f"{name}/*.png"))
        paths += found
        labels += [label] * len(found)
    if not paths:
        raise FileNotFoundError(f"no 0_real/1_fake PNG images under {folder}")
    return paths, np.array(labels)


def _feature_matrix(paths: list[Path], features: Features) -> np.ndarray:
    rows = []
    for path in paths:
        with Image.open(path) as image:
            rows.append(features(np.asarray(image.convert("RGB"), dtype=np.uint8)))
    return np.stack(rows)


def histogram_features(image: np.ndarray, bins: int = 16) -> np.ndarray:
    """Per-channel ``bins``-bin histograms of an HxWx3 uint8 image, as fractions of pixels."""
    pixels = image.reshape(-1, 3) // (256 // bins)
    counts = [np.bincount(pixels[:, c], minlength=bins) for c in range(3)]
    return np.concatenate(counts).astype(np.float64) / pixels.shape[0]


def spectral_features(image: np.ndarray) -> np.ndarray:
    """Trace features of an HxWx3 uint8 image (about 170 numbers).

    - log power spectrum of the grey-level high-pass residual (pixel minus the mean of its
      4 neighbours), Hann-windowed, folded to one quadrant (|f_x|, |f_y|) and pooled into an
      8x8 grid: periodic upsampling peaks land in fixed cells;
    - mean absolute neighbour differences at lags 1, 2, 4, split by pixel phase (even/odd
      row and column) and normalised by their mean: phase-dependent gain shows up here;
    - residual standard deviation, kurtosis and the per-channel share of residual energy.
    """
    rgb = image.astype(np.float64) / 255.0
    grey = rgb.mean(axis=2)
    size = min(grey.shape)
    grey = grey[:size, :size]
    padded = np.pad(grey, 1, mode="reflect")
    residual = grey - 0.25 * (padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:])
    window = np.outer(np.hanning(size), np.hanning(size))
    power = np.abs(np.fft.rfft2(residual * window)) ** 2  # (size, size//2+1)
    # Fold negative row frequencies onto positive ones: cell (|f_y|, f_x), 0..Nyquist each.
    row_freq = np.minimum(np.arange(size), size - np.arange(size))
    col_freq = np.arange(power.shape[1])
    cells = 8
    row_cell = np.minimum(row_freq * cells // (size // 2 + 1), cells - 1)
    col_cell = np.minimum(col_freq * cells // (size // 2 + 1), cells - 1)
    index = (row_cell[:, None] * cells + col_cell[None, :]).ravel()
    pooled = np.bincount(index, power.ravel(), cells * cells) / np.bincount(index, minlength=cells * cells)
    spectrum = np.log(pooled + 1e-12)
    spectrum -= spectrum.mean()  # shape, not overall contrast

    phase = []
    for lag in (1, 2, 4):
        dx = np.abs(grey[:, lag:] - grey[:, :-lag])
        dy = np.abs(grey[lag:] - grey[:-lag])
        parts = [dx[:, 0::2].mean(), dx[:, 1::2].mean(), dy[0::2].mean(), dy[1::2].mean()]
        parts += [dx[0::2].mean(), dx[1::2].mean(), dy[:, 0::2].mean(), dy[:, 1::2].mean()]
        mean = np.mean(parts) + 1e-12
        phase += [p / mean for p in parts] + [np.log(mean)]
    centred = residual - residual.mean()
    std = centred.std() + 1e-12
    kurtosis = (centred**4).mean() / std**4
    colour_residual = rgb[:size, :size] - rgb[:size, :size].mean(axis=(0, 1))
    energy = (colour_residual**2).mean(axis=(0, 1))
    return np.concatenate([spectrum, phase, [np.log(std), np.log(kurtosis)], energy / (energy.sum() + 1e-12)])


Metric = Callable[[np.ndarray, np.ndarray], float]


def _per_family_scores(root: str | Path, features: Features, metrics: dict[str, Metric], c: float) -> dict[str, dict[str, float]]:
    """``{family: {metric name: value}}`` of a logistic regression on ``features``."""
    root = Path(root)
    train_paths, train_labels = _labelled_images(root / "train")
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
    model.fit(_feature_matrix(train_paths, features), train_labels)
    scores = {}
    families = sorted(p.name for p in (root / "test").iterdir() if p.is_dir())
    if not families:
        raise FileNotFoundError(f"{root / 'test'} has no family folders")
    for family in families:
        paths, labels = _labelled_images(root / "test" / family)
        probability = model.predict_proba(_feature_matrix(paths, features))[:, 1]
        scores[family] = {name: float(metric(labels, probability)) for name, metric in metrics.items()}
    return scores


def histogram_baseline_ap(root: str | Path, bins: int = 16) -> dict[str, float]:
    """AP per test family of a colour-histogram classifier trained on ``root/train``.

    Features: per-channel ``bins``-bin histograms (3 x 16 = 48 numbers); model: standardised
    logistic regression (C = 1). AP = ``sklearn.metrics.average_precision_score``, as the
    ForenSynths protocol (Wang et al., CVPR 2020). Near 0.5 means colour alone does not separate
    the classes.
    """
    scores = _per_family_scores(root, lambda image: histogram_features(image, bins), {"ap": average_precision_score}, c=1.0)
    return {family: values["ap"] for family, values in scores.items()}


def spectral_probe(root: str | Path) -> dict[str, dict[str, float]]:
    """``{family: {"ap", "auc"}}`` of a linear probe on :func:`spectral_features`, trained on ``root/train``.

    Standardised logistic regression, C = 0.1 (about 170 features, 3000 training images).
    """
    return _per_family_scores(root, spectral_features, {"ap": average_precision_score, "auc": roc_auc_score}, c=0.1)


def spectral_probe_auc(root: str | Path) -> dict[str, float]:
    """ROC AUC per test family of :func:`spectral_probe`."""
    return {family: values["auc"] for family, values in spectral_probe(root).items()}
