"""The closed training loop, extended by callbacks.

The loop itself only trains an epoch, validates, and hands the result to its callbacks in
order; everything else (TensorBoard, early stopping with lr drops, checkpoints) is a
callback, so new behaviour (pruning levels, distillation logging) plugs in without touching
the loop.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from qmdd.data.folder import ImageSet
from qmdd.metrics import BinaryMetrics, binary_metrics

__all__ = ["TrainState", "Callback", "Trainer", "EpochShuffleSampler", "predict", "bce_loss", "LossFn"]

#: ``loss_fn(model, images, labels) -> scalar loss``; labels are float {0, 1}.
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def bce_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CNNDetection's loss: binary cross-entropy on the single logit."""
    logits = model(images).squeeze(1)
    return nn.functional.binary_cross_entropy_with_logits(logits, labels)


@dataclass
class TrainState:
    """Everything the loop needs to continue exactly where it stopped."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed
    lr: float = 0.0
    best_val_acc: float = -math.inf
    best_epoch: int = 0  # epoch (1-based) whose weights are in best.pt; 0 = none yet
    epochs_without_gain: int = 0
    stopped_early: bool = False
    elapsed_s: float = 0.0  # training wall time summed over resumed sessions
    history: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainState":
        return cls(**values)


class Callback:
    """Hooks the loop calls; override what you need. ``trainer`` gives full access."""

    def on_fit_start(self, trainer: "Trainer") -> None:
        pass

    def on_step_end(self, trainer: "Trainer", loss: torch.Tensor) -> None:
        pass

    def on_epoch_end(self, trainer: "Trainer", val: BinaryMetrics) -> None:
        pass

    def on_fit_end(self, trainer: "Trainer") -> None:
        pass


class EpochShuffleSampler(Sampler[int]):
    """A fresh permutation per epoch, seeded by ``(seed, epoch)``: resumable by construction."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(np.random.default_rng((self.seed, self.epoch)).permutation(self.size).tolist())

    def __len__(self) -> int:
        return self.size


@torch.no_grad()
def predict(model: nn.Module, dataset: ImageSet, batch_size: int, device: torch.device, num_workers: int = 0, desc: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Labels and fake probabilities ``sigmoid(logit)`` for every image of ``dataset``."""
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    labels, scores = [], []
    for images, batch_labels in tqdm(loader, desc=desc or dataset.name, leave=False, disable=None):
        logits = model(images.to(device, non_blocking=True)).squeeze(1)
        scores.append(torch.sigmoid(logits.float()).cpu().numpy())
        labels.append(batch_labels.numpy())
    model.train(was_training)
    return np.concatenate(labels), np.concatenate(scores)


class Trainer:
    """Trains ``model`` on ``train_set``, validating on ``val_set`` after every epoch."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        train_set: ImageSet,
        val_set: ImageSet,
        *,
        batch_size: int,
        device: torch.device,
        seed: int,
        state: TrainState | None = None,
        callbacks: Sequence[Callback] = (),
        loss_fn: LossFn = bce_loss,
        num_workers: int = 0,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.train_set = train_set
        self.val_set = val_set
        self.batch_size = batch_size
        self.device = device
        self.state = state or TrainState(lr=optimizer.param_groups[0]["lr"])
        self.callbacks = list(callbacks)
        self.loss_fn = loss_fn
        self.num_workers = num_workers
        self.sampler = EpochShuffleSampler(len(train_set), seed)
        # Batch-norm cannot train on a batch of one: drop the ragged tail when it could be.
        self._drop_last = len(train_set) > batch_size

    def train_loader(self, epoch: int) -> DataLoader:
        self.sampler.set_epoch(epoch)
        self.train_set.set_epoch(epoch)
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=self.sampler,
            num_workers=self.num_workers,
            drop_last=self._drop_last,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,  # the dataset's epoch must reach the workers
        )

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.state.lr = lr

    def fit(self, epochs: int) -> TrainState:
        self.set_lr(self.state.lr)
        for callback in self.callbacks:
            callback.on_fit_start(self)
        while self.state.epoch < epochs and not self.state.stopped_early:
            started = time.perf_counter()
            self._train_epoch(self.state.epoch)
            val = self.validate()
            self.state.epoch += 1
            self.state.elapsed_s += time.perf_counter() - started
            self.state.history.append({"epoch": self.state.epoch, "lr": self.state.lr, **val.as_dict()})
            for callback in self.callbacks:
                callback.on_epoch_end(self, val)
        for callback in self.callbacks:
            callback.on_fit_end(self)
        return self.state

    def _train_epoch(self, epoch: int) -> None:
        self.model.train()
        loader = self.train_loader(epoch)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, disable=None)
        for images, labels in bar:
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, dtype=torch.float32, non_blocking=True)
            loss = self.loss_fn(self.model, images, labels)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"training loss became {loss.item()} at step {self.state.step}; "
                    "lower train.lr or check the data"
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.state.step += 1
            for callback in self.callbacks:
                callback.on_step_end(self, loss.detach())
            if self.state.step % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")

    def validate(self) -> BinaryMetrics:
        labels, scores = predict(self.model, self.val_set, self.batch_size, self.device, self.num_workers, desc="val")
        return binary_metrics(labels, scores)
