"""Structured pruning: remove whole channels of a trained detector, so it becomes a smaller
dense network (fewer parameters and MACs, faster with ordinary kernels).

Examples::

    python -m qmdd.slim --from runs/fp32/best.pt --ratio 0.3 --epochs 2 --out runs/slim-30
    python -m qmdd.slim --from runs/fp32/best.pt --ratio 0.3 --steps 5 --epochs 1 \\
        --distill --set train.distill_alpha=0.25 --out runs/slim-30-k5-kd   # iterative + distillation
    python -m qmdd.slim --from runs/fp32/best.pt --importance magnitude --scope layer --out runs/slim-mag
    python -m qmdd.train --config runs/slim-30/pruned.yaml --init runs/slim-30/pruned.pt \\
        --bits 2 --out runs/slim-30-w2a2                               # then quantize the pruned detector

The detector is rebuilt from the checkpoint's own config; flags override it (every
qmdd.train flag: --epochs is the fine-tuning per step). Result: ``<out>/pruned.pt`` and
``<out>/pruned.yaml`` (an ordinary checkpoint and its config: eval, report, export and
predict read it), one run folder per step and ``<out>/slim.json``. Running the same
command again continues an interrupted experiment. Design and measurements: docs/pruning.md.
Needs the optional extra: pip install 'qmdd[slim]'.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

from qmdd.config import ConfigError, apply_overrides
from qmdd.train import _SHORTCUTS as _TRAIN_SHORTCUTS
from qmdd.train import answer_listing, print_config, shortcut_overrides
from qmdd.train import build_parser as _train_parser

__all__ = ["main", "build_parser"]

# CLI flag -> dotted config key, on top of qmdd.train's shortcuts.
_SHORTCUTS = {
    "ratio": "slim.ratio",
    "steps": "slim.steps",
    "importance": "slim.importance",
    "scope": "slim.scope",
}


def build_parser() -> argparse.ArgumentParser:
    """qmdd.train's parser (every training flag and --set) plus the structured-pruning flags."""
    parser = _train_parser()
    parser.prog = "python -m qmdd.slim"
    parser.description = (
        "Prune whole channels of a trained float detector (dependency groups: residual adds, "
        "depthwise convs, BatchNorm and the classifier input lose a channel together), step by "
        "step with fine-tuning in between; the result is a smaller ordinary detector. "
        "Takes every qmdd.train flag; --epochs is the fine-tuning per step."
    )
    parser.epilog = __doc__.split("Examples::", 1)[1]
    parser._option_string_actions["--resume"].help = "accepted for symmetry with qmdd.train; qmdd.slim always continues the experiment in --out"
    group = parser.add_argument_group("structured pruning")
    group.add_argument("--from", dest="source", metavar="CHECKPOINT", help="the trained float detector to prune (e.g. runs/fp32/best.pt); required")
    group.add_argument("--ratio", type=float, help="share of the parameters to remove (default 0.3)")
    group.add_argument("--steps", type=int, help="pruning steps K, each followed by --epochs of fine-tuning (default 1: one-shot)")
    group.add_argument("--importance", help="taylor (first-order, from training gradients; default) or magnitude")
    group.add_argument("--scope", help="global (one ranking over all groups; default) or layer (same share from every group)")
    group.add_argument("--distill", action="store_true", help="fine-tune against the unpruned detector as teacher (train.distill_alpha, e.g. --set train.distill_alpha=0.25)")
    return parser


def _config(args):
    """The source checkpoint's config with the flags applied and a fresh run folder."""
    from qmdd.checkpoint import load_checkpoint, stored_config

    if args.config:
        raise ConfigError("--config is not used: qmdd.slim starts from the config stored in --from; give flags or --set")
    overrides = shortcut_overrides(args, {**_TRAIN_SHORTCUTS, **_SHORTCUTS})
    if args.distill:
        overrides.append("slim.distill=true")
    base = stored_config(load_checkpoint(args.source), args.source)
    # The source run's own init, teacher and folder are not this experiment's.
    default_out = str(Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-slim-{base.model.arch}")
    fresh = ["train.init=", "train.teacher=", f"train.out={default_out}"]
    return apply_overrides(base, [*fresh, *overrides, *args.overrides])


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if answer_listing(args):
        return 0
    from qmdd.checkpoint import CheckpointError
    from qmdd.data import DataLayoutError, ImageLoadError
    from qmdd.detector import validate_config
    from qmdd.prune import PruneError, format_slim, run_slim
    from qmdd.training import RunError

    if not args.source:
        print("error: --from CHECKPOINT is required (the trained float detector to prune)", file=sys.stderr)
        return 2
    try:
        config = validate_config(_config(args))
    except (ConfigError, CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.print_config:
        print_config(config)
        return 0
    try:
        summary = run_slim(config, args.source)
    except (PruneError, RunError, CheckpointError, DataLayoutError, ImageLoadError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(format_slim(summary["rows"]))
    print(f"pruned detector: {Path(config.train.out) / 'pruned.pt'} (config: pruned.yaml)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
