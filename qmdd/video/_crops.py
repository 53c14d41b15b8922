"""Face crops as a dataset: their file names carry the video, so scores can be pooled per video."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score

from qmdd.video._faces import FaceFinder
from qmdd.video._frames import VideoError
from qmdd.video._pipeline import face_frames
from qmdd.video._settings import VideoSettings

__all__ = ["crop_name", "video_id_of", "extract_crops", "CropCounts", "video_scores", "video_auc"]

_NAME = re.compile(r"^(?P<video>.+)__f(?P<frame>\d+)$")


def crop_name(video_id: str, frame_index: int) -> str:
    """``<video>__f<frame, 6 digits>.png``: the video a crop came from stays in its name."""
    return f"{video_id}__f{frame_index:06d}.png"


def video_id_of(path: str | Path) -> str:
    """The video id in a crop's file name (the whole stem if it is not a crop name)."""
    match = _NAME.match(Path(path).stem)
    return match.group("video") if match else Path(path).stem


class CropCounts(NamedTuple):
    """Sampled frames of a video and face crops written from them."""

    sampled: int
    saved: int


def extract_crops(video: str | Path, out_dir: str | Path, settings: VideoSettings, *, video_id: str, face_size: int | None = None, finder: FaceFinder | None = None) -> CropCounts:
    """Write the face crop of every sampled frame of ``video`` into ``out_dir`` as PNG
    (lossless, so no new JPEG traces), resized to ``face_size`` squared when given."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sampled = saved = 0
    for index, frame, box in face_frames(video, settings, finder):
        sampled += 1
        if frame is None or box is None:
            continue
        crop = Image.fromarray(frame[box[1] : box[3], box[0] : box[2]])
        if face_size is not None:
            crop = crop.resize((face_size, face_size), Image.BICUBIC)
        target = out_dir / crop_name(video_id, index)
        tmp = target.with_name(f".{target.name}.tmp")
        crop.save(tmp, format="PNG")
        tmp.replace(target)
        saved += 1
    return CropCounts(sampled, saved)


def video_scores(paths: Sequence[str], labels: Sequence[int], scores: Sequence[float]) -> dict[str, tuple[int, float]]:
    """Per video (from the crop names): its label and the mean score of its crops.

    The same file can appear in several sets of a suite (a shared real pool); it counts once.
    """
    seen: dict[str, tuple[str, int, float]] = {}
    for path, label, score in zip(paths, labels, scores):
        seen[str(Path(path).resolve())] = (video_id_of(path), int(label), float(score))
    pooled: dict[tuple[str, int], list[float]] = defaultdict(list)
    for video, label, score in seen.values():
        pooled[(video, label)].append(score)
    videos = [video for video, _ in pooled]
    duplicated = sorted({v for v in videos if videos.count(v) > 1})
    if duplicated:
        raise VideoError(f"video id(s) {duplicated[:3]} hold both real and fake crops; crop names must be unique per video")
    return {video: (label, float(np.mean(values))) for (video, label), values in pooled.items()}


def video_auc(per_video: dict[str, tuple[int, float]]) -> float | None:
    """ROC AUC of the per-video mean scores (None without both real and fake videos)."""
    labels = [label for label, _ in per_video.values()]
    if len(set(labels)) < 2:
        return None
    return float(roc_auc_score(labels, [score for _, score in per_video.values()]))
