"""``run(config)``: one training run from config to ``metrics.json``, in four named steps.

    session = prepare(config)          # device, processes, run folder, data, model, optimizer,
                                       # calibration or the resume point
    fit(session)                       # the training loop with its callbacks
    per_set = evaluate(session)        # the best checkpoint on every test family
    metrics = write_results(session, per_set)   # metrics.json and TensorBoard

:func:`run` chains them. File names come from :mod:`qmdd.run_folder`.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from qmdd.checkpoint import checkpoint_threshold, link_checkpoint, load_checkpoint, stored_config
from qmdd.config import RunConfig, carry_over, config_diff, save_config
from qmdd.cost import cost_summary
from qmdd.data import LoadFailure, TolerantImageSet, TrainingData, build_training_data, resolve_data_root
from qmdd.detector import build_detector, resolve_model_defaults, validate_config
from qmdd.metrics import BinaryMetrics, binary_metrics, mean_metrics
from qmdd.quant import calibrate
from qmdd.quant._native import kernels_in_use
from qmdd.run_folder import BEST_CHECKPOINT, CONFIG_FILE, LAST_CHECKPOINT, METRICS_FILE, RunFolderBusy, RunFolderLock, default_run_dir, remove_stale_temporaries
from qmdd.training._callbacks import Checkpointer, CheckpointWriteError, PlateauLRSchedule, TensorBoardLogger
from qmdd.training._distill import DistillationLoss, init_state_dict, load_teacher
from qmdd.training._distributed import (
    SINGLE_PROCESS,
    DistContext,
    broadcast_object,
    environment_world_size,
    init_distributed,
    on_main,
    sync_from_rank0,
)
from qmdd.training._loop import Callback, LossFn, Trainer, TrainState, bce_loss, predict
from qmdd.utils import OutputPathError, atomic_write_text, seed_everything, writable_dir

__all__ = ["run", "prepare", "fit", "evaluate", "write_results", "RunSession", "RunError", "resolve_device"]


class RunError(RuntimeError):
    """A run cannot start as asked (e.g. resuming a run that does not exist)."""


def resolve_device(name: str) -> torch.device:
    """The device of ``train.device``; under torchrun, CUDA means ``cuda:LOCAL_RANK``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"train.device={name!r} but CUDA is not available; use 'cpu' or 'auto'")
    if device.type == "cuda" and environment_world_size() > 1:
        if device.index is not None:
            raise RunError(
                f"train.device={name!r}: under torchrun every process takes the GPU of its "
                "LOCAL_RANK; use 'cuda' or 'auto' (and CUDA_VISIBLE_DEVICES to choose GPUs)"
            )
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def _check_parallel_setup(config: RunConfig, ctx: DistContext, device: torch.device) -> None:
    """Refuse settings that cannot run on this device or with this many processes."""
    if config.train.batch_size % ctx.world_size:
        raise RunError(
            f"train.batch_size={config.train.batch_size} is the global batch and must be a "
            f"multiple of the {ctx.world_size} processes"
        )
    if config.train.sync_bn and ctx.enabled and device.type != "cuda":
        raise RunError(
            "train.sync_bn=true needs CUDA (SyncBatchNorm runs on GPUs only). On CPU, set "
            "train.sync_bn=false: each rank then normalises with its own batch's statistics "
            "and DDP keeps rank 0's running statistics on every rank"
        )
    if config.train.amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise RunError(f"train.amp=bf16 but {torch.cuda.get_device_name(device)} has no bfloat16 support; use train.amp=none")


def _refuse_existing_run(out_dir: Path) -> None:
    if (out_dir / LAST_CHECKPOINT).exists():
        raise RunError(
            f"{out_dir} already holds a run ({LAST_CHECKPOINT}); pass --resume to continue it, "
            "or choose another --out"
        )


def _load_resume_point(out_dir: Path, config: RunConfig) -> tuple[dict[str, Any], RunConfig]:
    """``last.pt`` and the config to continue with: the saved one, with the keys a resumed
    run may change (``"resume": "free"`` fields: epochs, device, workers) taken from ``config``."""
    last = out_dir / LAST_CHECKPOINT
    if not last.is_file():
        raise RunError(f"--resume: {out_dir} holds no {LAST_CHECKPOINT} to continue from")
    payload = load_checkpoint(last)
    saved = resolve_model_defaults(stored_config(payload, last))
    trainer_state = payload.get("trainer") or {}
    if trainer_state.get("epoch") and trainer_state.get("best_epoch") == trainer_state.get("epoch"):
        # Interrupted between last.pt and its best.pt link: last.pt *is* the best epoch.
        link_checkpoint(last, out_dir / BEST_CHECKPOINT)
    changes = config_diff(saved, config, allow={"free"})
    if changes:
        raise RunError(
            "--resume with a different config would not continue the same run; differences: "
            + "; ".join(changes)
        )
    return payload, carry_over(saved, config)


def _calibration_batches(trainer: Trainer, count: int, device: torch.device):
    for index, (images, _) in enumerate(trainer.train_loader(epoch=0)):
        if index >= count:
            break
        yield images.to(device)


def _evaluate_tests(model: torch.nn.Module, data: TrainingData, batch_size: int, device: torch.device, num_workers: int, dist: DistContext = SINGLE_PROCESS, amp: str = "none", threshold: float | None = None) -> dict[str, BinaryMetrics]:
    """Every test family, scored. An unreadable image is skipped, as ``qmdd.eval`` skips it,
    and named in a warning: it must not end the run after all the training; the counts
    (``n_real``, ``n_fake``) are of the images scored."""
    results = {}
    for name, dataset in data.test.items():
        skipped: list[LoadFailure] = []
        # Predictions of all ranks gathered: the AP of the whole set, not a mean of shards.
        labels, scores = predict(model, TolerantImageSet.of(dataset), batch_size, device, num_workers, desc=f"test {name}", dist=dist, amp=amp, skipped=skipped)
        if skipped and dist.is_main:
            more = f"; and {len(skipped) - 10} more" if len(skipped) > 10 else ""
            warnings.warn(f"test set {name}: {len(skipped)} unreadable image(s) skipped: " + "; ".join(f.error for f in skipped[:10]) + more, stacklevel=2)
        results[name] = binary_metrics(labels, scores, calibrated_threshold=threshold)
    return results


def _summary(per_set: dict[str, BinaryMetrics], seen: str | None) -> dict[str, Any]:
    summary: dict[str, Any] = {"test": {name: m.as_dict() for name, m in per_set.items()}}
    unseen = [m for name, m in per_set.items() if name != seen]
    if seen in per_set:
        summary["seen"] = per_set[seen].as_dict()
    if unseen:
        summary["mean_unseen"] = mean_metrics(unseen).as_dict()
    if per_set:
        summary["mean_all"] = mean_metrics(per_set.values()).as_dict()
    return summary


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _init_state(config: RunConfig) -> dict[str, Any] | None:
    """Float weights from ``train.init``, checked against the float model (not on resume)."""
    if config.train.init is None:
        return None
    float_config = replace(config, quant=config.quant.at_full_precision())
    shapes = {k: v.shape for k, v in build_detector(float_config, pretrained=False).state_dict().items()}
    try:
        return init_state_dict(config.train.init, config.model.arch, shapes)
    except ValueError as error:
        raise RunError(str(error)) from None


def _with_teacher(config: RunConfig, loss_fn: LossFn, device: torch.device) -> LossFn:
    """Wrap the loss in distillation from ``train.teacher`` (reloaded on resume too)."""
    if config.train.teacher is None:
        return loss_fn
    if loss_fn is not bce_loss:
        raise RunError("train.teacher replaces the BCE loss; it cannot be combined with a custom loss_fn")
    teacher = load_teacher(config.train.teacher, device)
    return DistillationLoss(teacher, config.train.distill_alpha, config.train.distill_temperature)


def _log_hparams(writer: SummaryWriter, config: RunConfig, metrics: dict[str, Any]) -> None:
    """One TensorBoard hparams entry per run: its setting, costs and headline metrics."""
    hparams = {
        "arch": config.model.arch,
        "quant": config.quant.tag,
        "quantizer": config.quant.quantizer,
        "lr": config.train.lr,
        "seed": config.train.seed,
    }
    results = {f"cost/{k}": float(v) for k, v in metrics["cost"].items() if isinstance(v, (int, float)) and k != "input_size"}
    for group in ("seen", "mean_unseen"):
        if group in metrics:
            results[f"hparam/{group}_ap"] = float(metrics[group]["ap"])
            results[f"hparam/{group}_acc"] = float(metrics[group]["acc"])
    writer.add_hparams(hparams, results, run_name="hparams")


@dataclass
class RunSession:
    """What :func:`prepare` sets up and the later steps use."""

    config: RunConfig
    ctx: DistContext
    device: torch.device
    out_dir: Path
    data: TrainingData
    model: nn.Module
    trainer: Trainer
    writer: SummaryWriter | None
    lock: RunFolderLock | None = None

    def close(self) -> None:
        """Release the run folder (safe to call twice)."""
        if self.lock is not None:
            self.lock.release()


def prepare(config: RunConfig, *, resume: bool = False, callbacks: tuple[Callback, ...] = (), loss_fn: LossFn = bce_loss) -> RunSession:
    """Everything before the first step: device and processes, the run folder (new, or the
    resume point), data, model, teacher, optimizer, and calibration (or the restored state).

    Under torchrun (WORLD_SIZE > 1) this process joins the DDP group; files are read and
    written by rank 0 only, and what it reads reaches the others by broadcast, so the run
    folder need not be on a filesystem every node sees.
    """
    config = resolve_model_defaults(validate_config(config))
    device = resolve_device(config.train.device)
    ctx = init_distributed(device)
    _check_parallel_setup(config, ctx, device)
    # One folder name for all ranks: the default's time stamp could differ between them.
    out_dir = broadcast_object(Path(config.train.out) if config.train.out else default_run_dir(config.model.arch, config.quant.tag), ctx)
    config = replace(config, train=replace(config.train, out=str(out_dir)))
    # The lock stays on rank 0 (on_main would hand its return value to every rank).
    locks: list[RunFolderLock] = []
    on_main(lambda: locks.append(_claim_run_folder(out_dir)), ctx)
    lock = locks[0] if locks else None
    try:
        return _prepare_in(out_dir, config, ctx, device, lock, resume, callbacks, loss_fn)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _claim_run_folder(out_dir: Path) -> RunFolderLock:
    """Create the run folder, prove it writable and lock it for this run (rank 0)."""
    try:
        writable_dir(out_dir, "--out")
        return RunFolderLock(out_dir).acquire()
    except (OutputPathError, RunFolderBusy) as error:
        raise RunError(str(error)) from None


def _prepare_in(out_dir: Path, config: RunConfig, ctx: DistContext, device: torch.device, lock: RunFolderLock | None, resume: bool, callbacks: tuple[Callback, ...], loss_fn: LossFn) -> RunSession:
    payload = None
    if resume:
        payload, config = on_main(lambda: _load_resume_point(out_dir, config), ctx)
        on_main(lambda: remove_stale_temporaries(out_dir), ctx)
    else:
        on_main(lambda: _refuse_existing_run(out_dir), ctx)
    seed_everything(config.train.seed)
    on_main(lambda: resolve_data_root(config.data), ctx)  # rank 0 builds the embedded benchmark once
    data = build_training_data(config.data, seed=config.train.seed)
    # A resumed run's weights come from last.pt: never download ImageNet weights for it.
    init_state = _init_state(config) if payload is None else None
    model = build_detector(config, pretrained=None if payload is None else False, init_state=init_state).to(device)
    writer = SummaryWriter(log_dir=str(out_dir)) if ctx.is_main else None
    trainer = _make_trainer(config, model, data, device, ctx, writer, _with_teacher(config, loss_fn, device), callbacks)
    if payload is not None:
        model.load_state_dict(payload["model"])
        trainer.optimizer.load_state_dict(payload["optimizer"])
        trainer.state = TrainState.from_dict(payload["trainer"])
        torch.set_rng_state(payload["torch_rng"])
    else:
        # Quantizer steps come from data *before* the optimizer sees them (docs/quantization.md).
        calibrate(model, _calibration_batches(trainer, config.quant.calibration_batches, device))
        # Each rank calibrated on its own shard: all start from rank 0's steps.
        sync_from_rank0(model, ctx)
    if ctx.is_main:
        save_config(config, out_dir / CONFIG_FILE)
    return RunSession(config, ctx, device, out_dir, data, model, trainer, writer, lock)


def _make_trainer(config: RunConfig, model: nn.Module, data: TrainingData, device: torch.device, ctx: DistContext, writer: SummaryWriter | None, loss_fn: LossFn, callbacks: tuple[Callback, ...]) -> Trainer:
    train = config.train
    optimizer = torch.optim.Adam(
        model.parameters(), lr=train.lr, betas=train.betas, weight_decay=train.weight_decay,
        # One fused kernel per parameter instead of ~10 elementwise passes: the update of
        # ResNet-18 drops from ~140 ms to ~20 ms per step on one CPU core (same maths, to
        # float rounding; docs/performance.md).
        fused=True,
    )
    return Trainer(
        model,
        optimizer,
        data.train,
        data.val,
        batch_size=train.batch_size,
        device=device,
        seed=train.seed,
        state=TrainState(lr=train.lr),
        callbacks=[
            PlateauLRSchedule(train.plateau_patience, train.lr_decay_factor, train.min_lr),
            *([Checkpointer(Path(train.out), config)] if ctx.is_main else []),
            TensorBoardLogger(writer, train.log_every),
            *callbacks,
        ],
        loss_fn=loss_fn,
        num_workers=config.data.num_workers,
        dist=ctx,
        amp=train.amp,
        sync_batchnorm=train.sync_bn,
        min_delta=train.min_val_gain,
    )


def fit(session: RunSession) -> TrainState:
    """Train to ``train.epochs`` (or until the plateau schedule stops); on Ctrl-C, say how
    to continue."""
    try:
        return session.trainer.fit(session.config.train.epochs)
    except (KeyboardInterrupt, CheckpointWriteError) as error:
        if session.writer is not None:
            session.writer.close()
        cause = str(error) if isinstance(error, CheckpointWriteError) else f"interrupted after {session.trainer.state.epoch} finished epoch(s)"
        continue_with = (
            f"continue with python -m qmdd.train --resume --out {session.out_dir}"
            if (session.out_dir / LAST_CHECKPOINT).exists()
            else "no epoch was saved yet, so start it again"
        )
        raise RunError(f"{cause}; {continue_with}") from None


def evaluate(session: RunSession) -> tuple[dict[str, BinaryMetrics], float]:
    """The best checkpoint on every test family, with the threshold it was saved with."""
    best = on_main(lambda: load_checkpoint(session.out_dir / BEST_CHECKPOINT), session.ctx)
    session.model.load_state_dict(best["model"])
    threshold = checkpoint_threshold(best)
    config = session.config
    per_set = _evaluate_tests(session.model, session.data, config.train.batch_size * 2, session.device, config.data.num_workers, session.ctx, config.train.amp, threshold)
    return per_set, threshold


def write_results(session: RunSession, per_set: dict[str, BinaryMetrics], threshold: float) -> dict[str, Any]:
    """``metrics.json`` (atomically) and the test scalars and hparams in TensorBoard, on
    rank 0; every rank returns the same metrics."""
    config, state, data = session.config, session.trainer.state, session.data
    metrics: dict[str, Any] = {
        "run_dir": str(session.out_dir),
        "benchmark": data.benchmark,
        "data_root": str(data.root),
        "arch": config.model.arch,
        "quant": config.quant.tag,
        "quantizer": config.quant.quantizer if config.quant.enabled else None,
        "seen_family": data.seen_family,
        # Fitted on val at the best epoch; "cal_acc" in every set is the accuracy at it.
        "threshold": threshold,
        **_summary(per_set, data.seen_family),
        "best_epoch": state.best_epoch,
        "epochs_trained": state.epoch,
        "val_best": state.best_record,
        "train_time_s": round(state.elapsed_s, 2),
        "train_images": len(data.train),
        "world_size": session.ctx.world_size,
        "fake_quant_kernels": kernels_in_use(),  # native C++ or the Python forms (qmdd/quant/_native.py)
        # What quantization saves, counted for the trained input size (docs/deployment.md).
        "cost": cost_summary(session.model, config.data.crop_size),
    }
    if not session.ctx.is_main:
        return metrics
    writer = session.writer
    for name, m in per_set.items():
        writer.add_scalar(f"test/{name}/ap", m.ap, state.step)
        writer.add_scalar(f"test/{name}/acc", m.acc, state.step)
    for group in ("seen", "mean_unseen"):
        if group in metrics:
            writer.add_scalar(f"test/{group}/ap", metrics[group]["ap"], state.step)
            writer.add_scalar(f"test/{group}/acc", metrics[group]["acc"], state.step)
    _log_hparams(writer, config, metrics)
    writer.close()
    atomic_write_text(session.out_dir / METRICS_FILE, json.dumps(_json_safe(metrics), indent=2) + "\n")
    return metrics


def run(
    config: RunConfig,
    *,
    resume: bool = False,
    callbacks: tuple[Callback, ...] = (),
    loss_fn: LossFn = bce_loss,
) -> dict[str, Any]:
    """Train and evaluate one detector; returns what it writes to ``metrics.json``.

    The run folder (``config.train.out``) receives ``config.yaml``, TensorBoard events,
    ``last.pt``/``best.pt`` after every epoch and, at the end, ``metrics.json`` with the
    per-family test metrics of the best-validation checkpoint (docs/usage.md).
    """
    session = prepare(config, resume=resume, callbacks=callbacks, loss_fn=loss_fn)
    try:
        fit(session)
        per_set, threshold = evaluate(session)
        return write_results(session, per_set, threshold)
    finally:
        session.close()
