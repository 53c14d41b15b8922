"""Callbacks of the training loop: the plateau lr schedule, checkpoints, TensorBoard.

Each reads what the loop recorded for the epoch (``trainer.state``: the best epoch, the
epochs without a gain, the validation threshold), never another callback's work, so their
order does not matter.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter

from qmdd.config import RunConfig
from qmdd.metrics import BinaryMetrics
from qmdd.quant import quantized_layers
from qmdd.training._distributed import all_reduce_mean
from qmdd.training._loop import Callback, Trainer
from qmdd.checkpoint import link_checkpoint, save_checkpoint
from qmdd.utils import is_disk_full
from qmdd.run_folder import BEST_CHECKPOINT, LAST_CHECKPOINT

__all__ = ["PlateauLRSchedule", "Checkpointer", "CheckpointWriteError", "TensorBoardLogger"]


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, folder gone...); the previous one is intact."""


class PlateauLRSchedule(Callback):
    """CNNDetection's schedule on validation accuracy (the loop records the gains).

    ``patience`` epochs without a gain divide the lr by ``decay_factor`` and restart the
    count; once the lr would fall below ``min_lr`` training stops.
    """

    def __init__(self, patience: int, decay_factor: float, min_lr: float) -> None:
        self.patience, self.decay_factor, self.min_lr = patience, decay_factor, min_lr

    def on_epoch_end(self, trainer: Trainer, val: BinaryMetrics) -> None:
        state = trainer.state
        if state.epochs_without_gain >= self.patience:
            new_lr = state.lr / self.decay_factor
            if new_lr < self.min_lr:
                state.stopped_early = True
            else:
                trainer.set_lr(new_lr)
                state.epochs_without_gain = 0


class Checkpointer(Callback):
    """Writes ``last.pt`` after every epoch and ``best.pt`` when validation improves.

    Under DDP only rank 0 is given one: the ranks hold identical models.
    """

    def __init__(self, out_dir: Path, config: RunConfig) -> None:
        self.out_dir, self.config = out_dir, config

    def on_epoch_end(self, trainer: Trainer, val: BinaryMetrics) -> None:
        # last.pt first, then best.pt as a link to it: if the process dies (or the disk
        # fills) in between, last.pt is the resume point and resuming restores best.pt
        # from it (repair_best_checkpoint).
        last = self.out_dir / LAST_CHECKPOINT
        try:
            save_checkpoint(last, config=self.config, model=trainer.model, optimizer=trainer.optimizer, trainer=trainer.state.as_dict(), threshold=trainer.val_threshold)
            if trainer.state.best_epoch == trainer.state.epoch:
                link_checkpoint(last, self.out_dir / BEST_CHECKPOINT)
        except (OSError, RuntimeError) as error:
            full = is_disk_full(error) or shutil.disk_usage(self.out_dir).free < 64 * 2**20
            reason = "the disk is full" if full else str(error).strip().splitlines()[0]
            raise CheckpointWriteError(f"cannot write the checkpoint of epoch {trainer.state.epoch} into {self.out_dir}: {reason}") from None


class TensorBoardLogger(Callback):
    """Training loss and lr per step, validation metrics and quantizer steps per epoch.

    Under DDP every rank runs it (the logged loss is the mean over ranks, an all-reduce
    every ``log_every`` steps that all ranks must join) but only rank 0 has a ``writer``;
    the others pass None.
    """

    def __init__(self, writer: SummaryWriter | None, log_every: int) -> None:
        self.writer, self.log_every = writer, log_every

    def on_step_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        step = trainer.state.step
        if step % self.log_every == 0:
            loss = all_reduce_mean(loss, trainer.dist)
            if self.writer is not None:
                self.writer.add_scalar("train/loss", float(loss), step)
                self.writer.add_scalar("train/lr", trainer.state.lr, step)

    def on_epoch_end(self, trainer: Trainer, val: BinaryMetrics) -> None:
        if self.writer is None:
            return
        step = trainer.state.step
        for name in ("ap", "acc", "real_acc", "fake_acc"):
            self.writer.add_scalar(f"val/{name}", getattr(val, name), step)
        self.writer.add_scalar("train/epoch", trainer.state.epoch, step)
        for layer_name, layer in quantized_layers(trainer.model):
            for role, quantizer in (("weight_step", layer.weight_quantizer), ("input_step", layer.input_quantizer)):
                step_param = getattr(quantizer, "step", None)
                if isinstance(step_param, torch.Tensor) and step_param.numel():
                    self.writer.add_scalar(f"quant/{layer_name}/{role}", float(step_param.detach().abs().mean()), step)
        self.writer.flush()

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.flush()
