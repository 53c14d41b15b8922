"""Grad-CAM heatmaps of a detector, and the attention shift between two detectors.

Examples::

    python -m qmdd.explain --checkpoint runs/<run>/best.pt photo.png photos/ --out cams/
    python -m qmdd.explain --checkpoint runs/lth/mesonet-fp32/imp/level_00/best.pt \\
        --compare runs/lth/mesonet-fp32/imp/level_07/best.pt some/test/folder --out cams/
    python -m qmdd.explain --checkpoint A.pt --layer layer3 --target real image.png

For each image it writes ``<out>/<image>_m1.png`` (and ``_m2.png`` with ``--compare``):
the image as the detector sees it (the run's test transform: centre crop at
``data.crop_size``) under its Grad-CAM heatmap (red = most evidence for ``--target``).
Dense, pruned and quantized checkpoints all work: they are the same layers. With
``--compare`` it prints the attention shift ||L_1 - L_2||_F per image and its mean
(arXiv 2507.15636), and ``<out>/explain.json`` records everything.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["main", "build_parser"]

# Overlays are enlarged this many times (nearest neighbour): detectors see 64 px crops.
_SCALE = 4


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m qmdd.explain",
        description="Write Grad-CAM heatmap overlays (PNG) of a detector checkpoint; with --compare, measure the attention shift between two.",
        epilog=__doc__.split("Examples::", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="a qmdd checkpoint (.pt): dense, pruned or quantized")
    parser.add_argument("--compare", metavar="CHECKPOINT", help="a second checkpoint: overlays for it too, and the attention shift")
    parser.add_argument("images", nargs="+", help="image files and/or folders (searched recursively)")
    parser.add_argument("--out", default="gradcam", help="folder for the PNG overlays and explain.json (default ./gradcam)")
    parser.add_argument("--layer", help="module name of the target layer (default: the last feature map, e.g. layer4 or features)")
    parser.add_argument("--target", choices=("fake", "real"), default="fake", help="explain the evidence for fake (default) or real")
    parser.add_argument("--batch-size", type=int, default=32, help="images per pass (default 32)")
    parser.add_argument("--limit", type=int, help="use at most this many images (in the order found)")
    return parser


def _batches(images: list[Path], transforms: list, batch_size: int):
    """``(paths, [input batch per model])`` per batch of readable images, and the number
    of unreadable ones (reported, never fatal) as the generator's return value."""
    import numpy as np
    import torch

    from qmdd.data import ImageLoadError, load_rgb

    rng = np.random.default_rng(0)  # the test transform draws nothing; required by the API
    failures = 0
    for start in range(0, len(images), batch_size):
        paths, batches = [], [[] for _ in transforms]
        for path in images[start : start + batch_size]:
            try:
                picture = load_rgb(path)
            except ImageLoadError as error:
                print(f"error: {error}", file=sys.stderr)
                failures += 1
                continue
            paths.append(path)
            for index, transform in enumerate(transforms):
                batches[index].append(transform(picture, rng))
        if paths:
            yield paths, [torch.stack(batch) for batch in batches]
    return failures


def _explain_batch(paths, inputs, models, cams, target: str, out: Path) -> list[dict]:
    """Overlays and the attention shift for one batch; one record (and one printed line) per image."""
    import torch

    from qmdd.detector import fake_probability
    from qmdd.gradcam import attention_shift, overlay, to_uint8_image

    maps = [cam(x, target) for cam, x in zip(cams, inputs)]
    with torch.no_grad():
        probabilities = [fake_probability(model, x) for model, x in zip(models, inputs)]
    shift = attention_shift(maps[0], maps[1]) if len(maps) == 2 else None
    records = []
    for i, path in enumerate(paths):
        record = {"image": str(path), "overlays": [], "fake_probability": [float(p[i]) for p in probabilities]}
        for m, (x, cam_maps) in enumerate(zip(inputs, maps), start=1):
            overlay_path = out / f"{path.stem}_m{m}.png"
            overlay(to_uint8_image(x[i]), cam_maps[i], scale=_SCALE).save(overlay_path)
            record["overlays"].append(str(overlay_path))
        if shift is not None:
            record["attention_shift"] = float(shift[i])
        records.append(record)
        probs = " ".join(f"{p:.3f}" for p in record["fake_probability"])
        extra = f"\tshift {record['attention_shift']:.3f}" if shift is not None else ""
        print(f"{probs}\t{path}{extra}")
    return records


def _summary(args, cams, records: list[dict], map_size: tuple[int, int]) -> dict:
    height, width = map_size
    summary = {
        "checkpoints": [args.checkpoint] + ([args.compare] if args.compare else []),
        "target_layers": [cam.layer for cam in cams],
        "target": args.target,
        "map_size": [int(height), int(width)],
        "images": records,
    }
    shifts = [r["attention_shift"] for r in records if "attention_shift" in r]
    if shifts:
        mean = sum(shifts) / len(shifts)
        summary["mean_attention_shift"] = mean
        # For maps in [0, 1] the norm grows with sqrt(pixels): also give the RMS difference.
        summary["mean_attention_shift_rms"] = mean / math.sqrt(height * width)
        print(
            f"attention shift ||L1 - L2||_F over {len(shifts)} images: mean {mean:.3f} "
            f"({height}x{width} maps; RMS difference {summary['mean_attention_shift_rms']:.4f})"
        )
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from qmdd.checkpoint import CheckpointError
    from qmdd.data import DetectorTransform
    from qmdd.detector import load_detector
    from qmdd.gradcam import GradCAM
    from qmdd.predict import collect_images
    from qmdd.utils import OutputPathError, atomic_write_text, writable_dir

    try:
        writable_dir(args.out)
        detectors = [load_detector(path) for path in [args.checkpoint, *([args.compare] if args.compare else [])]]
        cams = [GradCAM(detector.model, args.layer) for detector in detectors]
    except (CheckpointError, AttributeError, OutputPathError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    images = collect_images(args.images)[: args.limit]
    if not images:
        print("error: no images found in " + ", ".join(args.images), file=sys.stderr)
        return 1
    out = Path(args.out)
    models = [detector.model for detector in detectors]
    batches = _batches(images, [DetectorTransform(detector.config.data, "test") for detector in detectors], args.batch_size)
    records, failures, map_size = [], 0, None
    while True:
        try:
            paths, inputs = next(batches)
        except StopIteration as done:
            failures = done.value
            break
        records += _explain_batch(paths, inputs, models, cams, args.target, out)
        map_size = tuple(inputs[0].shape[-2:])
    if not records:
        print("error: no image could be read", file=sys.stderr)
        return 1
    atomic_write_text(out / "explain.json", json.dumps(_summary(args, cams, records, map_size), indent=2) + "\n")
    print(f"overlays in {out}/ (layer {', '.join(str(c.layer) for c in cams)})")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
