"""Ticket transfer: retrain a ticket found on one dataset on another.

Three arms per ticket, all trained on the *target* data with the same budget:

* ``dense``: the dense network from its initialisation (once per target);
* ``ticket``: the source ticket's mask with the ticket's starting weights, which follow
  ``prune.rewind``: ``none`` (the paper's setting) carries the ticket's own trained weights
  over, ``init`` / ``K`` the weights of the source's rewind point;
* ``random``: a random mask with the ticket's per-layer counts of surviving weights
  (seeded by ``train.seed``, the method and the level), from the initialisation. With
  ``--rewind init`` the ticket and this control start from the same weights, so they differ
  in the mask alone; with ``none`` the ticket also brings what its weights learned on the
  source, which is part of what a kept-weights ticket is.

The target is any ForenSynths-layout tree (``data.root``), or, on the embedded benchmark,
another generator family: ``data.seen_family=<family>`` builds (once, cached next to the
benchmark) a tree whose train/val fakes come from that family, made by the benchmark's own
recipe from the same training photos (new crops), with the benchmark's seven test families
as its test sets.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from qmdd.checkpoint import load_checkpoint
from qmdd.config import RunConfig, config_diff, config_to_dict, load_config
from qmdd.data.embedded import build_embedded_variant
from qmdd.detector import build_detector
from qmdd.prune._callbacks import load_state_file
from qmdd.prune._lottery import check_or_save_config, level_config, level_row, pin_data_root, train_level
from qmdd.prune._magnitude import random_mask_like
from qmdd.prune._mask import Mask, PruneError
from qmdd.run_folder import BEST_CHECKPOINT, CONFIG_FILE, DENSE_DIR, MASK_FILE, PRUNE_METHODS, REWIND_FILE, TRANSFER_FILE, level_dir
from qmdd.utils import atomic_write_text

__all__ = ["run_transfer", "family_training_root", "format_transfer"]



def family_training_root(family: str, scale: float = 1.0, progress: bool | None = None) -> Path:
    """The embedded benchmark trained on ``family`` (:func:`qmdd.data.embedded.build_embedded_variant`)."""
    try:
        return build_embedded_variant(family, scale=scale, progress=progress)
    except ValueError as error:
        raise PruneError(f"data.seen_family: {error}") from None


def resolve_target(config: RunConfig, source: RunConfig) -> RunConfig:
    """The target config with its data root resolved, refusing the source's own data."""
    data = config.data
    source_info = Path(source.data.root) / "benchmark.json" if source.data.root else None
    embedded_source = source_info is not None and source_info.is_file() and json.loads(source_info.read_text()).get("name") == "embedded"
    if data.seen_family is not None and (data.root is None or (embedded_source and data.root == source.data.root)):
        # On the embedded benchmark, another family to train on means another tree.
        data = replace(data, root=str(family_training_root(data.seen_family, data.embedded_scale)))
    elif data.root is None:
        data = pin_data_root(config).data
    same_root = (data.root or None) == (source.data.root or None)
    if same_root and data.classes == source.data.classes:
        raise PruneError(
            "the transfer target is the source's own training data: give another --data-root, or "
            "on the embedded benchmark --set data.seen_family=<family> (e.g. transposed_conv)"
        )
    return replace(config, data=data)


def _check_same_network(config: RunConfig, source: RunConfig) -> None:
    changes = config_diff(source, config, allow={"extend"}, sections=("model", "quant", "prune"))
    if changes:
        raise PruneError("a ticket transfers to the same network; these settings differ from the source experiment: " + "; ".join(changes))


def _arm_info(source: Path, arm: str, method: str | None, level: int, mask: Mask) -> dict[str, Any]:
    return {"arm": arm, "method": method or "dense", "level": level, "source": str(source), "planned_unpruned": mask.unpruned}


def _train_level_arms(source: Path, source_config: RunConfig, config: RunConfig, method: str, level: int, log: Callable[[str], None]) -> bool:
    """Train one source level's two arms on the target data: the ticket (the source's mask,
    from the source's weights or its rewind point) and a random mask of the same layer
    sizes from a fresh start. False when the source level is not finished."""
    src = level_dir(source, method, level)
    if not (src / BEST_CHECKPOINT).is_file() or not (src / MASK_FILE).is_file():
        return False
    ticket = Mask.load(src / MASK_FILE)
    rewind = source_config.prune.rewind_step

    def ticket_start():
        if rewind is None:
            return load_checkpoint(src / BEST_CHECKPOINT)["model"]
        return load_state_file(source / REWIND_FILE)["model"]

    arm_dir = level_dir(config.train.out, method, level)
    folder = arm_dir / "ticket"
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / MASK_FILE).is_file():
        ticket.save(folder / MASK_FILE)
    one_shot = method == "one_shot"
    train_level(level_config(config, folder, level, one_shot), folder, ticket, ticket_start, _arm_info(source, "ticket", method, level, ticket), log=log)

    folder = arm_dir / "random"
    seed = 1000 * config.train.seed + 10 * level + PRUNE_METHODS.index(method)
    path = folder / MASK_FILE
    random = Mask.load(path) if path.is_file() else random_mask_like(ticket, seed)
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        random.save(path)
    train_level(level_config(config, folder, level, one_shot), folder, random, lambda: None, _arm_info(source, "random", method, level, random), log=log)
    return True


def run_transfer(source: Path, config: RunConfig, levels: list[int] | None = None, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the dense, ticket and random-mask arms on the target data (module docstring).

    ``source``: a ``python -m qmdd.lth`` experiment folder; ``config``: the target run's
    config (the source's, with the target data); ``levels``: source levels to transfer
    (None: every finished level of either method).
    """
    source = Path(source)
    if not (source / CONFIG_FILE).is_file():
        raise PruneError(f"{source} holds no {CONFIG_FILE}: not a python -m qmdd.lth experiment folder")
    source_config = load_config(source / CONFIG_FILE)
    _check_same_network(config, source_config)
    config = resolve_target(config, source_config)
    if config.train.out is None:
        raise PruneError("set train.out (--out): the transfer experiment folder")
    out = Path(config.train.out)
    if out.resolve() == source.resolve():
        raise PruneError("the transfer folder must differ from the source experiment's")
    check_or_save_config(out, config, allow={"free"})

    dense_mask = Mask.dense(build_detector(config, pretrained=False), config.prune)
    dense_dir = out / DENSE_DIR
    if not (dense_dir / MASK_FILE).is_file():
        dense_mask.save(dense_dir / MASK_FILE)
    train_level(level_config(config, dense_dir, 0, False), dense_dir, dense_mask, lambda: None, _arm_info(source, "dense", None, 0, dense_mask), log=log)
    for method in PRUNE_METHODS:
        for level in levels or [int(p.name.split("_")[1]) for p in sorted((source / method).glob("level_*"))]:
            if level == 0:
                continue
            if not _train_level_arms(source, source_config, config, method, level, log):
                log(f"[lth] transfer: no finished ticket in {level_dir(source, method, level)}; skipped")
    return summarise_transfer(out, source)


def summarise_transfer(out: Path, source: Path) -> dict[str, Any]:
    rows = []
    dense = level_row(out / "dense")
    if dense is not None:
        rows.append({**dense, "arm": "dense", "method": "dense"})
    for method in PRUNE_METHODS:
        for arm_dir in sorted((out / method).glob("level_*")) if (out / method).is_dir() else []:
            for arm in ("ticket", "random"):
                row = level_row(arm_dir / arm)
                if row is not None:
                    rows.append({**row, "arm": arm, "method": method})
    summary = {"out": str(out), "source": str(source), "target_data": config_to_dict(load_config(out / CONFIG_FILE))["data"], "rows": rows}
    atomic_write_text(out / TRANSFER_FILE, json.dumps(summary, indent=2) + "\n")
    return summary


def format_transfer(rows: list[dict[str, Any]]) -> str:
    def pct(group: dict | None, key: str) -> str:
        return "  n/a" if not group else f"{100 * group[key]:5.1f}"

    header = f"{'arm':<8}{'method':<10}{'level':>6}{'sparsity':>9}{'seen Acc':>9}{'seen AP':>8}{'unseen Acc':>11}{'unseen AP':>10}"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['arm']:<8}{row['method']:<10}{row['level']:>6}{100 * row['sparsity']:>8.1f}%"
            f"{pct(row.get('seen'), 'acc'):>9}{pct(row.get('seen'), 'ap'):>8}"
            f"{pct(row.get('mean_unseen'), 'acc'):>11}{pct(row.get('mean_unseen'), 'ap'):>10}"
        )
    return "\n".join(lines)
