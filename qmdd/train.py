"""Train a (low-bit) deepfake detector.

Examples::

    python -m qmdd.train --bits 2                       # W2A2 trunc_resnet18 on the embedded benchmark
    python -m qmdd.train --bits 32 --arch npr_resnet50  # NPR's published detector, FP32
    python -m qmdd.train --bits 32 --epochs 4           # full-precision baseline
    python -m qmdd.train --config configs/cnndetection.yaml --data-root /data/CNNDetection \\
        --classes car,cat,chair,horse --bits 3
    python -m qmdd.train --resume --out runs/my-run     # continue an interrupted run
    python -m qmdd.train --bits 2 --quantizer slr --block cqb \\
        --init runs/fp32/best.pt --teacher runs/fp32/best.pt   # QMDD: SLR + CQB + distillation
    python -m qmdd.train --set train.weight_decay=1e-4 --set quant.first_layer_bits=8
    python -m qmdd.train --bits 2 --amp bf16            # bfloat16 autocast (GPU, or CPU with bf16)
    torchrun --nproc_per_node 2 -m qmdd.train --bits 2  # DDP: 2 processes (gloo on CPU, NCCL on GPU)

Outputs go to ``--out`` (default ``runs/<time>-<arch>-<bits>``): ``config.yaml``,
TensorBoard events (``tensorboard --logdir runs``), ``last.pt``/``best.pt`` and
``metrics.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from qmdd.config import ConfigError, describe_keys, load_config
from qmdd.quant import SUPPORTED_BITS

__all__ = ["main", "build_parser", "build_config"]

# CLI flag -> dotted config key. Each flag is a shortcut for --set KEY=VALUE.
_SHORTCUTS = {
    "bits": "quant.bits",
    "quantizer": "quant.quantizer",
    "block": "quant.block",
    "teacher": "train.teacher",
    "init": "train.init",
    "arch": "model.arch",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "seed": "train.seed",
    "device": "train.device",
    "out": "train.out",
    "data_root": "data.root",
    "classes": "data.classes",
    "workers": "data.num_workers",
    "amp": "train.amp",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m qmdd.train",
        description=(
            "Quantization-aware training of a deepfake detector (CNNDetection recipe: BCE on "
            "one logit, Adam, blur/JPEG augmentation, early stopping on validation accuracy). "
            "Without --data-root it builds and uses the embedded benchmark."
        ),
        epilog=__doc__.split("Examples::", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML config file (see configs/); flags below override it")
    parser.add_argument("--bits", type=int, help=f"weight and activation bits, one of {list(SUPPORTED_BITS)} (32 = FP32)")
    parser.add_argument("--quantizer", help="quantizer family: lsq (default), n2uq or slr (QMDD's shifted-log activations)")
    parser.add_argument("--block", help="residual blocks: plain (default) or cqb (Connected Quantized Blocks, a full-precision shortcut around every quantized conv)")
    parser.add_argument("--init", metavar="CHECKPOINT", help="start from the float weights of this checkpoint (e.g. the FP32 run's best.pt), then quantize and calibrate")
    parser.add_argument("--teacher", metavar="CHECKPOINT", help="distil from this frozen teacher (e.g. the FP32 run's best.pt); see train.distill_alpha, train.distill_temperature")
    parser.add_argument("--arch", help="backbone, e.g. resnet18, resnet50, mobilenet_v2 (see --list-models)")
    parser.add_argument("--epochs", type=int, help="maximum epochs")
    parser.add_argument("--batch-size", type=int, help="images per step")
    parser.add_argument("--lr", type=float, help="Adam learning rate")
    parser.add_argument("--seed", type=int, help="seed of init, data order and augmentation")
    parser.add_argument("--device", help="auto, cpu or cuda[:N]")
    parser.add_argument("--data-root", help="ForenSynths-layout folder (train/ val/ test/); default: embedded benchmark")
    parser.add_argument("--classes", help="comma-separated training classes, e.g. car,cat,chair,horse")
    parser.add_argument("--workers", type=int, help="data-loader worker processes")
    parser.add_argument("--amp", help="mixed precision: none (default) or bf16 (bfloat16 autocast)")
    parser.add_argument("--out", help="run folder (default runs/<time>-<arch>-<bits>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt, with the config it was started with (flags may change only train.epochs, train.device, train.out and data.num_workers)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override any config key, e.g. --set train.weight_decay=1e-4 (repeatable; see --list-keys)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    parser.add_argument("--list-keys", action="store_true", help="list every config key with its default and meaning, and exit")
    parser.add_argument("--list-models", action="store_true", help="list the registered backbones and exit")
    return parser


def shortcut_overrides(args: argparse.Namespace, shortcuts: dict[str, str] = _SHORTCUTS) -> list[str]:
    """``KEY=VALUE`` overrides for the shortcut flags that were given (before any --set).

    An empty value is refused: ``KEY=`` means null, so ``--classes ''`` would silently mean
    "every class".
    """
    given = {flag: getattr(args, flag) for flag in shortcuts if getattr(args, flag, None) is not None}
    for flag, value in given.items():
        if isinstance(value, str) and not value.strip(" ,"):
            raise ConfigError(f"--{flag.replace('_', '-')} needs a value, got {value!r}")
    return [f"{shortcuts[flag]}={value}" for flag, value in given.items()]


def answer_listing(args: argparse.Namespace) -> bool:
    """Print what ``--list-keys`` or ``--list-models`` asks for; True if either was given."""
    if args.list_keys:
        print(describe_keys())
        return True
    if args.list_models:
        from qmdd.models import list_models

        print("\n".join(list_models()))
        return True
    return False


def print_config(config) -> None:
    """The resolved config as YAML (``--print-config``)."""
    import yaml

    from qmdd.config import config_to_dict

    print(yaml.safe_dump(config_to_dict(config), sort_keys=False), end="")


def build_config(args: argparse.Namespace):
    """The run's config from the parsed flags, with the registry names checked.

    A new run: defaults, then ``--config``, then the shortcut flags, then ``--set``. With
    ``--resume``: the config the run in ``--out`` was started with (from its ``last.pt``),
    then the flags given now, which may only change what a resumed run may change.
    """
    from qmdd.detector import validate_config

    overrides = [*shortcut_overrides(args), *args.overrides]
    if not args.resume:
        return validate_config(load_config(args.config, overrides))
    if args.config:
        raise ConfigError("--resume continues the run in --out with its own config; leave out --config (--set changes what may change, e.g. --set train.epochs=20)")
    if not args.out:
        raise ConfigError("--resume needs --out, the folder of the run to continue")
    from qmdd.checkpoint import CheckpointError, load_checkpoint, stored_config
    from qmdd.config import apply_overrides
    from qmdd.run_folder import LAST_CHECKPOINT

    last = Path(args.out) / LAST_CHECKPOINT
    if not last.is_file():
        raise ConfigError(f"--resume: {args.out} holds no {LAST_CHECKPOINT} to continue from")
    try:
        saved = stored_config(load_checkpoint(last), last)
    except CheckpointError as error:
        raise ConfigError(f"--resume: {last} cannot be read: {error}") from None
    return validate_config(apply_overrides(saved, overrides))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if answer_listing(args):
        return 0
    try:
        config = build_config(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.print_config:
        print_config(config)
        return 0

    from qmdd.data import DataLayoutError, ImageLoadError
    from qmdd.checkpoint import CheckpointError
    from qmdd.training import RunError, run
    from qmdd.training._distributed import environment_world_size, leave_process_group

    # Under torchrun, ranks other than 0 print nothing but errors.
    rank = int(os.environ.get("RANK", "0")) if environment_world_size() > 1 else 0
    try:
        metrics = run(config, resume=args.resume)
    except (RunError, CheckpointError, DataLayoutError, ImageLoadError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        leave_process_group()
    if rank == 0:
        _print_summary(metrics)
    return 0


def _print_summary(metrics: dict) -> None:
    def pct(value: float | None) -> str:
        return "  n/a" if value is None else f"{100 * value:5.1f}"

    print(f"\n{metrics['arch']} {metrics['quant']} on {metrics['benchmark']} (best epoch {metrics['best_epoch']}):")
    print(f"{'test set':<22}{'AP':>7}{'Acc':>7}{'real':>7}{'fake':>7}{'Acc@thr':>9}")
    rows = list(metrics["test"].items())
    for label in ("seen", "mean_unseen"):
        if label in metrics:
            rows.append((f"[{label}]", metrics[label]))
    for name, m in rows:
        marker = " (seen)" if name == metrics.get("seen_family") else ""
        print(f"{name + marker:<22}{pct(m['ap']):>7}{pct(m['acc']):>7}{pct(m['real_acc']):>7}{pct(m['fake_acc']):>7}{pct(m.get('cal_acc')):>9}")
    print(f"Acc at 0.5; Acc@thr at the threshold fitted on validation ({metrics['threshold']:.3f}), stored in the checkpoint")
    print(f"train time {metrics['train_time_s']:.0f} s; metrics in {metrics['run_dir']}/metrics.json")


if __name__ == "__main__":
    raise SystemExit(main())
