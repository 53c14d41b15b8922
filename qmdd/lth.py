"""Lottery tickets for deepfake detectors: iterative magnitude pruning (IMP), the one-shot
baseline and ticket transfer.

Examples::

    python -m qmdd.lth --arch mesonet --epochs 10 --levels 8 --one-shot --out runs/lth-mesonet
    python -m qmdd.lth --arch cnn5 --bits 2 --levels 7 --out runs/lth-cnn5-w2      # tickets of a W2A2 model
    python -m qmdd.lth --arch resnet18 --rewind init --scope layer --out runs/lth-r18-init
    python -m qmdd.lth --arch resnet18 --one-shot --set prune.one_shot_levels=[7] --out runs/lth-r18
    python -m qmdd.lth --transfer runs/lth-mesonet --transfer-levels 4,7 \\
        --set data.seen_family=transposed_conv --out runs/lth-mesonet-to-tconv
    python -m qmdd.lth --summarise --out runs/lth-mesonet      # rewrite summary.json and curves.png

Every level is a normal run folder (``<out>/imp/level_03/``: config.yaml, metrics.json,
best.pt, TensorBoard) plus its ``mask.pt`` and ``sparsity.json``. Running the same command
again continues an interrupted experiment at its last unfinished level; adding
``--one-shot`` or more ``--levels`` later adds those stages. Design, the order of pruning
and quantization, and measured curves: docs/lottery.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

from qmdd.config import ConfigError, load_config
from qmdd.run_folder import CONFIG_FILE
from qmdd.train import _SHORTCUTS as _TRAIN_SHORTCUTS
from qmdd.train import answer_listing, print_config, shortcut_overrides
from qmdd.train import build_parser as _train_parser

__all__ = ["main", "build_parser"]

# CLI flag -> dotted config key, on top of qmdd.train's shortcuts.
_SHORTCUTS = {
    "levels": "prune.levels",
    "prune_fraction": "prune.fraction",
    "rewind": "prune.rewind",
    "scope": "prune.scope",
}


def build_parser() -> argparse.ArgumentParser:
    """qmdd.train's parser (every training flag and --set) plus the lottery-ticket flags."""
    parser = _train_parser()
    parser.prog = "python -m qmdd.lth"
    parser.description = (
        "Find lottery tickets in a deepfake detector: train dense, prune by magnitude, retrain, "
        "level after level (IMP); compare with one-shot pruning; transfer tickets to other data. "
        "Takes every qmdd.train flag."
    )
    parser.epilog = __doc__.split("Examples::", 1)[1]
    # --resume means nothing more here: an experiment folder is always continued.
    parser._option_string_actions["--resume"].help = "accepted for symmetry with qmdd.train; qmdd.lth always continues the experiment in --out"
    group = parser.add_argument_group("lottery tickets")
    group.add_argument("--levels", type=int, help="pruning levels after the dense level 0 (default 8: 83%% sparsity at 20%% per level)")
    group.add_argument("--prune-fraction", type=float, help="share of the remaining weights pruned per level (default 0.2)")
    group.add_argument("--rewind", help="none (keep trained weights, default), init, or K optimizer steps of the dense run")
    group.add_argument("--scope", help="global (one magnitude threshold, default) or layer (one per layer)")
    group.add_argument("--one-shot", action="store_true", help="also run the one-shot baseline at each level's sparsity (prune.one_shot_levels picks levels)")
    group.add_argument("--transfer", metavar="EXPERIMENT", help="retrain this experiment's tickets on other data (--data-root, or --set data.seen_family=FAMILY on the embedded benchmark), next to dense and random-mask training")
    group.add_argument("--transfer-levels", help="comma-separated source levels to transfer, e.g. 4,7 (default: every finished level)")
    group.add_argument("--summarise", action="store_true", help="only rewrite summary.json, curves.png and the TensorBoard curves of --out from its finished levels")
    return parser


def _overrides(args) -> list[str]:
    overrides = shortcut_overrides(args, {**_TRAIN_SHORTCUTS, **_SHORTCUTS})
    if args.one_shot:
        overrides.append("prune.one_shot=true")
    return [*overrides, *args.overrides]


def _default_out(config, transfer: str | None) -> str:
    if transfer:
        target = config.data.seen_family or Path(config.data.root or "target").name
        return f"{transfer.rstrip('/')}-to-{target}"
    return str(Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-lth-{config.model.arch}-{config.quant.tag}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if answer_listing(args):
        return 0
    from qmdd.data import DataLayoutError, ImageLoadError
    from qmdd.detector import validate_config
    from qmdd.prune import PruneError, format_rows, format_transfer, run_lottery, run_transfer, summarise
    from qmdd.checkpoint import CheckpointError
    from qmdd.training import RunError

    if args.summarise:
        if not args.out:
            print("error: --summarise needs --out (the experiment folder)", file=sys.stderr)
            return 2
        summary = summarise(Path(args.out))
        print(format_rows(summary["rows"]))
        return 0
    try:
        if args.transfer:
            if args.config:
                raise ConfigError("--transfer takes the source experiment's config; give overrides, not --config")
            base = Path(args.transfer) / CONFIG_FILE
            if not base.is_file():
                raise ConfigError(f"--transfer {args.transfer}: no {CONFIG_FILE} there; is it a python -m qmdd.lth folder?")
            config = load_config(base, _overrides(args))
            if args.out is None:  # the source's own train.out must not be reused
                config = load_config(base, [*_overrides(args), f"train.out={_default_out(config, args.transfer)}"])
        else:
            config = load_config(args.config, _overrides(args))
            if config.train.out is None:
                config = load_config(args.config, [*_overrides(args), f"train.out={_default_out(config, None)}"])
        validate_config(config)
        levels = [int(v) for v in args.transfer_levels.split(",") if v.strip()] if args.transfer_levels else None
    except (ConfigError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.print_config:
        print_config(config)
        return 0
    try:
        if args.transfer:
            summary = run_transfer(Path(args.transfer), config, levels)
            print(format_transfer(summary["rows"]))
        else:
            summary = run_lottery(config)
            print(format_rows(summary["rows"]))
    except (PruneError, RunError, CheckpointError, DataLayoutError, ImageLoadError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"results in {config.train.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
