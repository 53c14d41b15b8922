"""Export a trained detector as a QMDD packed model (``.qmdd``) or an ONNX model (``.onnx``).

Examples::

    python -m qmdd.export --checkpoint runs/<run>/best.pt --out model.qmdd
    python -m qmdd.export --checkpoint runs/<run>/best.pt --out model.onnx --format onnx
    python -m qmdd.predict --model model.qmdd photo.jpg          # then run either
    python -m qmdd.predict --model model.onnx photo.jpg

``qmdd`` (default): each quantized weight as its b-bit integer code (2 bits: 4 per byte;
3 bits: a bitstream at exactly 3 bits per weight) with its per-channel scales, for every
quantizer family (LSQ, N2UQ, SLR), every other tensor as little-endian float32, and the
resolved config; it loads back (``qmdd.deploy.load_packed``) into a model whose outputs
equal the checkpoint's. ``onnx``: the int8 model as a QDQ ONNX graph (int8 weights,
QuantizeLinear/DequantizeLinear around the integer ops, the input filter included) with
the config and decision threshold as metadata, for ONNX Runtime (``--onnx-activations
float``: the fake-quant model's own float graph with integer weights instead); needs the ``onnx`` extra
(``pip install 'qmdd[onnx]'``). Layout and measurements: docs/deployment.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from typing import Sequence

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m qmdd.export",
        description="Write a checkpoint's detector as a QMDD packed model (.qmdd) or a QDQ ONNX model (.onnx) and report its size against FP32.",
        epilog=__doc__.split("Examples::", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="a qmdd checkpoint (.pt), e.g. runs/<run>/best.pt")
    parser.add_argument("--out", required=True, help="output file, conventionally ending in .qmdd (or .onnx with --format onnx)")
    parser.add_argument("--format", choices=("qmdd", "onnx"), default="qmdd", help="qmdd: the packed model (default); onnx: a QDQ ONNX model for ONNX Runtime")
    parser.add_argument("--onnx-weights", choices=("int8", "int4"), default="int8", help="with --format onnx: int8 weights (opset 13, fused integer convs in ONNX Runtime; default) or int4 (opset 21, smaller file, slower in ONNX Runtime)")
    parser.add_argument(
        "--onnx-activations",
        choices=("int8", "float"),
        default="int8",
        help="with --format onnx: int8 (the int8 model's QDQ graph: integer convs, fastest; default) or float (the fake-quant model in float ops with integer weights: "
        "its outputs up to float rounding, at float speed; the form for SLR, whose log-spaced levels the int8 graph approximates)",
    )
    return parser


def fp32_state_dict_bytes(arch: str, input_filter: str | None = None) -> int:
    """Size of ``torch.save`` of the same architecture's FP32 state dict, in bytes."""
    import torch

    from qmdd.models import create_model

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "fp32.pt")
        torch.save(create_model(arch, input_filter=input_filter).state_dict(), path)
        return os.path.getsize(path)


def _write(args: argparse.Namespace):
    """Load the checkpoint and write the chosen format: ``(loaded detector, stats)``."""
    from qmdd.deploy import calibration_images, export_onnx, save_packed
    from qmdd.detector import load_detector
    from qmdd.utils import writable_file

    writable_file(args.out)
    loaded = load_detector(args.checkpoint)
    if args.format == "onnx":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao's deprecation of quantized tensors
            return loaded, export_onnx(args.out, loaded.model, loaded.config, calibration_images(loaded.config.data), loaded.threshold, args.onnx_weights, args.onnx_activations)
    return loaded, save_packed(args.out, loaded.model, loaded.config, threshold=loaded.threshold)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from qmdd.checkpoint import CheckpointError
    from qmdd.deploy import FILE_SUFFIX, Int8ConversionError, OnnxFormatError, PackedFormatError
    from qmdd.utils import OutputPathError

    try:
        loaded, stats = _write(args)
    except (CheckpointError, PackedFormatError, OnnxFormatError, Int8ConversionError, OutputPathError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # the disk filled while writing: the atomic write left nothing behind
        print(f"error: cannot write {args.out}: {error.strerror or error}", file=sys.stderr)
        return 1
    config = loaded.config
    suffix = ".onnx" if args.format == "onnx" else FILE_SUFFIX
    if not args.out.endswith(suffix):
        print(f"note: {args.out} does not end in {suffix}", file=sys.stderr)
    fp32 = fp32_state_dict_bytes(config.model.arch, config.model.input_filter)
    if args.format == "onnx":
        print(f"wrote {args.out}: {stats.file_bytes / 1e6:.3f} MB ONNX, opset {stats.opset} ({config.model.arch} {config.quant.tag}, decision threshold {loaded.threshold:.3f})")
        print(f"  {stats.operators.get('QuantizeLinear', 0)} QuantizeLinear, {stats.operators.get('DequantizeLinear', 0)} DequantizeLinear, {stats.operators.get('Conv', 0)} Conv")
        print(f"FP32 state_dict file: {fp32 / 1e6:.3f} MB -> {fp32 / stats.file_bytes:.2f}x smaller")
        return 0
    print(f"wrote {args.out}: {stats.file_bytes / 1e6:.3f} MB ({config.model.arch} {config.quant.tag}, decision threshold {loaded.threshold:.3f})")
    for encoding, size in sorted(stats.bytes_by_encoding.items()):
        print(f"  {encoding:<18}{size / 1e6:10.3f} MB")
    print(f"  {'header (JSON)':<18}{stats.header_bytes / 1e6:10.3f} MB")
    print(f"FP32 state_dict file: {fp32 / 1e6:.3f} MB -> {fp32 / stats.file_bytes:.2f}x smaller")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
