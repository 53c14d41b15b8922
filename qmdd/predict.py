"""Classify images with an exported detector: one fake probability per image.

Examples::

    python -m qmdd.predict --model model.qmdd photo.jpg other.png
    python -m qmdd.predict --model model.qmdd some/folder --batch-size 32
    python -m qmdd.predict --model model.qmdd photo.jpg --engine fake-quant   # exact reference

Output: one ``<probability>\\t<verdict>\\t<path>`` line per image, in the order given
(folders: sorted, recursive): the probability that it is fake (the sigmoid of the logit)
and ``fake`` or ``real``, by the decision threshold stored in the file (fitted on the
training run's validation set; ``--threshold`` overrides it). Images go through the run's
test transform (centre crop at ``data.crop_size``).

Engines: ``int8`` (default) converts the low-bit model to PyTorch's x86 int8 backend, with
the LSQ codes as int8 weights and the LSQ steps as activation scales (see
docs/deployment.md); ``fake-quant`` runs the float fake-quant model (exact, slower).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["main", "build_parser", "collect_images"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m qmdd.predict",
        description="Print the probability that each image is fake, using an exported .qmdd detector.",
        epilog=__doc__.split("Examples::", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="a QMDD packed model (.qmdd) from python -m qmdd.export")
    parser.add_argument("images", nargs="+", help="image files and/or folders (searched recursively)")
    parser.add_argument("--engine", choices=("int8", "fake-quant"), default="int8", help="int8 (fast, default) or fake-quant (exact reference)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--threshold", type=float, help="call an image fake when its probability is above this (default: the threshold stored in the file, fitted on validation)")
    return parser


def collect_images(paths: Sequence[str]) -> list[Path]:
    """Files as given, folders expanded to their images (sorted, recursive)."""
    from qmdd.data import IMAGE_EXTENSIONS

    found: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS))
        else:
            found.append(path)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        print("error: --batch-size must be >= 1", file=sys.stderr)
        return 2
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        print("error: --threshold must be a probability in [0, 1]", file=sys.stderr)
        return 2
    import numpy as np
    import torch

    from qmdd.data import DetectorTransform, ImageLoadError, load_rgb
    from qmdd.deploy import Int8ConversionError, PackedFormatError, calibration_images, load_packed, to_int8

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        loaded = load_packed(args.model)
        model, config = loaded.model, loaded.config
        threshold = loaded.threshold if args.threshold is None else args.threshold
        if args.engine == "int8":
            model = to_int8(model, calibration_images(config.data))
    except (PackedFormatError, Int8ConversionError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    images = collect_images(args.images)
    if not images:
        print("error: no images found in " + ", ".join(args.images), file=sys.stderr)
        return 1
    transform = DetectorTransform(config.data, "test")
    rng = np.random.default_rng(0)  # the test transform draws nothing; required by the API
    failures = 0
    for start in range(0, len(images), args.batch_size):
        tensors, paths = [], []
        for path in images[start : start + args.batch_size]:
            try:
                tensors.append(transform(load_rgb(path), rng))
                paths.append(path)
            except ImageLoadError as error:
                print(f"error: {error}", file=sys.stderr)
                failures += 1
        if not tensors:
            continue
        with torch.inference_mode():
            probabilities = torch.sigmoid(model(torch.stack(tensors)).reshape(-1))
        for path, probability in zip(paths, probabilities.tolist()):
            print(f"{probability:.6f}\t{'fake' if probability > threshold else 'real'}\t{path}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
