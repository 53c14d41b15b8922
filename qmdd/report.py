"""Count a detector's cost: params, MACs, BOPs, FLOPs, OPs and storage, per layer and in total.

Examples::

    python -m qmdd.report --checkpoint runs/<run>/best.pt          # at the run's crop size
    python -m qmdd.report --checkpoint runs/<run>/best.pt --input-size 224 --json cost.json
    python -m qmdd.report --arch resnet50 --bits 2 --input-size 224  # no checkpoint needed
    python -m qmdd.report --arch mobilenet_v2 --bits 3 --set quant.first_layer_bits=8

Conventions (Bi-Real Net, Liu et al. ECCV 2018; ReActNet, Liu et al. ECCV 2020; docs/deployment.md): BOPs = MACs * b_w * b_a for low-bit
layers, FLOPs = MACs for full-precision layers, OPs = BOPs / 64 + FLOPs; storage counts
quantized weights at their bit width, masks at 1 bit and every other tensor at 32 bits.
Ratios are against the same architecture in FP32.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m qmdd.report",
        description=(
            "Print the per-layer cost table of a detector (from a checkpoint, or built from "
            "--arch/--bits) with totals and ratios against FP32."
        ),
        epilog=__doc__.split("Examples::", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", help="a qmdd checkpoint (.pt); its config gives the architecture and bits")
    parser.add_argument("--arch", help="backbone to count without a checkpoint (e.g. resnet50, mobilenet_v2)")
    parser.add_argument("--bits", type=int, help="weight/activation bits without a checkpoint (32 = FP32)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override without a checkpoint, e.g. quant.first_layer_bits=8 (repeatable)")
    parser.add_argument("--input-size", type=int, help="square input side in pixels (default: the config's data.crop_size)")
    parser.add_argument("--json", help="also write the totals, ratios and per-layer rows to this JSON file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from qmdd.config import ConfigError, load_config
    from qmdd.checkpoint import CheckpointError
    from qmdd.detector import build_detector, load_detector, validate_config

    if args.checkpoint and (args.arch or args.bits is not None or args.overrides):
        print("error: give either --checkpoint or --arch/--bits/--set, not both", file=sys.stderr)
        return 2
    from qmdd.utils import OutputPathError, writable_file

    try:
        if args.json:
            writable_file(args.json, "--json")
        if args.checkpoint:
            loaded = load_detector(args.checkpoint)
            model, config = loaded.model, loaded.config
        else:
            overrides = [f"model.arch={args.arch}"] if args.arch else []
            overrides += [f"quant.bits={args.bits}"] if args.bits is not None else []
            config = validate_config(load_config(None, [*overrides, *args.overrides]))
            model = build_detector(config)
    except (ConfigError, CheckpointError, OutputPathError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from qmdd.cost import count_costs, format_cost_table, report_to_dict
    from qmdd.utils import atomic_write_text

    size = args.input_size or config.data.crop_size
    if size < 8:
        print(f"error: --input-size {size} is too small (at least 8 pixels)", file=sys.stderr)
        return 2
    report = count_costs(model, size)
    print(f"{config.model.arch} {config.quant.tag}")
    print(format_cost_table(report))
    if args.json:
        payload = {"arch": config.model.arch, "quant": config.quant.tag, **report_to_dict(report)}
        atomic_write_text(args.json, json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
