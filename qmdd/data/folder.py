"""ForenSynths-layout image sets: labels come from ``0_real`` / ``1_fake`` folder names.

Layout (ForenSynths, Wang et al. CVPR 2020; docs/data.md)::

    <root>/train/<class>/{0_real,1_fake}/*.png
    <root>/val/<class>/{0_real,1_fake}/...
    <root>/test/<family>/{0_real,1_fake}/...           (or <family>/<class>/{0_real,1_fake})
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

__all__ = [
    "IMAGE_EXTENSIONS",
    "REAL_DIR",
    "FAKE_DIR",
    "ImageLoadError",
    "find_labelled_images",
    "load_rgb",
    "ImageSet",
    "DataLayoutError",
    "LoadFailure",
    "TolerantImageSet",
    "collate_skipping_failures",
]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
REAL_DIR, FAKE_DIR = "0_real", "1_fake"
_LABELS = {REAL_DIR: 0, FAKE_DIR: 1}


class ImageLoadError(OSError):
    """An image file could not be read or decoded; the message names the path."""


class DataLayoutError(FileNotFoundError):
    """A data root does not have the expected ForenSynths folders."""


def find_labelled_images(root: str | Path) -> list[tuple[Path, int]]:
    """Every image below a ``0_real`` (label 0) or ``1_fake`` (label 1) folder under ``root``.

    Sorted by path, so the order (and everything seeded from it) is the same on every
    machine.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataLayoutError(f"{root} is not a folder")
    samples = []
    for label_dir in sorted(p for p in root.rglob("*") if p.is_dir() and p.name in _LABELS):
        label = _LABELS[label_dir.name]
        for path in sorted(label_dir.iterdir()):
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                samples.append((path, label))
    return samples


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image of any mode (L, LA, P, RGBA, CMYK, I;16, ...) as 8-bit RGB.

    Raises :class:`ImageLoadError` naming the file when it is missing, truncated or not an
    image.
    """
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16/32-bit greyscale: rescale to 8 bits rather than clip at 255.
                array = np.asarray(image, dtype=np.float64)
                peak = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
                image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                image = image.convert("RGBA")
                background = Image.new("RGBA", image.size, (255, 255, 255, 255))
                image = Image.alpha_composite(background, image)
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ImageLoadError(f"cannot read image {path}: {error}") from None


class ImageSet(Dataset):
    """Labelled images with seeded, per-sample augmentation.

    Sample ``i`` in epoch ``e`` is transformed with a generator seeded by
    ``(seed, e, i)``: augmentation is reproducible and independent of worker count.
    """

    def __init__(
        self,
        samples: Sequence[tuple[Path, int]],
        transform: Callable[[Image.Image, np.random.Generator], torch.Tensor],
        seed: int = 0,
        name: str = "",
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.name = name

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def labels(self) -> np.ndarray:
        return np.array([label for _, label in self.samples], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        rng = np.random.default_rng((self.seed, self.epoch, index))
        return self.transform(load_rgb(path), rng), label


@dataclass(frozen=True)
class LoadFailure:
    """Marker a :class:`TolerantImageSet` returns for an image it could not read."""

    index: int
    path: str
    error: str


class TolerantImageSet(ImageSet):
    """An :class:`ImageSet` for evaluation: unreadable images become :class:`LoadFailure`.

    Items are ``(tensor, label, index)``, or a ``LoadFailure`` naming the path. Batch
    them with :func:`collate_skipping_failures`, which drops the failures and hands them
    back, so one corrupt file in 10k neither stops an evaluation nor vanishes unreported.
    """

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int] | LoadFailure:  # type: ignore[override]
        path, label = self.samples[index]
        try:
            image = load_rgb(path)
        except ImageLoadError as error:
            return LoadFailure(index, str(path), str(error))
        rng = np.random.default_rng((self.seed, self.epoch, index))
        return self.transform(image, rng), label, index


def collate_skipping_failures(
    batch: Sequence[tuple[torch.Tensor, int, int] | LoadFailure],
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, list[LoadFailure]]:
    """``(images or None, labels, indices, failures)`` from :class:`TolerantImageSet` items.

    ``images`` is None when every item of the batch failed to load.
    """
    failures = [item for item in batch if isinstance(item, LoadFailure)]
    loaded = [item for item in batch if not isinstance(item, LoadFailure)]
    if not loaded:
        empty = torch.zeros(0, dtype=torch.int64)
        return None, empty, empty.clone(), failures
    images = torch.stack([item[0] for item in loaded])
    labels = torch.tensor([item[1] for item in loaded], dtype=torch.int64)
    indices = torch.tensor([item[2] for item in loaded], dtype=torch.int64)
    return images, labels, indices, failures


@dataclass(frozen=True)
class BenchmarkInfo:
    """What a dataset root says about itself (``benchmark.json``, when present)."""

    name: str
    seen_family: str | None

    @staticmethod
    def read(root: Path) -> "BenchmarkInfo":
        info_path = root / "benchmark.json"
        if info_path.is_file():
            info = json.loads(info_path.read_text())
            return BenchmarkInfo(name=str(info.get("name", root.name)), seen_family=info.get("seen_family"))
        # A real ForenSynths root: detectors train on ProGAN.
        return BenchmarkInfo(name="forensynths", seen_family="progan")
