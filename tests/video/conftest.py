"""Test videos made from the shipped photos, and a tiny detector as a checkpoint and a packed file."""

from __future__ import annotations

from pathlib import Path

import pytest

from face_clips import CLIP_FRAMES, make_face_clip, make_tiny_detector


@pytest.fixture(scope="session")
def face_clip(tmp_path_factory) -> Path:
    return make_face_clip(tmp_path_factory.mktemp("clips") / "astronaut.mp4", frames=CLIP_FRAMES)


@pytest.fixture(scope="session")
def tiny_detector(tmp_path_factory) -> tuple[Path, Path]:
    return make_tiny_detector(tmp_path_factory.mktemp("detector"))
