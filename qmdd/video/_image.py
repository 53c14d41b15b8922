"""One still image through the same steps as a video frame: face, crop, score, verdict."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from qmdd.data import ImageLoadError, load_rgb
from qmdd.video._faces import Box, FaceFinder
from qmdd.video._frames import VideoReadError
from qmdd.video._pipeline import draw_box
from qmdd.video._scorer import Scorer
from qmdd.video._settings import VideoSettings

__all__ = ["ImageResult", "analyse_image"]


@dataclass(frozen=True)
class ImageResult:
    """``box``: the face scored (None: no face found, the whole image was scored);
    ``annotated``: the image as BGR with the box and score drawn."""

    score: float
    verdict: str
    threshold: float
    box: Box | None
    width: int
    height: int
    annotated: np.ndarray


def analyse_image(path: str | Path, scorer: Scorer, settings: VideoSettings, finder: FaceFinder | None = None) -> ImageResult:
    """Score the largest face of an image, or the whole image when it shows none.

    Raises :class:`VideoReadError` naming the file when it cannot be read as an image.
    """
    try:
        image = load_rgb(path)
    except ImageLoadError as error:
        raise VideoReadError(str(error)) from None
    frame = np.asarray(image)
    box = (finder or FaceFinder(settings)).find(frame)
    crop = image if box is None else Image.fromarray(frame[box[1] : box[3], box[0] : box[2]])
    score = scorer.score([crop])[0]
    threshold = scorer.threshold if settings.threshold is None else settings.threshold
    annotated = draw_box(frame, box, score, threshold)
    return ImageResult(score, "fake" if score > threshold else "real", threshold, box, image.width, image.height, annotated)
