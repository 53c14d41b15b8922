"""Heatmap overlays as PNG, with Pillow and NumPy only."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from qmdd.data.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["heat_colours", "overlay", "to_uint8_image"]

# Share of the heatmap in the blend: enough to read the map, the image still visible.
_HEAT_WEIGHT = 0.5


def heat_colours(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB uint8 with a jet-like ramp (blue, cyan, yellow, red).

    Piecewise linear in each channel: the classic Grad-CAM look, without matplotlib.
    """
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)
    red = np.clip(1.5 - np.abs(4.0 * v - 3.0), 0.0, 1.0)
    green = np.clip(1.5 - np.abs(4.0 * v - 2.0), 0.0, 1.0)
    blue = np.clip(1.5 - np.abs(4.0 * v - 1.0), 0.0, 1.0)
    return (np.stack([red, green, blue], axis=-1) * 255).round().astype(np.uint8)


def to_uint8_image(tensor: torch.Tensor) -> np.ndarray:
    """Undo the ImageNet normalisation of one (3, H, W) input: (H, W, 3) uint8."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    pixels = (tensor.detach().cpu() * std + mean).clamp(0, 1)
    return (pixels.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def overlay(image: np.ndarray, cam: np.ndarray | torch.Tensor, scale: int = 1) -> Image.Image:
    """Blend a (H, W) map in [0, 1] over a (H, W, 3) uint8 image; ``scale`` enlarges both
    (nearest neighbour, so pixels stay visible at the small crop sizes detectors use)."""
    cam = cam.detach().cpu().numpy() if isinstance(cam, torch.Tensor) else np.asarray(cam)
    if cam.shape != image.shape[:2]:
        raise ValueError(f"map {cam.shape} and image {image.shape[:2]} differ in size")
    blended = (1 - _HEAT_WEIGHT) * image.astype(np.float32) + _HEAT_WEIGHT * heat_colours(cam).astype(np.float32)
    result = Image.fromarray(blended.round().clip(0, 255).astype(np.uint8))
    if scale > 1:
        result = result.resize((result.width * scale, result.height * scale), Image.NEAREST)
    return result
