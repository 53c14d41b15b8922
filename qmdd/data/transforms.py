"""CNNDetection-style image transforms, driven by an explicit random generator.

Each sample's randomness comes from a ``numpy.random.Generator`` seeded by
``(seed, epoch, index)`` (see :class:`qmdd.data.ImageSet`), so augmentation is identical
whatever the number of loader workers, and a resumed run sees exactly the images an
uninterrupted run would.

Order (CNNDetection, reference.md §2): optional resize of the shorter side; Gaussian blur
with probability ``blur_prob`` (sigma ~ U[blur_sigma]); JPEG re-compression with
probability ``jpeg_prob`` (quality ~ U[jpeg_quality]); crop (random in training, centred
otherwise); horizontal flip in training; ImageNet normalisation.
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageFilter

from qmdd.config import DataConfig

__all__ = ["DetectorTransform", "gaussian_blur", "jpeg_compress", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Mode = Literal["train", "val", "test"]


def gaussian_blur(image: Image.Image, sigma: float) -> Image.Image:
    """Gaussian blur with standard deviation ``sigma`` in pixels (no-op for sigma <= 0)."""
    if sigma <= 0:
        return image
    return image.filter(ImageFilter.GaussianBlur(radius=sigma))


def jpeg_compress(image: Image.Image, quality: int) -> Image.Image:
    """Round-trip through an in-memory JPEG at ``quality`` (1-100)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def _resize_shorter(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    scale = size / min(width, height)
    if scale == 1:
        return image
    return image.resize((max(size, round(width * scale)), max(size, round(height * scale))), Image.BILINEAR)


class DetectorTransform:
    """PIL image -> normalised ``float32`` tensor (3, crop, crop), per CNNDetection.

    Args:
        config: the data section of the run config.
        mode: ``train`` (random blur/JPEG, random crop, flip), ``val`` (fixed blur sigma
            and JPEG quality at the training probabilities, centre crop) or ``test``
            (centre crop only, no resize unless ``load_size`` is set).
    """

    def __init__(self, config: DataConfig, mode: Mode) -> None:
        if mode not in ("train", "val", "test"):
            raise ValueError(f"mode must be train, val or test, got {mode!r}")
        self.config = config
        self.mode = mode
        self._mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        cfg = self.config
        if cfg.load_size is not None:
            image = _resize_shorter(image, cfg.load_size)
        if self.mode != "test":
            # Draw both decisions every time so the random stream does not depend on them.
            blur_draw, jpeg_draw = rng.random(), rng.random()
            sigma = rng.uniform(*cfg.blur_sigma) if self.mode == "train" else cfg.val_blur_sigma
            quality = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1)) if self.mode == "train" else cfg.val_jpeg_quality
            if blur_draw < cfg.blur_prob:
                image = gaussian_blur(image, sigma)
            if jpeg_draw < cfg.jpeg_prob:
                image = jpeg_compress(image, quality)
        if min(image.size) < cfg.crop_size:
            image = _resize_shorter(image, cfg.crop_size)
        image = self._crop(image, rng)
        array = np.asarray(image, dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array.copy()).permute(2, 0, 1)
        if self.mode == "train" and rng.random() < 0.5:
            tensor = tensor.flip(-1)
        return (tensor - self._mean) / self._std

    def _crop(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        size = self.config.crop_size
        width, height = image.size
        if self.mode == "train":
            left = int(rng.integers(0, width - size + 1))
            top = int(rng.integers(0, height - size + 1))
        else:
            left, top = (width - size) // 2, (height - size) // 2
        return image.crop((left, top, left + size, top + size))
