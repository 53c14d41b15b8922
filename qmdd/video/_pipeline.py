"""From a video to a verdict: sample frames, find faces, score crops, aggregate, report."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
from PIL import Image

from qmdd.utils import atomic_write_text
from qmdd.video._faces import Box, FaceFinder
from qmdd.video._frames import VideoError, VideoInfo, probe_video, read_frames, sample_indices
from qmdd.video._scorer import Scorer
from qmdd.video._settings import VideoSettings, settings_to_dict

__all__ = ["NO_FACE", "FrameResult", "Verdict", "VideoReport", "aggregate", "face_frames", "analyse_video", "write_report", "draw_box"]

#: Verdict of a video in which no sampled frame shows a face: nothing was scored.
NO_FACE = "no face"


@dataclass(frozen=True)
class FrameResult:
    """One sampled frame: its index, time in seconds (None when the rate is unknown), the
    face box ``[left, top, right, bottom]`` (None: no face found) and the crop's fake
    probability (None when there is no face, or the frame could not be decoded)."""

    index: int
    time: float | None
    box: list[int] | None
    score: float | None
    decoded: bool = True


@dataclass(frozen=True)
class Verdict:
    """``share``: face frames above the threshold over face frames; ``mean``: mean score."""

    verdict: str
    share_above: float | None
    mean_score: float | None
    scored: int


def aggregate(scores: list[float], threshold: float, rule: str, fake_share: float) -> Verdict:
    """The video verdict from its face-frame scores.

    ``rule="share"``: fake when the share of scores above ``threshold`` is at least
    ``fake_share``; ``rule="mean"``: fake when the mean score is above ``threshold``.
    No scores: verdict ``"no face"``.
    """
    if not scores:
        return Verdict(NO_FACE, None, None, 0)
    share = sum(score > threshold for score in scores) / len(scores)
    mean = float(np.mean(scores))
    fake = share >= fake_share if rule == "share" else mean > threshold
    return Verdict("fake" if fake else "real", share, mean, len(scores))


@dataclass
class VideoReport:
    video: str
    model: str
    frame_count: int
    fps: float
    width: int
    height: int
    threshold: float
    verdict: Verdict
    frames: list[FrameResult]
    settings: dict = field(default_factory=dict)

    @property
    def sampled(self) -> int:
        return len(self.frames)

    @property
    def faces_found(self) -> int:
        return sum(f.box is not None for f in self.frames)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["verdict"] = asdict(self.verdict)
        out["counts"] = {
            "sampled": self.sampled,
            "faces_found": self.faces_found,
            "no_face": sum(f.decoded and f.box is None for f in self.frames),
            "undecodable": sum(not f.decoded for f in self.frames),
        }
        out["no_face_frames"] = [f.index for f in self.frames if f.decoded and f.box is None]
        return out


def face_frames(path: str | Path, settings: VideoSettings, finder: FaceFinder | None = None, info: VideoInfo | None = None) -> Iterator[tuple[int, np.ndarray | None, Box | None]]:
    """``(index, RGB frame or None, face box or None)`` for every sampled frame of a video."""
    finder = finder or FaceFinder(settings)
    info = info or probe_video(path)
    for index, frame in read_frames(path, sample_indices(info.frame_count, settings)):
        yield index, frame, (None if frame is None else finder.find(frame))


def draw_box(frame: np.ndarray, box: Box | None, score: float | None, threshold: float) -> np.ndarray:
    """A BGR copy of an RGB frame with the face box and its score drawn (red: above the
    threshold, green: below), or "no face" in the corner."""
    image = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    thickness = max(2, round(min(image.shape[:2]) / 200))
    if box is None:
        cv2.putText(image, "no face", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 200, 255), 2)
        return image
    colour = (0, 0, 230) if score is not None and score > threshold else (0, 190, 0)
    cv2.rectangle(image, box[:2], (box[2] - 1, box[3] - 1), colour, thickness)
    label = "?" if score is None else f"fake {score:.2f}"
    cv2.putText(image, label, (box[0], max(18, box[1] - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.6, colour, 2)
    return image


class _Annotator:
    """Writes annotated sampled frames as JPEGs in a folder and/or as a video (2 fps).

    Each file appears whole or not at all: frames and the video are written under a
    temporary name in the same folder and renamed when complete.
    """

    def __init__(self, frames_dir: Path | None, video_path: Path | None) -> None:
        self.frames_dir, self.video_path, self.writer = frames_dir, video_path, None
        self.partial = None if video_path is None else video_path.with_name(f".{video_path.stem}.partial{video_path.suffix}")
        if frames_dir is not None:
            frames_dir.mkdir(parents=True, exist_ok=True)

    def add(self, index: int, image: np.ndarray) -> None:
        if self.frames_dir is not None:
            target = self.frames_dir / f"frame_{index:06d}.jpg"
            partial = target.with_name(f".{target.stem}.partial.jpg")
            if not cv2.imwrite(str(partial), image):
                raise VideoError(f"cannot write annotated frame {target}")
            os.replace(partial, target)
        if self.video_path is not None:
            if self.writer is None:
                codec = "MJPG" if self.video_path.suffix.lower() == ".avi" else "mp4v"
                self.writer = cv2.VideoWriter(str(self.partial), cv2.VideoWriter_fourcc(*codec), 2.0, (image.shape[1], image.shape[0]))
                if not self.writer.isOpened():
                    raise VideoError(f"cannot write the annotated video {self.video_path} (use .mp4 or .avi)")
            self.writer.write(image)

    def close(self, complete: bool) -> None:
        if self.writer is not None:
            self.writer.release()
            if complete:
                os.replace(self.partial, self.video_path)
            else:
                self.partial.unlink(missing_ok=True)


def analyse_video(path: str | Path, scorer: Scorer, settings: VideoSettings, *, annotated_frames: Path | None = None, annotated_video: Path | None = None, progress: Callable[[int], None] | None = None) -> VideoReport:
    """Score the face of every sampled frame and aggregate them into a verdict.

    Frames are handled ``settings.batch_size`` at a time (read, find, score, draw), so
    memory does not grow with the video. ``progress(n)`` is called with frames done.
    """
    path = Path(path)
    info = probe_video(path)
    threshold = scorer.threshold if settings.threshold is None else settings.threshold
    finder, annotator = FaceFinder(settings), _Annotator(annotated_frames, annotated_video)
    results: list[FrameResult] = []
    batch: list[tuple[int, np.ndarray | None, Box | None]] = []
    complete = False
    try:
        for item in face_frames(path, settings, finder, info):
            batch.append(item)
            if len(batch) == settings.batch_size:
                results.extend(_score_batch(batch, scorer, info.fps, threshold, annotator))
                progress and progress(len(batch))
                batch = []
        if batch:
            results.extend(_score_batch(batch, scorer, info.fps, threshold, annotator))
            progress and progress(len(batch))
        complete = True
    finally:
        annotator.close(complete)
    verdict = aggregate([r.score for r in results if r.score is not None], threshold, settings.rule, settings.fake_share)
    return VideoReport(str(path), str(scorer.source), info.frame_count, info.fps, info.width, info.height, threshold, verdict, results, settings_to_dict(settings))


def _score_batch(batch, scorer: Scorer, fps: float, threshold: float, annotator: _Annotator) -> list[FrameResult]:
    crops = [Image.fromarray(frame[box[1] : box[3], box[0] : box[2]]) for _, frame, box in batch if box is not None]
    scores = iter(scorer.score(crops, batch_size=len(crops) or 1)) if crops else iter(())
    results = []
    for index, frame, box in batch:
        score = next(scores) if box is not None else None
        time = round(index / fps, 4) if fps > 0 else None
        results.append(FrameResult(index, time, None if box is None else list(box), score, frame is not None))
        if frame is not None:
            annotator.add(index, draw_box(frame, box, score, threshold))
    return results


def write_report(report: VideoReport, path: str | Path) -> None:
    """The report as JSON, written atomically (NaN-free: absent values are null)."""
    data = report.to_dict()
    if data["fps"] == 0 or not math.isfinite(data["fps"]):
        data["fps"] = None
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
