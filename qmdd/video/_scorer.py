"""Scoring face crops with any qmdd detector: a training checkpoint or a packed ``.qmdd`` file."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from qmdd.checkpoint import CheckpointError
from qmdd.config import RunConfig
from qmdd.data import DetectorTransform
from qmdd.deploy import FILE_SUFFIX, Int8ConversionError, PackedFormatError, calibration_images, load_packed, to_int8
from qmdd.detector import fake_probability, load_detector
from qmdd.video._frames import VideoError

__all__ = ["Scorer", "load_scorer", "ENGINES"]

#: ``fake-quant``: the model as trained (exact); ``int8``: PyTorch's x86 int8 path
#: (docs/deployment.md), for LSQ-quantized detectors.
ENGINES = ("fake-quant", "int8")


@dataclass
class Scorer:
    """A detector in eval mode with the run's test transform and its decision threshold."""

    model: nn.Module
    config: RunConfig
    threshold: float
    source: Path

    def __post_init__(self) -> None:
        self.transform = DetectorTransform(self.config.data, "test")

    def score(self, images: Sequence[Image.Image], batch_size: int = 32) -> list[float]:
        """The fake probability of each RGB image, through the run's test transform
        (centre crop at ``data.crop_size``; smaller images are first resized up)."""
        rng = np.random.default_rng(0)  # the test transform draws nothing; its API wants a generator
        scores: list[float] = []
        for start in range(0, len(images), batch_size):
            batch = torch.stack([self.transform(image, rng) for image in images[start : start + batch_size]])
            with torch.inference_mode():
                scores.extend(fake_probability(self.model, batch).tolist())
        return scores


def load_scorer(path: str | Path, engine: str = "fake-quant") -> Scorer:
    """A checkpoint (``.pt``, from training) or a packed file (``.qmdd``, from
    ``python -m qmdd.export``); ``engine="int8"`` converts it for the int8 CPU path.
    Raises :class:`VideoError` naming the file for anything unusable."""
    path = Path(path)
    if engine not in ENGINES:
        raise VideoError(f"engine {engine!r} is unknown; choose one of {', '.join(ENGINES)}")
    if not path.is_file():
        raise VideoError(f"model {path}: no such file")
    # torch.ao warns on every int8 conversion that its quantized tensors are deprecated;
    # the int8 path is pinned to what it supports (docs/deployment.md).
    warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions.*deprecated", category=UserWarning)
    try:
        loaded = load_packed(path) if path.suffix == FILE_SUFFIX else load_detector(path)
        model = loaded.model
        if engine == "int8":
            model = to_int8(model, calibration_images(loaded.config.data))
    except (CheckpointError, PackedFormatError, Int8ConversionError) as error:
        raise VideoError(f"model {path}: {error}") from None
    return Scorer(model.eval(), loaded.config, loaded.threshold, path)
