"""The face finders of qmdd.video compared: found faces, box accuracy, false faces, time.

Every frontal-face Haar cascade shipped in opencv-python-headless is run on frames made
from the shipped astronaut photo (one face, whose box is known), panned and scaled over a
480 x 360 canvas as the tests' clips are, in three conditions: as is, dimmed with noise
(brightness x 0.5, Gaussian noise sigma 8), and turned 15 degrees in the image plane. A
face counts as found when the box (margin 0) overlaps the true box with IoU > 0.5. False
faces: of the 17 shipped photos without a person (two dogs and a cat among them), how many
get a face. Time: median CPU milliseconds (process time, so other work on a loaded machine does not count) per 480 x 360 frame, one thread.

    python benchmarks/face_finders.py --frames 24 --threads 1
    python benchmarks/face_finders.py --frames 24 --threads 1 --scale-factor 1.2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "video"))

from face_clips import ASTRONAUT_FACE, PHOTOS, clip_geometry, iou  # noqa: E402

from qmdd.data import load_rgb  # noqa: E402
from qmdd.video import FACE_FINDERS, FaceFinder, load_settings  # noqa: E402

SIZE = (480, 360)


def _frame(photo: Image.Image, index: int, frames: int, condition: str, rng: np.random.Generator):
    scale, left, top = clip_geometry(index, frames, SIZE)
    side = int(round(512 * scale))
    canvas = Image.new("RGB", SIZE, (96, 96, 96))
    canvas.paste(photo.resize((side, side), Image.BILINEAR), (left, top))
    x0, y0, x1, y1 = (origin + v * scale for origin, v in zip((left, top, left, top), ASTRONAUT_FACE))
    truth = (x0, y0, x1, y1)
    if condition == "rotated":
        centre = (SIZE[0] / 2, SIZE[1] / 2)
        canvas = canvas.rotate(15, resample=Image.BILINEAR, center=centre, fillcolor=(96, 96, 96))
        angle = np.deg2rad(15)  # PIL turns counter-clockwise; y grows downwards
        cx, cy = (x0 + x1) / 2 - centre[0], (y0 + y1) / 2 - centre[1]
        rx, ry = cx * np.cos(angle) + cy * np.sin(angle), -cx * np.sin(angle) + cy * np.cos(angle)
        half = (x1 - x0) / 2
        truth = (rx + centre[0] - half, ry + centre[1] - half, rx + centre[0] + half, ry + centre[1] + half)
    array = np.asarray(canvas).astype(np.float64)
    if condition == "dim_noisy":
        array = array * 0.5 + rng.normal(0, 8, array.shape)
    return np.clip(array, 0, 255).astype(np.uint8), truth


def _measure(finder: FaceFinder, frames: list, photos: list) -> dict:
    found, overlaps, times = 0, [], []
    for frame, truth in frames:
        start = time.process_time()
        box = finder.find(frame)
        times.append(1000 * (time.process_time() - start))
        if box is not None and iou(box, truth) > 0.5:
            found += 1
            overlaps.append(iou(box, truth))
    false_faces = sum(finder.find(photo) is not None for photo in photos)
    return {"found": found / len(frames), "iou": statistics.mean(overlaps) if overlaps else float("nan"), "false": false_faces, "ms": statistics.median(times)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--scale-factor", type=float, default=1.1, help="the cascades' pyramid step (qmdd.video's scale_factor)")
    args = parser.parse_args()
    cv2.setNumThreads(args.threads)
    rng = np.random.default_rng(0)
    astronaut = load_rgb(PHOTOS / "astronaut.jpg").resize((512, 512))
    photos = [np.asarray(load_rgb(p)) for p in sorted(PHOTOS.glob("*.jpg")) if p.name != "astronaut.jpg"]
    conditions = ("plain", "dim_noisy", "rotated")
    clips = {c: [_frame(astronaut, i, args.frames, c, rng) for i in range(args.frames)] for c in conditions}
    print(f"{len(photos)} photos without a person; {args.frames} frames per condition; found = IoU > 0.5 with the true box")
    print("| finder | " + " | ".join(f"{c}: found / IoU" for c in conditions) + " | false faces | ms/frame (plain) |")
    print("|---|" + "---:|" * (len(conditions) + 2))
    for name in FACE_FINDERS:
        finder = FaceFinder(load_settings(None, [f"face_finder={name}", "margin=0", f"scale_factor={args.scale_factor}"]))
        results = {c: _measure(finder, clips[c], photos if c == "plain" else []) for c in conditions}
        cells = [f"{100 * r['found']:.0f} % / {r['iou']:.2f}" for r in results.values()]
        print(f"| {name} | " + " | ".join(cells) + f" | {results['plain']['false']} / {len(photos)} | {results['plain']['ms']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
