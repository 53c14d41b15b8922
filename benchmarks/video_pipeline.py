"""Where the time of python -m qmdd.video goes: decoding, face finding, scoring.

A clip made from the shipped astronaut photo (as the tests make them) is read frame by
frame; each stage is timed on its own, in CPU milliseconds per frame (process time: other work on a loaded machine does not count), for a W2A2 ResNet-18 at
224 pixels (untrained: speed does not depend on the weights) with the fake-quant engine
and the int8 engine, one CPU thread. The face finder is the default (haar_alt2).

    python benchmarks/video_pipeline.py --frames 48 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "video"))

from face_clips import make_face_clip  # noqa: E402

from qmdd.checkpoint import save_checkpoint  # noqa: E402
from qmdd.config import load_config  # noqa: E402
from qmdd.deploy import calibration_images  # noqa: E402
from qmdd.detector import build_detector  # noqa: E402
from qmdd.quant import calibrate  # noqa: E402
from qmdd.video import FaceFinder, load_scorer, load_settings, read_frames  # noqa: E402


def _checkpoint(folder: Path) -> Path:
    config = load_config(None, ["model.arch=resnet18", "model.pretrained=false", "quant.bits=2", "data.crop_size=224"])
    torch.manual_seed(0)
    model = build_detector(config, pretrained=False)
    calibrate(model, calibration_images(config.data, count=8))
    save_checkpoint(folder / "best.pt", config=config, model=model.eval(), threshold=0.5)
    return folder / "best.pt"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--width", type=int, default=480)
    parser.add_argument("--height", type=int, default=360)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    folder = Path(tempfile.mkdtemp(prefix="qmdd-video-bench-"))
    clip = make_face_clip(folder / "clip.mp4", frames=args.frames, size=(args.width, args.height))
    start = time.process_time()
    frames = [frame for _, frame in read_frames(clip, range(args.frames))]
    decode_ms = 1000 * (time.process_time() - start) / args.frames
    finder = FaceFinder(load_settings())
    find_times, crops = [], []
    for frame in frames:
        start = time.process_time()
        box = finder.find(frame)
        find_times.append(1000 * (time.process_time() - start))
        if box is not None:
            crops.append(Image.fromarray(frame[box[1] : box[3], box[0] : box[2]]))
    print(f"{args.width}x{args.height}, {args.frames} frames, {len(crops)} faces, {args.threads} thread(s)")
    print("| stage | ms per frame |\n|---|---:|")
    print(f"| decode (OpenCV, mp4v) | {decode_ms:.1f} |")
    print(f"| find the face (haar_alt2) | {statistics.median(find_times):.1f} |")
    checkpoint = _checkpoint(folder)
    for engine in ("fake-quant", "int8"):
        scorer = load_scorer(checkpoint, engine)
        scorer.score(crops[:4], batch_size=4)  # warm-up
        start = time.process_time()
        scorer.score(crops, batch_size=16)
        print(f"| score the crop: ResNet-18 W2A2, {engine}, batches of 16 | {1000 * (time.process_time() - start) / len(crops):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
