"""CNNDetection-style image transforms, driven by an explicit random generator.

Each sample's randomness comes from a ``numpy.random.Generator`` seeded by
``(seed, epoch, index)`` (see :class:`qmdd.data.ImageSet`), so augmentation is identical
whatever the number of loader workers, and a resumed run sees exactly the images an
uninterrupted run would.

Order (CNNDetection, Wang et al. CVPR 2020): optional resize of the shorter side; Gaussian blur
with probability ``blur_prob`` (sigma ~ U[blur_sigma]); JPEG re-compression with
probability ``jpeg_prob`` (quality ~ U[jpeg_quality]); crop (random in training, centred
otherwise); horizontal flip in training; ImageNet normalisation.

Every resize is checked before it allocates: a result over
:data:`qmdd.data.folder.MAX_IMAGE_PIXELS` raises :class:`qmdd.data.ImageSizeError`, which
evaluation and ``qmdd.predict`` report as an unreadable image and skip.
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageFilter

from qmdd.config import DataConfig
from qmdd.data.folder import check_image_size

__all__ = ["DetectorTransform", "gaussian_blur", "jpeg_compress", "aligned_offset", "centred_offset", "IMAGENET_MEAN", "IMAGENET_STD"]

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
    """Shorter side to ``size``; raises :class:`qmdd.data.ImageSizeError`, before allocating
    anything, when the result would be over ``MAX_IMAGE_PIXELS`` (or thinner than
    ``MAX_ASPECT_RATIO``): upscaling a 1 x 60000 strip to a 224 crop would take 9 GB."""
    width, height = image.size
    scale = size / min(width, height)
    if scale == 1:
        return image
    target = (max(size, round(width * scale)), max(size, round(height * scale)))
    check_image_size(*target, what=f"resizing {width}x{height} to a shorter side of {size}: the result")
    return image.resize(target, Image.BILINEAR)


class DetectorTransform:
    """PIL image -> normalised ``float32`` tensor (3, crop, crop), per CNNDetection.

    Args:
        config: the data section of the run config.
        mode: ``train`` (random blur/JPEG, random crop, flip), ``val`` (fixed blur sigma
            and JPEG quality at the training probabilities, centre crop) or ``test``
            (centre crop only, no resize unless ``load_size`` is set).
        crop_shift: pixels added to both offsets of the centre crop (val/test), to see how
            a detector reacts when its input is off the upsampling grid's phase.

    Crop offsets are multiples of ``config.crop_align`` (the centre crop's rounded down);
    an unresolved ``None`` (the model decides, see :func:`qmdd.models.crop_alignment`)
    crops at any offset.
    """

    def __init__(self, config: DataConfig, mode: Mode, crop_shift: int = 0) -> None:
        if mode not in ("train", "val", "test"):
            raise ValueError(f"mode must be train, val or test, got {mode!r}")
        if crop_shift and mode == "train":
            raise ValueError("crop_shift moves the centre crop of val/test; training crops are random")
        self.config = config
        self.mode = mode
        self.crop_shift = crop_shift
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
        align = self.config.crop_align or 1
        if self.mode == "train":
            left, top = aligned_offset(width - size, align, rng), aligned_offset(height - size, align, rng)
        else:
            left, top = centred_offset(width - size, align, self.crop_shift), centred_offset(height - size, align, self.crop_shift)
        return image.crop((left, top, left + size, top + size))


def aligned_offset(slack: int, align: int, rng: np.random.Generator) -> int:
    """A random crop offset in ``[0, slack]`` that is a multiple of ``align``, all equally likely.

    Keeps the phase of a generator's upsampling grid (its period divides ``align``), which
    a random offset would change from crop to crop (docs/method.md).
    """
    return int(rng.integers(0, slack // align + 1)) * align


def centred_offset(slack: int, align: int, shift: int = 0) -> int:
    """The centre crop's offset, rounded down to a multiple of ``align``, plus ``shift`` px
    (clamped to the image): ``shift`` moves the test crop off the grid's phase on purpose."""
    return min(max((slack // 2) // align * align + shift, 0), slack)
