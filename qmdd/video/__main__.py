"""Say whether videos of a person are deepfakes: one verdict per video, one score per face.

Examples::

    python -m qmdd.video --model runs/<run>/best.pt clip.mp4 --out video_reports
    python -m qmdd.video --model model.qmdd --engine int8 *.mp4 --out reports --annotate both
    python -m qmdd.video --model best.pt clip.mov --set sampling=random --set num_frames=10 --set seed=1
    python -m qmdd.video --model best.pt clip.webm --settings configs/video.yaml --set rule=mean
    python -m qmdd.video --list-settings

For each video: sample frames (every N-th, or K random ones with a seed), find the largest
frontal face (OpenCV Haar cascade), grow its box by a margin and clip it to the frame,
score the crop with the detector (through the run's test transform, in batches), and
aggregate: with rule=share the video is fake when at least `fake_share` of its face
frames score above the threshold; with rule=mean when the mean score does. Frames without
a face are counted and listed in the report, not scored.

Writes OUT/<video stem>.json (per frame: index, time, box, score; counts; verdict; the
settings) and, with --annotate, OUT/<stem>_frames/*.jpg and/or OUT/<stem>_annotated.mp4
(the sampled frames at 2 fps, boxes red above the threshold, green below). Prints one
line per video: verdict, share above threshold, mean score, faces found / sampled.
Exit status: 0 when every video was analysed, 1 when any could not be (or the model or
--out is unusable), 2 for bad arguments or settings. docs/video.md.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from qmdd.utils import OutputPathError, positive_int
from qmdd.video import ENGINES, VideoError, VideoSettingsError, describe_settings, load_settings
from qmdd.video._run import ANNOTATE, VideoJob, run_videos


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m qmdd.video",
        description="Score the faces in videos with a qmdd detector and give each video a verdict (real or fake).",
        epilog=__doc__.split("Examples::", 1)[1] + "\nSettings (--set KEY=VALUE, or a flat YAML file with --settings):\n" + describe_settings(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("videos", nargs="*", help="video files (mp4, avi, mov, webm, mkv)")
    parser.add_argument("--model", help="a training checkpoint (.pt) or a packed model (.qmdd, from python -m qmdd.export)")
    parser.add_argument("--out", default="video_reports", help="folder for the reports (default: video_reports)")
    parser.add_argument("--settings", help="a YAML file of video settings (keys: see below)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one setting, e.g. --set every_n=15 (repeatable)")
    parser.add_argument("--engine", choices=ENGINES, default="fake-quant", help="fake-quant (exact, default), int8 (fast x86 CPU path) or onnxruntime (an .onnx model; chosen by itself for .onnx files)")
    parser.add_argument("--annotate", choices=ANNOTATE, default="none", help="also write the sampled frames with boxes and scores: as JPEGs, as a video, or both")
    parser.add_argument("--threads", type=positive_int, help="CPU threads for torch, >= 1 (default: torch's choice)")
    parser.add_argument("--list-settings", action="store_true", help="print every setting with its default and meaning, then exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_settings:
        print(describe_settings())
        return 0
    if not args.videos or not args.model:
        parser.error("give --model and at least one video")
    try:
        settings = load_settings(args.settings, args.set)
    except VideoSettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        reports, errors = run_videos(VideoJob(tuple(args.videos), args.model, args.out, settings, args.engine, args.annotate))
    except (VideoError, OutputPathError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for report in reports:
        v = report.verdict
        share = "-" if v.share_above is None else f"{v.share_above:.2f}"
        mean = "-" if v.mean_score is None else f"{v.mean_score:.3f}"
        print(f"{v.verdict}\tshare_above={share}\tmean={mean}\tfaces={report.faces_found}/{report.sampled}\t{report.video}")
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
