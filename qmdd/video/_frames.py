"""Reading videos and choosing which frames to look at."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from qmdd.video._settings import VideoSettings

__all__ = ["VideoError", "VideoReadError", "VideoInfo", "VIDEO_SUFFIXES", "probe_video", "sample_indices", "read_frames"]

#: Containers the pipeline is tested on (OpenCV's bundled FFmpeg reads them; docs/video.md).
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".webm", ".mkv", ".m4v")


class VideoError(ValueError):
    """A video cannot be analysed as asked (unreadable file, unusable model, bad output)."""


class VideoReadError(VideoError):
    """A file is missing, not a video, corrupt, or has no decodable frame."""


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video (``frame_count`` counted when it says nothing)."""

    path: Path
    frame_count: int
    fps: float
    width: int
    height: int


def _open(path: Path) -> cv2.VideoCapture:
    if not path.exists():
        raise VideoReadError(f"{path}: no such file")
    if path.is_dir():
        raise VideoReadError(f"{path} is a folder, not a video file")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise VideoReadError(f"{path}: cannot be read as a video (corrupt, truncated, or not a video container)")
    return capture


def probe_video(path: str | Path) -> VideoInfo:
    """Frame count, frame rate and size; raises :class:`VideoReadError` naming the file."""
    path = Path(path)
    capture = _open(path)
    try:
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if count <= 0:  # some containers (webm, streams) do not store it: count by decoding
            count = 0
            while capture.grab():
                count += 1
    finally:
        capture.release()
    if count <= 0 or width <= 0 or height <= 0:
        raise VideoReadError(f"{path}: no decodable frame (an empty or corrupt video)")
    return VideoInfo(path, count, fps if np.isfinite(fps) and fps > 0 else 0.0, width, height)


def sample_indices(frame_count: int, settings: VideoSettings) -> list[int]:
    """Sorted frame indices to analyse.

    ``every``: 0, N, 2N, ... below ``frame_count``. ``random``: ``num_frames`` distinct
    indices (all frames when the video is shorter) drawn by NumPy's generator from
    ``seed``, so a rerun picks the same frames. ``max_frames`` then keeps the first ones.
    """
    if frame_count <= 0:
        return []
    if settings.sampling == "every":
        indices = list(range(0, frame_count, settings.every_n))
    else:
        rng = np.random.default_rng(settings.seed)
        chosen = rng.choice(frame_count, size=min(settings.num_frames, frame_count), replace=False)
        indices = sorted(int(i) for i in chosen)
    return indices[: settings.max_frames] if settings.max_frames is not None else indices


def read_frames(path: str | Path, indices: Sequence[int]) -> Iterator[tuple[int, np.ndarray | None]]:
    """``(index, RGB uint8 array)`` for each wanted index, in order, decoding once.

    Frames in between are grabbed, not converted. A wanted index past the last frame that
    decodes (headers can overstate the count) comes back as ``(index, None)``.
    """
    path = Path(path)
    wanted = sorted(set(int(i) for i in indices))
    capture = _open(path)
    try:
        position, ended = 0, False
        for index in wanted:
            while not ended and position < index:
                ended = not capture.grab()
                position += 1
            ok, frame = (False, None) if ended else capture.read()
            position += 1
            ended = ended or not ok
            yield index, (cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if ok else None)
    finally:
        capture.release()
