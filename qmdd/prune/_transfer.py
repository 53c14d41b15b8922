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
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from qmdd.config import RunConfig, config_to_dict, load_config
from qmdd.prune._callbacks import load_state_file
from qmdd.prune._lottery import (
    METHODS,
    pin_data_root,
    REWIND_FILE,
    MASK_FILE,
    check_or_save_config,
    level_config,
    level_dir,
    level_row,
    train_level,
)
from qmdd.prune._magnitude import random_mask_like
from qmdd.prune._mask import Mask, PruneError
from qmdd.training import BEST_CHECKPOINT, CONFIG_FILE, build_detector, load_checkpoint
from qmdd.utils import atomic_write_text

__all__ = ["run_transfer", "family_training_root", "TRANSFER_FILE", "format_transfer"]

TRANSFER_FILE = "transfer.json"
_TRANSFER_EXTENDABLE = {("train", "out"), ("train", "device"), ("data", "num_workers")}


def _tree_complete(root: Path) -> bool:
    try:
        return json.loads((root / "benchmark.json").read_text()).get("complete") is True
    except (OSError, ValueError):
        return False


def family_training_root(family: str, scale: float = 1.0, progress: bool | None = None) -> Path:
    """An embedded-benchmark tree trained on ``family`` instead of the default seen family.

    Built once next to the cached benchmark (``<benchmark>-train-<family>``): train/ and
    val/ get the benchmark's pair counts, made by its own pair writer with ``family`` as
    the generator, so reals, processed-real controls and crops follow the same recipe;
    test/ links to the benchmark's test folder (the same held-out photos and families).
    """
    from tqdm.auto import tqdm

    from qmdd.data.embedded import FAMILIES, PHOTO_SPLITS, build_embedded_benchmark
    from qmdd.data.embedded import _builder  # the benchmark's own pair writer
    from qmdd.data.embedded._photos import load_photos

    if family not in FAMILIES:
        from difflib import get_close_matches

        close = get_close_matches(family, FAMILIES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise PruneError(f"data.seen_family={family!r} is not an embedded family{hint}; families: {', '.join(FAMILIES)}")
    base = build_embedded_benchmark(scale=scale, progress=progress)
    info = json.loads((base / "benchmark.json").read_text())
    if family == info["seen_family"]:
        return base
    target = base.parent / f"{base.name}-train-{family}"
    if _tree_complete(target):
        return target
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=base.parent))
    try:
        photos = {split: load_photos(split) for split in ("train", "val")}
        jobs = [
            _builder._Job(split, family, index, index % len(PHOTO_SPLITS[split]))
            for split, pairs in (("train", _builder.TRAIN_PAIRS), ("val", _builder.VAL_PAIRS))
            for index in range(_builder._pairs(pairs, scale))
        ]
        for job in jobs:
            category = photos[job.split][job.photo_index][0].category
            for label in ("0_real", "1_fake"):
                (tmp / job.split / category / label).mkdir(parents=True, exist_ok=True)
        for job in tqdm(jobs, desc=f"train/val on {family}", unit="pair", disable=progress is False or None):
            _builder._write_pair(job, tmp, seed=info["seed"], image_size=info["image_size"])
        (tmp / "test").symlink_to(base / "test", target_is_directory=True)
        derived = {
            "name": f"embedded-train-{family}",
            "seen_family": family,
            "derived_from": base.name,
            "families": info["families"],
            "counts": {"train": _builder._pairs(_builder.TRAIN_PAIRS, scale), "val": _builder._pairs(_builder.VAL_PAIRS, scale)},
            "docs": "docs/lottery.md (ticket transfer)",
            "complete": True,
        }
        (tmp / "benchmark.json").write_text(json.dumps(derived, indent=2) + "\n")
        try:
            os.replace(tmp, target)  # atomic: a reader sees no tree or a whole one
        except OSError:
            if not _tree_complete(target):  # not a concurrent build that finished first
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target


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
    a, b = config_to_dict(source), config_to_dict(config)
    changes = [f"{s}.{k}: {a[s][k]!r} -> {b[s][k]!r}" for s in ("model", "quant", "prune") for k in a[s] if a[s][k] != b[s][k] and (s, k) not in {("prune", "levels"), ("prune", "one_shot"), ("prune", "one_shot_levels")}]
    if changes:
        raise PruneError("a ticket transfers to the same network; these settings differ from the source experiment: " + "; ".join(changes))


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
    check_or_save_config(out, config, _TRANSFER_EXTENDABLE)

    def info(arm: str, method: str | None, level: int, mask: Mask) -> dict[str, Any]:
        return {"arm": arm, "method": method or "dense", "level": level, "source": str(source), "planned_unpruned": mask.unpruned}

    dense_mask = Mask.dense(build_detector(replace(config, model=replace(config.model, pretrained=False))), config.prune)
    dense_dir = out / "dense"
    if not (dense_dir / MASK_FILE).is_file():
        dense_mask.save(dense_dir / MASK_FILE)
    train_level(level_config(config, dense_dir, 0, False), dense_dir, dense_mask, lambda: None, info("dense", None, 0, dense_mask), log=log)

    for method in METHODS:
        for level in levels or [int(p.name.split("_")[1]) for p in sorted((source / method).glob("level_*"))]:
            if level == 0:
                continue
            src = level_dir(source, method, level)
            if not (src / BEST_CHECKPOINT).is_file() or not (src / MASK_FILE).is_file():
                log(f"[lth] transfer: no finished ticket in {src}; skipped")
                continue
            ticket = Mask.load(src / MASK_FILE)
            rewind = source_config.prune.rewind_step

            def ticket_start(src: Path = src):
                if rewind is None:
                    return load_checkpoint(src / BEST_CHECKPOINT)["model"]
                return load_state_file(source / REWIND_FILE)["model"]

            arm_dir = level_dir(out, method, level)
            folder = arm_dir / "ticket"
            folder.mkdir(parents=True, exist_ok=True)
            if not (folder / MASK_FILE).is_file():
                ticket.save(folder / MASK_FILE)
            train_level(level_config(config, folder, level, method == "one_shot"), folder, ticket, ticket_start, info("ticket", method, level, ticket), log=log)

            folder = arm_dir / "random"
            seed = 1000 * config.train.seed + 10 * level + METHODS.index(method)
            path = folder / MASK_FILE
            random = Mask.load(path) if path.is_file() else random_mask_like(ticket, seed)
            if not path.is_file():
                folder.mkdir(parents=True, exist_ok=True)
                random.save(path)
            train_level(level_config(config, folder, level, method == "one_shot"), folder, random, lambda: None, info("random", method, level, random), log=log)
    return summarise_transfer(out, source)


def summarise_transfer(out: Path, source: Path) -> dict[str, Any]:
    rows = []
    dense = level_row(out / "dense")
    if dense is not None:
        rows.append({**dense, "arm": "dense", "method": "dense"})
    for method in METHODS:
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
