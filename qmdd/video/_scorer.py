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
from qmdd.deploy import ENGINES, Int8ConversionError, OnnxFormatError, PackedFormatError, open_deployed
from qmdd.detector import fake_probability
from qmdd.video._frames import VideoError

__all__ = ["Scorer", "load_scorer", "ENGINES"]

# ENGINES (re-exported from qmdd.deploy): ``fake-quant``, the model as trained (exact);
# ``int8``, PyTorch's x86 int8 path; ``onnxruntime``, an ``.onnx`` file from
# ``python -m qmdd.export --format onnx`` (docs/deployment.md).


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
    """A checkpoint (``.pt``, from training), a packed file (``.qmdd``) or an ONNX file
    (``.onnx``, from ``python -m qmdd.export``), opened by :func:`qmdd.deploy.open_deployed`
    with ``engine`` (an ONNX file always runs in ONNX Runtime). Raises :class:`VideoError`
    naming the file for anything unusable."""
    path = Path(path)
    if engine not in ENGINES:
        raise VideoError(f"engine {engine!r} is unknown; choose one of {', '.join(ENGINES)}")
    if not path.is_file():
        raise VideoError(f"model {path}: no such file")
    # torch.ao warns on every int8 conversion that its quantized tensors are deprecated;
    # the int8 path is pinned to what it supports (docs/deployment.md).
    warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions.*deprecated", category=UserWarning)
    if path.suffix.lower() == ".onnx":
        engine = "onnxruntime"
    try:
        loaded = open_deployed(path, engine)
    except (CheckpointError, PackedFormatError, OnnxFormatError, Int8ConversionError) as error:
        raise VideoError(f"model {path}: {error}") from None
    return Scorer(loaded.model.eval(), loaded.config, loaded.threshold, path)
