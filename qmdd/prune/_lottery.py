"""The lottery-ticket drivers: iterative magnitude pruning and the one-shot baseline.

Every level is an ordinary training run (``qmdd.training.run``) in its own folder, so it has
``config.yaml``, ``metrics.json``, ``best.pt``/``last.pt`` and TensorBoard events like any
run, plus the level's ``mask.pt`` and ``sparsity.json``::

    <out>/config.yaml              the resolved config of the whole experiment
    <out>/rewind.pt                weights to rewind to (prune.rewind = init or K only)
    <out>/imp/level_00/            dense training (level 0)
    <out>/imp/level_01/ ...        IMP: each pruned from the previous level's best.pt
    <out>/one_shot/level_KK/       one-shot: pruned once from level 0 to level KK's sparsity
                                   (KK >= 2: one-shot to level 1 is IMP's level 1 exactly)
    <out>/summary.json             one row per finished level: sparsity, metrics, costs
    <out>/curves.png               accuracy and AP against sparsity, IMP and one-shot
    <out>/curves/                  the same as TensorBoard scalars (step = sparsity in %)

Stages skip when their output exists, so an interrupted experiment continues where it
stopped: finished levels are kept, an unfinished one resumes from its ``last.pt`` (its mask
was saved before its training began).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from qmdd.checkpoint import load_checkpoint
from qmdd.config import RunConfig, config_diff, config_to_dict, load_config, save_config
from qmdd.cost import sparse_cost_summary
from qmdd.prune._callbacks import KeepPruned, SaveStateAtStep, check_pruned_are_zero, check_quantizers_keep_zeros, load_state_file
from qmdd.prune._magnitude import planned_counts, prune_level, prune_to_level
from qmdd.prune._mask import Mask, PruneError
from qmdd.detector import build_detector, load_detector
from qmdd.run_folder import (
    BEST_CHECKPOINT,
    CONFIG_FILE,
    CURVES_DIR,
    LAST_CHECKPOINT,
    MASK_FILE,
    METRICS_FILE,
    PLOT_FILE,
    PRUNE_METHODS,
    REWIND_FILE,
    SPARSITY_FILE,
    SUMMARY_FILE,
    level_dir,
)
from qmdd.training import Callback, run
from qmdd.utils import atomic_write_text

__all__ = [
    "run_lottery",
    "level_config",
    "train_level",
    "summarise",
    "collect_rows",
    "level_row",
    "format_rows",
    "check_or_save_config",
]

def level_config(config: RunConfig, folder: Path, level: int, one_shot: bool) -> RunConfig:
    """The config of one level's run: its own folder, and a prune section that names the
    level (``levels`` = this level), so it reads the same whatever the experiment's length."""
    prune = replace(config.prune, levels=level, one_shot=one_shot, one_shot_levels=(level,) if one_shot else None)
    return replace(config, train=replace(config.train, out=str(folder)), prune=prune)


def check_or_save_config(out: Path, config: RunConfig, allow: tuple[str, ...] | set[str] = ("free", "extend")) -> None:
    """Write ``<out>/config.yaml``, or check that a continued experiment keeps its settings.

    ``allow``: the resume kinds of keys that may differ (by default those that add stages,
    such as more levels, and those that change no result, such as the device).
    """
    path = out / CONFIG_FILE
    if path.is_file():
        changes = config_diff(load_config(path), config, allow=allow)
        if changes:
            raise PruneError(
                f"{out} holds an experiment with other settings; continuing it would mix levels "
                "of different runs. Use another --out, or the same settings. Differences: " + "; ".join(changes)
            )
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, path)


def pin_data_root(config: RunConfig) -> RunConfig:
    """``data.root`` made explicit: the embedded benchmark's cache folder when it is null.

    The levels of one experiment are trained in separate sessions; a null root would let a
    session running a newer benchmark version train later levels on other data. With the
    folder in ``config.yaml``, continuing on other data is refused as any other change.
    """
    if config.data.root is not None:
        return config
    from qmdd.data import resolve_data_root

    return replace(config, data=replace(config.data, root=str(resolve_data_root(config.data))))


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(checkpoint)["model"]


def _level_mask(folder: Path, make: Callable[[], Mask]) -> Mask:
    """The level's saved mask, or a new one saved before its training starts."""
    path = folder / MASK_FILE
    if path.is_file():
        return Mask.load(path)
    mask = make()
    folder.mkdir(parents=True, exist_ok=True)
    mask.save(path)
    return mask


def write_sparsity(folder: Path, mask: Mask, info: Mapping[str, Any]) -> dict[str, Any]:
    """``sparsity.json`` of a finished level, checked against its trained weights."""
    loaded = load_detector(folder / BEST_CHECKPOINT)
    model, config = loaded.model, loaded.config
    check_pruned_are_zero(model, mask)
    report = {**info, **mask.report(model), "cost": sparse_cost_summary(model)}
    atomic_write_text(folder / SPARSITY_FILE, json.dumps(report, indent=2) + "\n")
    return report


def train_level(
    config: RunConfig,
    folder: Path,
    mask: Mask,
    start: Callable[[], Mapping[str, torch.Tensor] | None],
    info: Mapping[str, Any],
    callbacks: tuple[Callback, ...] = (),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train one level (or resume it, or skip it when finished); returns its metrics.

    ``start()`` gives the state the level starts from (None: the fresh initialisation); it
    is called only for a fresh run. ``config`` must already be the level's config.
    """
    metrics_path = folder / METRICS_FILE
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
    else:
        resume = (folder / LAST_CHECKPOINT).is_file()
        log(f"[lth] {'resuming' if resume else 'training'} {folder} ({100 * mask.sparsity:.1f}% sparse)")
        start_state = None if resume else start()  # a resumed run continues from its last.pt
        pruned = mask.unpruned < mask.total
        keep = (KeepPruned(mask, start_state),) if pruned or start_state is not None else ()
        metrics = run(config, resume=resume, callbacks=(*keep, *callbacks))
    if not (folder / SPARSITY_FILE).is_file():
        write_sparsity(folder, mask, info)
    return metrics


def _require_rewind_state(out: Path, config: RunConfig) -> None:
    """Fail before any pruned level if the dense run never reached the rewind step."""
    step = config.prune.rewind_step
    if step is not None and not (out / REWIND_FILE).is_file():
        dense_steps = load_checkpoint(level_dir(out, "imp", 0) / LAST_CHECKPOINT)["trainer"].get("step", 0)
        raise PruneError(
            f"prune.rewind={config.prune.rewind}: no {REWIND_FILE} in {out}; the dense run stopped after "
            f"{dense_steps} optimizer steps, before step {step}. Use another --out with a smaller rewind step"
        )


def _start_state(out: Path, config: RunConfig, trained: Path) -> dict[str, torch.Tensor]:
    """Where a pruned level starts: the trained weights it was pruned from, or the rewind point."""
    if config.prune.rewind_step is None:
        return _weights(trained / BEST_CHECKPOINT)
    _require_rewind_state(out, config)
    return load_state_file(out / REWIND_FILE)["model"]


def _planned_total(plan: dict[str, int] | int) -> int:
    return plan if isinstance(plan, int) else sum(plan.values())


def run_lottery(config: RunConfig, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or continue) an IMP experiment, plus the one-shot baseline if ``prune.one_shot``.

    ``config.train.out`` is the experiment folder (module docstring). Returns the summary.
    """
    if config.train.out is None:
        raise PruneError("set train.out (--out): the experiment folder")
    out = Path(config.train.out)
    config = pin_data_root(config)
    prune = config.prune
    # Fail before any training if a mask could not hold on this model.
    probe = build_detector(config, pretrained=False)
    fresh_dense = Mask.dense(probe, prune)
    check_quantizers_keep_zeros(probe, list(fresh_dense))
    del probe
    check_or_save_config(out, config)

    def info(method: str, level: int) -> dict[str, Any]:
        plan = planned_counts(fresh_dense, prune.fraction, level, prune.scope)
        return {"method": method, "level": level, "scope": prune.scope, "fraction": prune.fraction, "rewind": prune.rewind, "planned_unpruned": _planned_total(plan)}

    started = time.perf_counter()
    level0 = level_dir(out, "imp", 0)
    rewind = () if prune.rewind_step is None else (SaveStateAtStep(prune.rewind_step, out / REWIND_FILE),)
    dense = _level_mask(level0, lambda: fresh_dense)
    train_level(level_config(config, level0, 0, False), level0, dense, lambda: None, info("imp", 0), rewind, log)
    if prune.levels or prune.one_shot:
        _require_rewind_state(out, config)

    previous = level0
    for level in range(1, prune.levels + 1):
        folder = level_dir(out, "imp", level)
        parent = previous
        mask = _level_mask(folder, lambda: prune_level(_weights(parent / BEST_CHECKPOINT), Mask.load(parent / MASK_FILE), prune.fraction, prune.scope))
        train_level(level_config(config, folder, level, False), folder, mask, lambda: _start_state(out, config, parent), info("imp", level), log=log)
        previous = folder

    if prune.one_shot:
        dense_weights: dict[str, torch.Tensor] | None = None
        # One-shot to level 1 *is* IMP's level 1 (the same mask from the same weights, the
        # same start): by default it is not trained twice; the summary shares the row.
        for level in prune.one_shot_levels or range(2, prune.levels + 1):
            folder = level_dir(out, "one_shot", level)

            def one_shot_mask(level: int = level) -> Mask:
                nonlocal dense_weights
                if dense_weights is None:
                    dense_weights = _weights(level0 / BEST_CHECKPOINT)
                return prune_to_level(dense_weights, dense, prune.fraction, level, prune.scope)

            mask = _level_mask(folder, one_shot_mask)
            train_level(level_config(config, folder, level, True), folder, mask, lambda: _start_state(out, config, level0), info("one_shot", level), log=log)
    log(f"[lth] {out}: all stages done ({time.perf_counter() - started:.0f} s in this session)")
    return summarise(out)


# ------------------------------------------------------------------------------ summary


def level_row(folder: Path) -> dict[str, Any] | None:
    metrics_path, sparsity_path = folder / METRICS_FILE, folder / SPARSITY_FILE
    if not (metrics_path.is_file() and sparsity_path.is_file()):
        return None
    metrics = json.loads(metrics_path.read_text())
    sparsity = json.loads(sparsity_path.read_text())
    row = {
        "method": sparsity["method"],
        "level": sparsity["level"],
        "sparsity": sparsity["sparsity"],
        "unpruned": sparsity["unpruned"],
        "total": sparsity["total"],
        "run_dir": str(folder),
        "best_epoch": metrics.get("best_epoch"),
        "epochs_trained": metrics.get("epochs_trained"),
        "train_time_s": metrics.get("train_time_s"),
        "cost": sparsity["cost"],
    }
    for group in ("seen", "mean_unseen", "mean_all"):
        if group in metrics:
            row[group] = {key: metrics[group][key] for key in ("ap", "acc")}
    row["test"] = {name: {key: m[key] for key in ("ap", "acc")} for name, m in metrics.get("test", {}).items()}
    return row


def _level_folders(out: Path, method: str) -> list[Path]:
    folder = out / method
    return sorted(p for p in folder.glob("level_*") if p.is_dir()) if folder.is_dir() else []


def collect_rows(out: Path) -> list[dict[str, Any]]:
    """One row per finished level; the dense level 0 also starts the one-shot curve."""
    rows = []
    for method in PRUNE_METHODS:
        for folder in _level_folders(out, method):
            row = level_row(folder)
            if row is not None:
                rows.append(row)
    if any(r["method"] == "one_shot" for r in rows):
        # Levels 0 and 1 of one-shot are IMP's (module docstring): share those rows.
        have = {r["level"] for r in rows if r["method"] == "one_shot"}
        for row in [r for r in rows if r["method"] == "imp" and r["level"] in (0, 1) and r["level"] not in have]:
            rows.append({**row, "method": "one_shot", "shared_with": "imp"})
    return sorted(rows, key=lambda r: (PRUNE_METHODS.index(r["method"]), r["level"]))


def _write_tensorboard(folder: Path, rows: list[dict[str, Any]]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    # The curves are derived from the level folders: rewrite them whole, never append.
    if folder.is_dir():
        for event_file in folder.glob("events.out.tfevents.*"):
            event_file.unlink()
    writer = SummaryWriter(log_dir=str(folder))
    for row in rows:
        step = round(100 * row["sparsity"])  # TensorBoard's x axis: sparsity in %
        for group in ("seen", "mean_unseen"):
            for metric in ("acc", "ap"):
                if group in row:
                    writer.add_scalar(f"{row['method']}/{group}_{metric}", 100 * row[group][metric], step)
        writer.add_scalar(f"{row['method']}/nonzero_params", row["cost"]["nonzero_params"], step)
        writer.add_scalar(f"{row['method']}/sparse_storage_kB", row["cost"]["sparse_storage_bytes"] / 1e3, step)
    writer.close()


def _plot(out: Path, rows: list[dict[str, Any]], title: str) -> Path | None:
    from qmdd.prune._plot import Series, line_chart

    colours = {"imp": (31, 119, 180), "one_shot": (214, 39, 40)}
    names = {"imp": "IMP", "one_shot": "one-shot"}
    panels = []
    for metric, label in (("acc", "accuracy (%)"), ("ap", "AP (%)")):
        series = []
        for method in PRUNE_METHODS:
            for group, group_name, marker in (("seen", "seen family", "o"), ("mean_unseen", "mean unseen", "s")):
                points = [(100 * r["sparsity"], 100 * r[group][metric]) for r in rows if r["method"] == method and group in r]
                if points:
                    series.append(Series(f"{names[method]}, {group_name}", points, colours[method], marker, dashed=group != "seen"))
        if series:
            panels.append((label, series))
    if not panels:
        return None
    path = out / PLOT_FILE
    line_chart(path, panels, title=title, x_label="sparsity (% of prunable weights pruned)")
    return path


def summarise(out: Path) -> dict[str, Any]:
    """Write ``summary.json``, ``curves.png`` and the TensorBoard curves from the finished levels."""
    out = Path(out)
    rows = collect_rows(out)
    config = load_config(out / CONFIG_FILE) if (out / CONFIG_FILE).is_file() else None
    title = "lottery tickets"
    if config is not None:
        title = f"{config.model.arch} {config.quant.tag}: IMP vs one-shot ({config.prune.scope}, rewind {config.prune.rewind})"
    summary = {"out": str(out), "config": config_to_dict(config) if config else None, "rows": rows}
    atomic_write_text(out / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    if rows:
        _write_tensorboard(out / CURVES_DIR, rows)
        _plot(out, rows, title)
    return summary


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of summary rows."""

    def pct(value: float | None) -> str:
        return "  n/a" if value is None else f"{100 * value:5.1f}"

    header = f"{'method':<9}{'level':>6}{'sparsity':>9}{'seen Acc':>9}{'seen AP':>8}{'unseen Acc':>11}{'unseen AP':>10}{'non-zero':>10}{'sparse kB':>10}"
    lines = [header, "-" * len(header)]
    for row in rows:
        seen, unseen = row.get("seen", {}), row.get("mean_unseen", {})
        lines.append(
            f"{row['method']:<9}{row['level']:>6}{100 * row['sparsity']:>8.1f}%{pct(seen.get('acc')):>9}{pct(seen.get('ap')):>8}"
            f"{pct(unseen.get('acc')):>11}{pct(unseen.get('ap')):>10}{row['cost']['nonzero_params']:>10}"
            f"{row['cost']['sparse_storage_bytes'] / 1e3:>10.1f}"
        )
    return "\n".join(lines)
