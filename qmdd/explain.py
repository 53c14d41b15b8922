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


def _load(path: str):
    from qmdd.detector import load_detector

    loaded = load_detector(path)
    model, config = loaded.model, loaded.config
    return model, config


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import numpy as np
    import torch

    from qmdd.data import DetectorTransform, ImageLoadError, load_rgb
    from qmdd.gradcam import GradCAM, attention_shift, overlay, to_uint8_image
    from qmdd.predict import collect_images
    from qmdd.checkpoint import CheckpointError
    from qmdd.utils import atomic_write_text

    try:
        models = [_load(args.checkpoint)] + ([_load(args.compare)] if args.compare else [])
        cams = [GradCAM(model, args.layer) for model, _ in models]
    except (CheckpointError, AttributeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    images = collect_images(args.images)[: args.limit]
    if not images:
        print("error: no images found in " + ", ".join(args.images), file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)  # the test transform draws nothing; required by the API
    transforms = [DetectorTransform(config.data, "test") for _, config in models]
    records, shifts, failures = [], [], 0
    for start in range(0, len(images), args.batch_size):
        batch_paths, batches = [], [[] for _ in models]
        for path in images[start : start + args.batch_size]:
            try:
                picture = load_rgb(path)
            except ImageLoadError as error:
                print(f"error: {error}", file=sys.stderr)
                failures += 1
                continue
            batch_paths.append(path)
            for index, transform in enumerate(transforms):
                batches[index].append(transform(picture, rng))
        if not batch_paths:
            continue
        inputs = [torch.stack(batch) for batch in batches]
        maps = [cam(x, args.target) for cam, x in zip(cams, inputs)]
        with torch.no_grad():
            probabilities = [torch.sigmoid(model(x).reshape(-1)) for (model, _), x in zip(models, inputs)]
        shift = attention_shift(maps[0], maps[1]) if len(maps) == 2 else None
        for i, path in enumerate(batch_paths):
            record = {"image": str(path), "overlays": [], "fake_probability": [float(p[i]) for p in probabilities]}
            for m, (x, cam_maps) in enumerate(zip(inputs, maps), start=1):
                target = out / f"{path.stem}_m{m}.png"
                overlay(to_uint8_image(x[i]), cam_maps[i], scale=_SCALE).save(target)
                record["overlays"].append(str(target))
            if shift is not None:
                value = float(shift[i])
                record["attention_shift"] = value
                shifts.append(value)
            records.append(record)
            probs = " ".join(f"{p:.3f}" for p in record["fake_probability"])
            extra = f"\tshift {record['attention_shift']:.3f}" if shift is not None else ""
            print(f"{probs}\t{path}{extra}")
    if not records:
        print("error: no image could be read", file=sys.stderr)
        return 1
    height, width = maps[0].shape[-2:]
    summary = {
        "checkpoints": [args.checkpoint] + ([args.compare] if args.compare else []),
        "target_layers": [cam.layer for cam in cams],
        "target": args.target,
        "map_size": [int(height), int(width)],
        "images": records,
    }
    if shifts:
        mean = sum(shifts) / len(shifts)
        summary["mean_attention_shift"] = mean
        # For maps in [0, 1] the norm grows with sqrt(pixels): also give the RMS difference.
        summary["mean_attention_shift_rms"] = mean / math.sqrt(height * width)
        print(
            f"attention shift ||L1 - L2||_F over {len(shifts)} images: mean {mean:.3f} "
            f"({height}x{width} maps; RMS difference {summary['mean_attention_shift_rms']:.4f})"
        )
    atomic_write_text(out / "explain.json", json.dumps(summary, indent=2) + "\n")
    print(f"overlays in {out}/ (layer {', '.join(str(c.layer) for c in cams)})")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
