"""Finding the face in a frame: OpenCV's Haar cascades, the largest face, a grown and clipped box."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from qmdd.video._frames import VideoError
from qmdd.video._settings import VideoSettings

__all__ = ["Box", "FaceFinder", "largest_face", "expand_box", "cascade_path"]

#: ``(left, top, right, bottom)`` in pixels, right and bottom exclusive.
Box = tuple[int, int, int, int]

_CASCADE_FILES = {
    "haar_default": "haarcascade_frontalface_default.xml",
    "haar_alt": "haarcascade_frontalface_alt.xml",
    "haar_alt2": "haarcascade_frontalface_alt2.xml",
    "haar_alt_tree": "haarcascade_frontalface_alt_tree.xml",
}


def cascade_path(name: str) -> Path:
    """The cascade file shipped inside the opencv-python(-headless) wheel."""
    return Path(cv2.data.haarcascades) / _CASCADE_FILES[name]


def largest_face(detections: np.ndarray | list) -> tuple[int, int, int, int] | None:
    """The ``(x, y, w, h)`` detection of largest area (the first of equals), or None."""
    best, best_area = None, -1
    for x, y, w, h in detections:
        if w * h > best_area:
            best, best_area = (int(x), int(y), int(w), int(h)), w * h
    return best


def expand_box(face: tuple[int, int, int, int], margin: float, width: int, height: int) -> Box:
    """Grow ``(x, y, w, h)`` by ``margin`` x its width (height) on the left and right (top
    and bottom), round to pixels, and clip to a ``width`` x ``height`` frame.

    With margin 0.15 the box is 1.3 times the detection, the crop FaceForensics++ uses
    (Rossler et al., ICCV 2019). A box at the frame edge is cut there, not shifted, so the
    face keeps its place in the crop.
    """
    x, y, w, h = face
    left = max(0, int(round(x - margin * w)))
    top = max(0, int(round(y - margin * h)))
    right = min(width, int(round(x + w + margin * w)))
    bottom = min(height, int(round(y + h + margin * h)))
    return left, top, right, bottom


class FaceFinder:
    """The largest frontal face of an RGB frame, as a grown, clipped box (or None)."""

    def __init__(self, settings: VideoSettings) -> None:
        path = cascade_path(settings.face_finder)
        self.cascade = cv2.CascadeClassifier(str(path))
        if self.cascade.empty():
            raise VideoError(f"face finder {settings.face_finder}: cannot load {path} (is opencv-python-headless installed? pip install 'qmdd[video]')")
        self.settings = settings

    def find(self, frame: np.ndarray) -> Box | None:
        s = self.settings
        gray = cv2.equalizeHist(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY))  # evens out lighting, as the cascades were trained
        detections = self.cascade.detectMultiScale(gray, scaleFactor=s.scale_factor, minNeighbors=s.min_neighbors, minSize=(s.min_face, s.min_face))
        face = largest_face(detections)
        return None if face is None else expand_box(face, s.margin, frame.shape[1], frame.shape[0])
