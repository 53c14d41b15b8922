"""Short test videos made from the photos qmdd ships: the astronaut photo (one face) panned
and scaled over a canvas, so face finding has a known answer (import as ``face_clips``)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from qmdd.data import load_rgb

PHOTOS = Path(__file__).resolve().parents[2] / "qmdd" / "data" / "assets" / "photos"
#: The face in astronaut.jpg (512 x 512), (left, top, right, bottom), measured once by eye
#: on the photo: the face from hairline to chin, ear to ear.
ASTRONAUT_FACE = (176, 64, 273, 162)
#: Frames of the session's test clip (tests/video/conftest.py).
CLIP_FRAMES = 24
CODECS = {".mp4": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "XVID", ".webm": "VP80"}


def clip_geometry(frame: int, frames: int, size: tuple[int, int]) -> tuple[float, int, int]:
    """Scale and top-left position of the photo in ``frame``: it grows from 0.55 to 0.75
    of its size while it pans from left to right."""
    t = frame / max(1, frames - 1)
    scale = 0.55 + 0.2 * t
    side = 512 * scale
    left = int(round((size[0] - side) * (0.1 + 0.8 * t)))
    top = int(round((size[1] - side) * 0.5))
    return scale, left, top


def expected_face(frame: int, frames: int, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """Where the astronaut's face lies in ``frame`` of a :func:`make_face_clip` video."""
    scale, left, top = clip_geometry(frame, frames, size)
    x0, y0, x1, y1 = ASTRONAUT_FACE
    return left + x0 * scale, top + y0 * scale, left + x1 * scale, top + y1 * scale


def _writer(path: Path, fps: float, size: tuple[int, int]) -> cv2.VideoWriter:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*CODECS[path.suffix.lower()]), fps, size)
    assert writer.isOpened(), f"OpenCV cannot write {path.suffix} here"
    return writer


def make_face_clip(path: Path, *, frames: int = 36, fps: float = 12.0, size: tuple[int, int] = (480, 360), photo: str = "astronaut.jpg") -> Path:
    """A ``frames``-frame video of ``photo`` panned and scaled over a grey canvas."""
    source = load_rgb(PHOTOS / photo).resize((512, 512))
    writer = _writer(path, fps, size)
    for index in range(frames):
        scale, left, top = clip_geometry(index, frames, size)
        canvas = Image.new("RGB", size, (96, 96, 96))
        side = int(round(512 * scale))
        canvas.paste(source.resize((side, side), Image.BILINEAR), (left, top))
        writer.write(cv2.cvtColor(np.asarray(canvas), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def iou(a, b) -> float:
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def make_tiny_detector(folder: Path) -> tuple[Path, Path]:
    """A 2-bit cnn5 at 32-pixel crops, calibrated on noise, as ``best.pt`` and ``model.qmdd``:
    untrained, so its scores mean nothing, but every path from a crop to a verdict can be
    checked against it."""
    import torch

    from qmdd.checkpoint import save_checkpoint
    from qmdd.config import load_config
    from qmdd.deploy import save_packed
    from qmdd.detector import build_detector
    from qmdd.quant import calibrate

    config = load_config(None, ["model.arch=cnn5", "quant.bits=2", "data.crop_size=32"])
    torch.manual_seed(0)
    model = build_detector(config)
    calibrate(model, [torch.randn(8, 3, 32, 32)])
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folder / "best.pt", config=config, model=model.eval(), threshold=0.5)
    save_packed(folder / "model.qmdd", model.eval(), config, threshold=0.5)
    return folder / "best.pt", folder / "model.qmdd"
