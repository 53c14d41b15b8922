"""ForenSynths-layout image sets: labels come from ``0_real`` / ``1_fake`` folder names.

Layout (ForenSynths, Wang et al. CVPR 2020; docs/data.md)::

    <root>/train/<class>/{0_real,1_fake}/*.png
    <root>/val/<class>/{0_real,1_fake}/...
    <root>/test/<family>/{0_real,1_fake}/...           (or <family>/<class>/{0_real,1_fake})
"""

from __future__ import annotations

import json
import threading
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
    "ImageSizeError",
    "MAX_IMAGE_PIXELS",
    "MAX_ASPECT_RATIO",
    "check_image_size",
    "is_image_entry",
    "find_labelled_images",
    "load_rgb",
    "load_transformed",
    "ImageSet",
    "DataLayoutError",
    "LoadFailure",
    "TolerantImageSet",
    "collate_skipping_failures",
]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
REAL_DIR, FAKE_DIR = "0_real", "1_fake"
_LABELS = {REAL_DIR: 0, FAKE_DIR: 1}

#: Most pixels an image may have: checked on the size in the file's header, before
#: anything is decoded, and again on the size a resize would produce (the transforms
#: upscale images smaller than the crop). 8192 x 8192 (67.1 million) is above every
#: camera sensor in common use (61 MP) and 8K video (33 MP), and below PIL's own
#: warning (89.5 MP) and refusal (179 MP); an image at the limit decodes to 192 MiB of RGB.
#: Larger images are skipped as unreadable, with this reason.
MAX_IMAGE_PIXELS = 8192 * 8192

#: Longest side over shortest side, at most. Photos are 1:1 to 2:1 and stitched phone
#: panoramas stay under about 10:1; a 1 x 60000 strip, upscaled to a 224-pixel crop, would
#: need 13.4 million x 224 pixels (9 GB of RGB). Checked on the header's size, before decoding;
#: thinner images are skipped as unreadable, with this reason.
MAX_ASPECT_RATIO = 32

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")
_PIL_LIMIT_LOCK = threading.Lock()


class ImageLoadError(OSError):
    """An image file could not be read, decoded or transformed; the message names the path."""


class ImageSizeError(ImageLoadError):
    """An image is larger than :data:`MAX_IMAGE_PIXELS` (as stored, or after a resize) or
    thinner than :data:`MAX_ASPECT_RATIO`."""


def check_image_size(width: int, height: int, what: str = "image") -> None:
    """Raise :class:`ImageSizeError` when ``width`` x ``height`` is over the limits.

    ``what`` starts the message (``"image x.png"``, ``"resizing 20x3 to a shorter side of
    224: the result"``).
    The limits are read at each call, so a test (or a user) may change them.
    """
    if width < 1 or height < 1:
        raise ImageSizeError(f"{what} is {width}x{height}: it has no pixels")
    pixels = width * height
    if pixels > MAX_IMAGE_PIXELS:
        raise ImageSizeError(
            f"{what} is {width}x{height} = {pixels} pixels, over the limit of {MAX_IMAGE_PIXELS} "
            "(qmdd.data.folder.MAX_IMAGE_PIXELS)"
        )
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT_RATIO:
        raise ImageSizeError(
            f"{what} is {width}x{height}, an aspect ratio of {ratio:.0f}:1, over the limit of "
            f"{MAX_ASPECT_RATIO}:1 (qmdd.data.folder.MAX_ASPECT_RATIO)"
        )


def _reason(error: BaseException) -> str:
    """An exception in words: OSError/ValueError texts as they are, others with their type."""
    text = str(error)
    if isinstance(error, (OSError, ValueError)) and text:
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class DataLayoutError(FileNotFoundError):
    """A data root does not have the expected ForenSynths folders."""


def is_image_entry(path: Path) -> bool:
    """``path`` has an image extension and is a file, or a link that cannot be followed.

    A symlink loop or a dangling link is kept, not dropped: loading it then fails and it
    is reported (skipped and counted) like any unreadable file. Folders, FIFOs and other
    special files are not images.
    """
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return False
    return path.is_file() or (path.is_symlink() and not path.exists())


def find_labelled_images(root: str | Path) -> list[tuple[Path, int]]:
    """Every image below a ``0_real`` (label 0) or ``1_fake`` (label 1) folder under ``root``.

    Sorted by path, so the order (and everything seeded from it) is the same on every
    machine. Links that cannot be followed are listed too (see :func:`is_image_entry`).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataLayoutError(f"{root} is not a folder")
    samples = []
    for label_dir in sorted(p for p in root.rglob("*") if p.is_dir() and p.name in _LABELS):
        label = _LABELS[label_dir.name]
        for path in sorted(label_dir.iterdir()):
            if is_image_entry(path):
                samples.append((path, label))
    return samples


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image of any mode (L, LA, P, RGBA, CMYK, I;16, ...) as 8-bit RGB.

    Raises :class:`ImageLoadError` naming the file when it is missing, truncated, not an
    image or fails to decode for any other reason, and :class:`ImageSizeError` when the
    size in its header is over :data:`MAX_IMAGE_PIXELS` or :data:`MAX_ASPECT_RATIO` (checked
    before decoding, so such a file costs no memory).
    """
    try:
        with _open_image(path) as image:
            check_image_size(*image.size, what=f"image {path}")
            image.load()
            return _to_rgb(image)
    except ImageLoadError:
        raise
    except Exception as error:  # any decoder failure, MemoryError included: this image only
        raise ImageLoadError(f"cannot read image {path}: {_reason(error)}") from None


def _open_image(path: str | Path) -> Image.Image:
    """``Image.open`` (the header only) without PIL's own size check: MAX_IMAGE_PIXELS is
    lower and refuses such images with a reason, where PIL would print a raw
    DecompressionBombWarning from 89.5 MP. (``warnings.catch_warnings`` would reset every
    module's once-only warning registry at each image.) The lock keeps threads that load
    at once from restoring each other's value."""
    with _PIL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _SIXTEEN_BIT_MODES:
        # 16/32-bit greyscale: rescale to 8 bits rather than clip at 255.
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def load_transformed(
    path: str | Path,
    transform: Callable[[Image.Image, np.random.Generator], torch.Tensor],
    rng: np.random.Generator,
) -> torch.Tensor:
    """``transform(load_rgb(path), rng)``; an error in either step is an :class:`ImageLoadError`
    naming the path (an :class:`ImageSizeError` for a size over the limits)."""
    image = load_rgb(path)
    try:
        return transform(image, rng)
    except ImageSizeError as error:
        raise ImageSizeError(f"cannot transform image {path}: {error}") from error
    except Exception as error:  # MemoryError included: it concerns this image only
        raise ImageLoadError(f"cannot transform image {path}: {_reason(error)}") from error


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
        return load_transformed(path, self.transform, rng), label


@dataclass(frozen=True)
class LoadFailure:
    """Marker a :class:`TolerantImageSet` returns for an image it could not read."""

    index: int
    path: str
    error: str


class TolerantImageSet(ImageSet):
    """An :class:`ImageSet` for evaluation: unreadable images become :class:`LoadFailure`.

    Items are ``(tensor, label, index)``, or a ``LoadFailure`` naming the path and the
    reason: a file that cannot be opened or decoded, one over :data:`MAX_IMAGE_PIXELS` or
    :data:`MAX_ASPECT_RATIO`, a link that cannot be followed, or any error of the transform
    (MemoryError included). Batch them with :func:`collate_skipping_failures`, which drops
    the failures and hands them back, so one bad file in 10k neither stops an evaluation
    nor vanishes unreported.
    """

    @classmethod
    def of(cls, dataset: ImageSet) -> "TolerantImageSet":
        """The same samples, transform, seed and epoch as ``dataset``, tolerant."""
        tolerant = cls(dataset.samples, dataset.transform, dataset.seed, dataset.name)
        tolerant.set_epoch(dataset.epoch)
        return tolerant

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int] | LoadFailure:  # type: ignore[override]
        path, label = self.samples[index]
        rng = np.random.default_rng((self.seed, self.epoch, index))
        try:
            return load_transformed(path, self.transform, rng), label, index
        except ImageLoadError as error:
            return LoadFailure(index, str(path), str(error))


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
