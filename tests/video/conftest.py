"""Test videos made from the shipped photos, and a tiny detector as a checkpoint and a packed file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from face_clips import make_face_clip

from qmdd.checkpoint import save_checkpoint
from qmdd.config import load_config
from qmdd.deploy import save_packed
from qmdd.detector import build_detector
from qmdd.quant import calibrate

CLIP_FRAMES = 24


@pytest.fixture(scope="session")
def face_clip(tmp_path_factory) -> Path:
    return make_face_clip(tmp_path_factory.mktemp("clips") / "astronaut.mp4", frames=CLIP_FRAMES)


@pytest.fixture(scope="session")
def tiny_detector(tmp_path_factory) -> tuple[Path, Path]:
    """A 2-bit cnn5 at 32-pixel crops, calibrated on noise: untrained, so its scores mean
    nothing, but every path from a crop to a verdict can be checked against it."""
    config = load_config(None, ["model.arch=cnn5", "quant.bits=2", "data.crop_size=32"])
    torch.manual_seed(0)
    model = build_detector(config)
    calibrate(model, [torch.randn(8, 3, 32, 32)])
    folder = tmp_path_factory.mktemp("detector")
    save_checkpoint(folder / "best.pt", config=config, model=model.eval(), threshold=0.5)
    save_packed(folder / "model.qmdd", model.eval(), config, threshold=0.5)
    return folder / "best.pt", folder / "model.qmdd"
