"""Evaluate detectors on a cross-generator suite and print the paper-style table.

Examples::

    python -m qmdd.eval --checkpoint runs/w2/best.pt --suite forensynths --data-root /data/CNNDetection
    python -m qmdd.eval --checkpoint runs/fp32/best.pt runs/w3/best.pt runs/w2/best.pt \\
        --suite forensynths-all --data-root /data/CNNDetection --out results/forensynths
    python -m qmdd.eval --checkpoint runs/w2/best.pt --suite universalfakedetect \\
        --data-root /data/UniversalFakeDetect --oracle --save-predictions
    python -m qmdd.eval --checkpoint runs/w2/best.pt --suite forensynths --data-root /data/CNNDetection \\
        --blur 1 --jpeg 75                          # robustness: blur, then JPEG, at test time
    python -m qmdd.eval --checkpoint runs/w2/best.pt --suite embedded --crop-shift 1   # off the grid's phase
    python -m qmdd.eval --checkpoint runs/w2/best.pt --suite embedded   # the embedded benchmark
    python -m qmdd.eval --checkpoint runs/w2/best.pt --suite my_suite.yaml --data-root /data/x
    python -m qmdd.eval --list-suites

Writes ``<report>.csv``, ``<report>.json`` and ``<report>.md`` (``<report>`` is the suite
name, plus ``_blur<s>``/``_jpeg<q>`` for degraded runs) and TensorBoard scalars to
``--out`` (default ``runs/eval/<time>-<report>``). See docs/data.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Sequence

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m qmdd.eval",
        description=(
            "Score one or more checkpoints on every set of an evaluation suite (ForenSynths, "
            "UniversalFakeDetect, GANGen-Detection, DiffusionForensics, the embedded benchmark, "
            "or a YAML suite) and report AP, accuracy at 0.5, real and fake accuracy per set and "
            "their unweighted mean. Several checkpoints give the columns of a comparison table. "
            "Missing sets and unreadable images are reported, never fatal."
        ),
        epilog=__doc__.split("Examples::", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", nargs="+", metavar="CKPT", help="qmdd checkpoint(s) (best.pt / last.pt of a run)")
    parser.add_argument("--suite", help="suite name (see --list-suites) or a suite .yaml file")
    parser.add_argument("--data-root", help="dataset folder (see docs/data.md for each suite's layout); the embedded suite defaults to the embedded benchmark cache")
    parser.add_argument("--out", help="report folder (default runs/eval/<time>-<report>)")
    parser.add_argument("--label", nargs="+", help="column names for the checkpoints (default <run folder>/<file stem>)")
    parser.add_argument("--save-predictions", action="store_true", help="also write a per-image CSV: set,path,label,score")
    parser.add_argument("--blur", type=float, default=0.0, metavar="SIGMA", help="Gaussian blur sigma in pixels applied to every test image (robustness)")
    parser.add_argument("--jpeg", type=int, metavar="QUALITY", help="re-compress every test image as JPEG at this quality, after --blur (robustness)")
    parser.add_argument("--crop-shift", type=int, default=0, metavar="PIXELS", help="move the centre crop right and down by this many pixels, off the upsampling grid's phase the detector trained on (a sensitivity check; try 1 and 2)")
    parser.add_argument("--oracle", action="store_true", help="also report the best-threshold accuracy, fitted on the test set (an oracle, labelled as such)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="data-loader worker processes (default min(8, CPUs))")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--crop", type=int, help="override the suite's centre crop (pixels)")
    parser.add_argument("--resize", type=int, help="override: resize to NxN first (NPR style: --resize 256, no crop unless --crop)")
    parser.add_argument("--max-per-class", type=int, help="override the suite's cap on real and on fake images per set")
    parser.add_argument("--seed", type=int, help="override the seed of the capped shuffle")
    parser.add_argument("--list-suites", action="store_true", help="list the registered suites with their sets and protocol, and exit")
    return parser


def _list_suites() -> str:
    from qmdd.evaluation import get_suite, list_suites

    lines = []
    for name in list_suites():
        suite = get_suite(name)
        sets = ", ".join(s.name for s in suite.sets) if suite.sets else "every folder of " + "/".join(suite.search)
        lines += [f"{name}: {suite.description}", f"    sets: {sets}", f"    protocol: {suite.protocol.describe()}"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_suites:
        print(_list_suites())
        return 0
    if not args.checkpoint or not args.suite:
        parser.error("--checkpoint and --suite are required (or --list-suites)")

    from qmdd.data import DataLayoutError
    from qmdd.evaluation import EvalError, EvalOptions, SuiteError, evaluate, format_table, log_tensorboard, resolve_suite_name, write_reports
    from qmdd.checkpoint import CheckpointError
    from qmdd.utils import OutputPathError, writable_dir

    try:
        suite = resolve_suite_name(args.suite)
        overrides = {k: v for k, v in (("crop", args.crop), ("max_per_class", args.max_per_class), ("seed", args.seed)) if v is not None}
        if args.resize is not None:
            overrides["resize"] = args.resize
            overrides.setdefault("crop", None)
            overrides["from_checkpoint"] = False
        elif args.crop is not None:
            overrides["from_checkpoint"] = False
        if overrides:
            suite = suite.with_protocol(**overrides)
        options = EvalOptions(
            batch_size=args.batch_size,
            workers=args.workers,
            device=args.device,
            blur_sigma=args.blur,
            jpeg_quality=args.jpeg,
            oracle=args.oracle,
            crop_shift=args.crop_shift,
        )
        # Checked before the evaluation, so a bad --out costs a sentence, not the results.
        writable_dir(args.out if args.out else Path("runs") / "eval")
        report = evaluate(args.checkpoint, suite, args.data_root, options, labels=args.label)
    except (EvalError, SuiteError, CheckpointError, DataLayoutError, OutputPathError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    out = Path(args.out) if args.out else Path("runs") / "eval" / f"{time.strftime('%Y%m%d-%H%M%S')}-{report.name}"
    print(format_table(report))  # first: whatever happens to the files, the numbers are on screen
    try:
        written = write_reports(report, out, save_predictions=args.save_predictions)
        log_tensorboard(report, out)
    except OSError as error:
        print(f"error: the table above could not be written to {out}: {error.strerror or error}", file=sys.stderr)
        return 1
    for result in report.checkpoints[:1]:
        for s in result.sets:
            for failure in s.skipped:
                print(f"warning: skipped unreadable image in {s.name}: {failure.error}", file=sys.stderr)
            if s.status != "ok":
                print(f"warning: set {s.name} {s.status}: {s.reason}", file=sys.stderr)
    print(f"{report.images_loaded} images in {report.seconds:.1f} s ({report.images_per_second:.1f} images/s); reports in {out}: " + ", ".join(p.name for p in written.values()))
    if not report.checkpoints[0].evaluated:
        print(f"error: no set of suite {suite.name!r} could be evaluated under {report.resolved.root}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
