"""Classify images with an exported detector: one fake probability per image.

Examples::

    python -m qmdd.predict --model model.qmdd photo.jpg other.png
    python -m qmdd.predict --model model.qmdd some/folder --batch-size 32
    python -m qmdd.predict --model model.qmdd photo.jpg --engine fake-quant   # exact reference
    python -m qmdd.predict --model model.onnx photo.jpg                       # ONNX Runtime

Output: one ``<probability>\\t<verdict>\\t<path>`` line per image, in the order given
(folders: sorted, recursive): the probability that it is fake (the sigmoid of the logit)
and ``fake`` or ``real``, by the decision threshold stored in the file (fitted on the
training run's validation set; ``--threshold`` overrides it). Images go through the run's
test transform (centre crop at ``data.crop_size``).

An image that cannot be read, decoded or transformed (corrupt, a link that cannot be
followed, over ``qmdd.data.folder.MAX_IMAGE_PIXELS`` or ``MAX_ASPECT_RATIO``) keeps its
line, as ``nan\\tunreadable\\t<path>``, with the reason on standard error; the other
images are still scored. Exit status: 0 when every image was scored, 1 when any was
unreadable (or the model could not be loaded), 2 for bad arguments.

Engines: ``int8`` (default for ``.qmdd`` files and checkpoints) converts the low-bit model
to PyTorch's x86 int8 backend, with the weight codes as int8 weights and the input
quantizers' grids as activation scales (see docs/deployment.md); ``fake-quant`` runs the
float fake-quant model (exact, slower); ``onnxruntime`` (the only engine, and the default,
for ``.onnx`` files from ``python -m qmdd.export --format onnx``) runs ONNX Runtime.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Sequence

from qmdd.utils import positive_int

__all__ = ["main", "build_parser", "collect_images"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m qmdd.predict",
        description="Print the probability that each image is fake, using an exported .qmdd or .onnx detector (or a checkpoint).",
        epilog=__doc__.split("Examples::", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="a QMDD packed model (.qmdd) or ONNX model (.onnx) from python -m qmdd.export, or a checkpoint (.pt)")
    parser.add_argument("images", nargs="+", help="image files and/or folders (searched recursively)")
    parser.add_argument("--engine", choices=("int8", "fake-quant", "onnxruntime"), help="int8 (fast; default for .qmdd and .pt), fake-quant (exact reference) or onnxruntime (default and only engine for .onnx)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--threads", type=positive_int, help="CPU threads for torch, >= 1 (default: torch's choice)")
    parser.add_argument("--threshold", type=float, help="call an image fake when its probability is above this (default: the threshold stored in the file, fitted on validation)")
    return parser


def collect_images(paths: Sequence[str]) -> list[Path]:
    """Files as given, folders expanded to their images (sorted, recursive).

    Links in a folder that cannot be followed (a loop, a missing target) are kept, so they
    are reported as unreadable rather than silently left out.
    """
    from qmdd.data import is_image_entry

    found: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if is_image_entry(p)))
        else:
            found.append(path)
    return found


def _score_batch(model, transform, paths: Sequence[Path], threshold: float) -> int:
    """Print one line per path, in order; returns how many were unreadable."""
    import numpy as np
    import torch

    from qmdd.data import ImageLoadError, load_transformed

    rng = np.random.default_rng(0)  # the test transform draws nothing; required by the API
    tensors: dict[int, torch.Tensor] = {}
    for position, path in enumerate(paths):
        try:
            tensors[position] = load_transformed(path, transform, rng)
        except ImageLoadError as error:  # any error of this image, transform included
            print(f"error: {error}", file=sys.stderr)
    probabilities: dict[int, float] = {}
    if tensors:
        with torch.inference_mode():
            scores = torch.sigmoid(model(torch.stack(list(tensors.values()))).reshape(-1))
        probabilities = dict(zip(tensors, scores.tolist()))
    for position, path in enumerate(paths):
        if position in probabilities:
            probability = probabilities[position]
            print(f"{probability:.6f}\t{'fake' if probability > threshold else 'real'}\t{path}")
        else:
            print(f"nan\tunreadable\t{path}")
    return len(paths) - len(probabilities)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # torch.ao announces the deprecation of its quantized tensors on every conversion; the
    # int8 path is pinned to what it supports (docs/deployment.md), so a user need not see it.
    warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions.*deprecated", category=UserWarning)
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        print("error: --threshold must be a probability in [0, 1]", file=sys.stderr)
        return 2
    import torch

    from qmdd.checkpoint import CheckpointError
    from qmdd.data import DetectorTransform
    from qmdd.deploy import Int8ConversionError, OnnxFormatError, PackedFormatError, open_deployed

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        loaded = open_deployed(args.model, args.engine, args.threads)
    except (PackedFormatError, OnnxFormatError, Int8ConversionError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    model, config = loaded.model, loaded.config
    threshold = loaded.threshold if args.threshold is None else args.threshold
    images = collect_images(args.images)
    if not images:
        print("error: no images found in " + ", ".join(args.images), file=sys.stderr)
        return 1
    transform = DetectorTransform(config.data, "test")
    failures = 0
    for start in range(0, len(images), args.batch_size):
        failures += _score_batch(model, transform, images[start : start + args.batch_size], threshold)
    if failures:
        print(f"error: {failures} of {len(images)} image(s) unreadable (their lines say 'unreadable')", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
