"""``python -m qmdd.video``'s one call: analyse several videos with one detector, write reports."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from qmdd.utils import writable_dir
from qmdd.video._frames import VideoError, probe_video, sample_indices
from qmdd.video._pipeline import VideoReport, analyse_video, write_report
from qmdd.video._scorer import load_scorer
from qmdd.video._settings import VideoSettings

__all__ = ["VideoJob", "ANNOTATE", "run_videos", "output_stems"]

#: What ``--annotate`` writes next to each report.
ANNOTATE = ("none", "frames", "video", "both")


@dataclass(frozen=True)
class VideoJob:
    videos: tuple[str, ...]
    model: str
    out: str
    settings: VideoSettings
    engine: str = "fake-quant"
    annotate: str = "none"
    progress: bool | None = None  # None: only on a terminal


def output_stems(videos: Sequence[str]) -> list[str]:
    """One report name per video: its file stem, with ``-2``, ``-3``... for repeated stems."""
    stems, seen = [], {}
    for video in videos:
        stem = Path(video).stem or "video"
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return stems


def _one(job: VideoJob, scorer, video: str, stem: str, out: Path) -> VideoReport:
    frames_dir = out / f"{stem}_frames" if job.annotate in ("frames", "both") else None
    video_path = out / f"{stem}_annotated.mp4" if job.annotate in ("video", "both") else None
    total = len(sample_indices(probe_video(video).frame_count, job.settings))
    disable = not sys.stderr.isatty() if job.progress is None else not job.progress
    with tqdm(total=total, desc=Path(video).name, unit="frame", disable=disable, leave=False) as bar:
        report = analyse_video(video, scorer, job.settings, annotated_frames=frames_dir, annotated_video=video_path, progress=bar.update)
    write_report(report, out / f"{stem}.json")
    return report


def run_videos(job: VideoJob) -> tuple[list[VideoReport], list[str]]:
    """Analyse every video; returns the reports and one error line per video that failed.

    A video that cannot be read costs its own line, not the others' reports. A model or
    output folder that cannot be used raises before any video is read.
    """
    out = writable_dir(job.out, "--out")
    scorer = load_scorer(job.model, job.engine)
    reports, errors = [], []
    for video, stem in zip(job.videos, output_stems(job.videos)):
        try:
            reports.append(_one(job, scorer, video, stem, out))
        except VideoError as error:
            errors.append(str(error))
    return reports, errors
