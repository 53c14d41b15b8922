"""``python -m qmdd.slim``: prune a trained detector's channels, step by step, fine-tuning between.

From a trained float checkpoint, ``slim.steps`` = K steps each remove ``slim.ratio / K`` of
the original parameters (by :mod:`qmdd.prune._structured`) and fine-tune for
``train.epochs`` with the ordinary training run, optionally distilling from the unpruned
detector (``slim.distill``). Each step is a run folder::

    <out>/config.yaml          the experiment's config
    <out>/step_01/pruned.pt    the step's pruned, not yet fine-tuned detector
    <out>/step_01/...          a normal run folder: config.yaml, best.pt, metrics.json
    <out>/pruned.pt            the last step's best.pt (a link)
    <out>/pruned.yaml          its config, to quantize it: train --config pruned.yaml --init pruned.pt
    <out>/slim.json            parameters, MACs and test metrics per step

A finished step is skipped and an interrupted one resumed, so the same command continues
an experiment. The pruned detector's config lists its narrowed layers
(``model.pruned_shapes``): every reader rebuilds it without the pruning library.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch

from qmdd.checkpoint import link_checkpoint, save_checkpoint
from qmdd.config import RunConfig, load_config, save_config
from qmdd.cost import macs, parameter_count
from qmdd.data import build_training_data
from qmdd.detector import load_detector
from qmdd.models import create_model, layer_shapes
from qmdd.prune._mask import PruneError
from qmdd.prune._structured import accumulate_taylor_gradients, channel_groups, group_importance, plan_removal, remove_channels
from qmdd.run_folder import BEST_CHECKPOINT, CONFIG_FILE, LAST_CHECKPOINT, METRICS_FILE
from qmdd.training import run
from qmdd.utils import atomic_write_text

__all__ = ["prune_channels", "pruned_config", "run_slim", "format_slim", "SLIM_FILE", "PRUNED_CHECKPOINT", "PRUNED_CONFIG"]

SLIM_FILE = "slim.json"
PRUNED_CHECKPOINT = "pruned.pt"
PRUNED_CONFIG = "pruned.yaml"


def _training_batches(config: RunConfig, count: int):
    """``count`` shuffled training batches (images, labels) for the Taylor gradients."""
    data = build_training_data(config.data, seed=config.train.seed)
    generator = torch.Generator().manual_seed(config.train.seed)
    loader = torch.utils.data.DataLoader(data.train, batch_size=config.train.batch_size, shuffle=True, generator=generator)
    for index, batch in enumerate(loader):
        if index >= count:
            break
        yield batch


def prune_channels(model: torch.nn.Module, config: RunConfig, target: int, batches=None) -> int:
    """Remove channels of ``model`` (float, in place) until it has at most ``target``
    parameters, ranked as ``config.slim`` says; returns the planned (= resulting) count.

    ``batches``: (images, labels) for Taylor importance; None draws ``slim.taylor_batches``
    training batches of ``config.data``.
    """
    model = model.cpu().eval()
    size = config.data.crop_size
    graph, groups = channel_groups(model, torch.zeros(1, 3, size, size))
    if config.slim.importance == "taylor":
        accumulate_taylor_gradients(model, batches if batches is not None else _training_batches(config, config.slim.taylor_batches))
    scores = group_importance(graph, groups, config.slim.importance)
    model.zero_grad(set_to_none=True)
    removal, planned = plan_removal(model, groups, scores, target, config.slim.scope)
    remove_channels(graph, groups, removal)
    if parameter_count(model) != planned:  # a layer type the closed form does not know
        raise PruneError(f"pruned model has {parameter_count(model):,} parameters, the plan said {planned:,}")
    return planned


def pruned_config(config: RunConfig, model: torch.nn.Module) -> RunConfig:
    """``config`` describing ``model``: its narrowed layers in ``model.pruned_shapes``."""
    reference = create_model(config.model.arch, input_filter=config.model.input_filter)
    return replace(config, model=replace(config.model, pruned_shapes=layer_shapes(model, reference)))


def _step_config(config: RunConfig, model: torch.nn.Module, folder: Path, source: Path) -> RunConfig:
    shaped = pruned_config(config, model)
    teacher = str(source) if config.slim.distill else None
    return replace(shaped, train=replace(shaped.train, init=str(folder / PRUNED_CHECKPOINT), teacher=teacher, out=str(folder)))


def _row(step: int, model: torch.nn.Module, config: RunConfig, dense: int, metrics: dict[str, Any]) -> dict[str, Any]:
    size = config.data.crop_size
    row = {"step": step, "parameters": parameter_count(model), "removed": 1 - parameter_count(model) / dense, "macs": macs(model, size)}
    for group in ("seen", "mean_unseen"):
        if group in metrics:
            row[f"{group}_ap"], row[f"{group}_acc"] = metrics[group]["ap"], metrics[group]["acc"]
    return row


def _run_step(config: RunConfig, model: torch.nn.Module, folder: Path, source: Path, target: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Prune ``model`` to ``target`` and fine-tune it in ``folder`` (or resume / skip it)."""
    if (folder / METRICS_FILE).is_file():
        return json.loads((folder / METRICS_FILE).read_text())
    if (folder / LAST_CHECKPOINT).is_file():
        log(f"[slim] resuming {folder}")
        return run(load_config(folder / CONFIG_FILE), resume=True)
    planned = prune_channels(model, config, target)
    step_config = _step_config(config, model, folder, source)
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folder / PRUNED_CHECKPOINT, config=step_config, model=model)
    log(f"[slim] {folder}: {planned:,} parameters, fine-tuning {config.train.epochs} epoch(s)")
    return run(step_config)


def run_slim(config: RunConfig, source: str | Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Prune the float detector of checkpoint ``source`` as ``config.slim`` says; returns
    (and writes to ``slim.json``) one row per step, step 0 being the unpruned detector."""
    source, out = Path(source), Path(config.train.out)
    loaded = load_detector(source)
    if loaded.config.quant.enabled:
        raise PruneError(f"{source} is a quantized ({loaded.config.quant.tag}) detector: prune the float model first, then quantize it with train --init")
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / CONFIG_FILE)
    model, dense = loaded.model, parameter_count(loaded.model)
    rows = [_row(0, model, config, dense, {})]
    for step in range(1, config.slim.steps + 1):
        target = dense - round(config.slim.ratio * dense * step / config.slim.steps)
        folder = out / f"step_{step:02d}"
        metrics = _run_step(config, model, folder, source, target, log)
        model = load_detector(folder / BEST_CHECKPOINT).model
        rows.append(_row(step, model, config, dense, metrics))
    final = load_detector(folder / BEST_CHECKPOINT).config
    link_checkpoint(folder / BEST_CHECKPOINT, out / PRUNED_CHECKPOINT)
    save_config(replace(final, train=replace(final.train, init=None, teacher=None, out=None)), out / PRUNED_CONFIG)
    summary = {"source": str(source), "rows": rows}
    atomic_write_text(out / SLIM_FILE, json.dumps(summary, indent=2))
    return summary


def format_slim(rows: list[dict[str, Any]]) -> str:
    """The rows of ``slim.json`` as a table: step, parameters, share removed, MACs, APs."""
    lines = [f"{'step':>4} {'params':>10} {'removed':>8} {'MMACs':>8} {'seen AP':>8} {'unseen AP':>9}"]
    for row in rows:
        seen = f"{100 * row['seen_ap']:.1f}" if "seen_ap" in row else "-"
        unseen = f"{100 * row['mean_unseen_ap']:.1f}" if "mean_unseen_ap" in row else "-"
        lines.append(f"{row['step']:>4} {row['parameters']:>10,} {100 * row['removed']:>7.1f}% {row['macs'] / 1e6:>8.1f} {seen:>8} {unseen:>9}")
    return "\n".join(lines)
