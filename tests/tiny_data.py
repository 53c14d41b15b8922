"""Tiny ForenSynths-layout trees that tests can train on in seconds (import as ``tiny_data``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def _smooth_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A 'real' image: low-pass noise, so fakes' upsampling traces stand out."""
    coarse = rng.random((size // 4 + 2, size // 4 + 2, 3))
    image = Image.fromarray((coarse * 255).astype(np.uint8)).resize((size + 8, size + 8), Image.BICUBIC)
    array = np.asarray(image, dtype=np.float64) + rng.normal(0, 6, (size + 8, size + 8, 3))
    return np.clip(array[4 : 4 + size, 4 : 4 + size], 0, 255).astype(np.uint8)


def _checkerboard_fake(real: np.ndarray, strength: float) -> np.ndarray:
    """A 'fake': the real image with a period-2 checkerboard, like a transposed conv leaves."""
    h, w, _ = real.shape
    board = ((np.indices((h, w)).sum(axis=0) % 2) * 2 - 1)[..., None] * strength
    return np.clip(real.astype(np.float64) + board, 0, 255).astype(np.uint8)


def make_tiny_forensynths(root: Path, *, size: int = 32, per_class: int = 12, seed: int = 0) -> Path:
    """train/{a,b}, val/{a,b} and test/{seen,unseen} with 0_real/1_fake PNGs."""
    rng = np.random.default_rng(seed)
    layout = {
        "train/a": (per_class, 24.0),
        "train/b": (per_class, 24.0),
        "val/a": (per_class // 2, 24.0),
        "val/b": (per_class // 2, 24.0),
        "test/seen": (per_class // 2, 24.0),
        "test/unseen": (per_class // 2, 6.0),
    }
    for folder, (count, strength) in layout.items():
        for label_dir in ("0_real", "1_fake"):
            (root / folder / label_dir).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            real = _smooth_texture(rng, size)
            Image.fromarray(real).save(root / folder / "0_real" / f"{index:04d}.png")
            fake = _checkerboard_fake(_smooth_texture(rng, size), strength)
            Image.fromarray(fake).save(root / folder / "1_fake" / f"{index:04d}.png")
    (root / "benchmark.json").write_text(json.dumps({"name": "tiny", "seen_family": "seen"}))
    return root
