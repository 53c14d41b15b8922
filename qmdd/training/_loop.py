"""The closed training loop, extended by callbacks.

The loop itself only trains an epoch, validates, records the result (which epoch is the
best so far, the decision threshold fitted on validation) and hands it to its callbacks;
everything else (TensorBoard, the plateau lr schedule, checkpoints) is a callback that
reads the recorded state, so callbacks do not depend on one another's order, and new
behaviour (pruning levels, distillation logging) plugs in without touching the loop.

The same loop runs as one process or as one rank of a DistributedDataParallel group
(``dist``, see :mod:`qmdd.training._distributed`): each rank trains on its shard of every
global batch, validation predictions are gathered from all ranks, and callbacks see the
same validation metrics on every rank.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ContextManager, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from qmdd.data.folder import ImageLoadError, ImageSet, LoadFailure, collate_skipping_failures
from qmdd.detector import fake_probability
from qmdd.metrics import DEFAULT_THRESHOLD, BinaryMetrics, best_threshold_accuracy, binary_metrics
from qmdd.training._distributed import (
    SINGLE_PROCESS,
    DistContext,
    all_gather_objects,
    any_rank,
    epoch_torch_seed,
    gather_in_order,
    shard_indices,
    wrap_data_parallel,
)

__all__ = [
    "TrainState",
    "Callback",
    "Trainer",
    "EpochShuffleSampler",
    "predict",
    "bce_loss",
    "LossFn",
    "AMP_DTYPES",
    "autocast",
]

#: ``loss_fn(model, images, labels) -> scalar loss``; labels are float {0, 1}.
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]

#: ``train.amp`` -> the autocast dtype (None: full FP32). bf16 needs no loss scaling: it
#: keeps FP32's exponent range, so gradients neither underflow nor overflow.
AMP_DTYPES: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16}

# Steps between host-device synchronisations in the hot loop (the non-finite-loss check
# and the progress-bar loss): reading a CUDA tensor waits for the GPU, so doing it every
# step would stall the queue of kernels the CPU has launched ahead.
_SYNC_EVERY = 10


def bce_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CNNDetection's loss: binary cross-entropy on the single logit."""
    logits = model(images).squeeze(1)
    # In FP32 also under autocast: the log-sigmoid of a bf16 logit loses the small losses.
    return nn.functional.binary_cross_entropy_with_logits(logits.float(), labels)


def autocast(device: torch.device, amp: str) -> ContextManager:
    """The mixed-precision context of ``train.amp`` on ``device`` (a no-op for ``none``)."""
    dtype = AMP_DTYPES[amp]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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

    def record_epoch(self, val: BinaryMetrics, threshold: float, min_delta: float) -> bool:
        """Append a finished epoch's validation result; True when it is the new best.

        Best = the highest validation accuracy, an epoch counting as progress only when it
        beats the best so far by more than ``min_delta`` (CNNDetection: 0.001); the first
        epoch is always the best so far.
        """
        self.history.append({"epoch": self.epoch, "lr": self.lr, **val.as_dict(), "threshold": threshold})
        if val.acc > self.best_val_acc + min_delta or self.best_epoch == 0:
            self.best_val_acc = max(val.acc, self.best_val_acc)
            self.best_epoch = self.epoch
            self.epochs_without_gain = 0
            return True
        self.epochs_without_gain += 1
        return False

    @property
    def best_record(self) -> dict[str, Any] | None:
        """The history entry of the best epoch (None before the first)."""
        return self.history[self.best_epoch - 1] if self.best_epoch else None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainState":
        return cls(**values)


class Callback:
    """Hooks the loop calls; override what you need. ``trainer`` gives full access.

    Under DDP every rank runs every callback; ``trainer.dist.is_main`` tells rank 0, the
    one that should write files.
    """

    def on_fit_start(self, trainer: "Trainer") -> None:
        pass

    def on_step_end(self, trainer: "Trainer", loss: torch.Tensor) -> None:
        pass

    def on_epoch_end(self, trainer: "Trainer", val: BinaryMetrics) -> None:
        pass

    def on_fit_end(self, trainer: "Trainer") -> None:
        pass


class EpochShuffleSampler(Sampler[int]):
    """A fresh permutation per epoch, seeded by ``(seed, epoch)``: resumable by construction.

    With ``world_size > 1`` every rank draws the *same* permutation and takes every
    ``world_size``-th entry from position ``rank``, so the ranks' batches of step t are
    together the global batch a single process would take at step t. The permutation is
    cut to a multiple of ``world_size`` (at most world_size - 1 images, a different few
    each epoch, sit out) so that all ranks take the same number of steps.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        self.size, self.seed, self.epoch = size, seed, 0
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng((self.seed, self.epoch)).permutation(self.size)
        if self.world_size > 1:
            order = order[self.rank : self.size - self.size % self.world_size : self.world_size]
        return iter(order.tolist())

    def __len__(self) -> int:
        return self.size // self.world_size if self.world_size > 1 else self.size


class _EpochTaggedSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)``: the epoch travels with every index to the loader workers.

    Persistent workers hold their own copy of the dataset, made when they start, so
    ``ImageSet.set_epoch`` in the main process would not reach them; tagging each index
    keeps augmentation seeded by (seed, epoch, index) while the workers live across epochs.
    """

    def __init__(self, sampler: EpochShuffleSampler) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.sampler.epoch
        return ((epoch, index) for index in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class _EpochIndexed(Dataset):
    """``dataset[(epoch, index)]`` = ``dataset[index]`` as augmented in that epoch."""

    def __init__(self, dataset: ImageSet) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        if self.dataset.epoch != epoch:
            self.dataset.set_epoch(epoch)  # this process's copy: a worker's or the main one
        return self.dataset[index]


def _loader_options(device: torch.device, num_workers: int) -> dict[str, Any]:
    """DataLoader options for speed: page-locked batches for async CUDA copies, and
    workers that live across epochs (no process start-up per epoch)."""
    options: dict[str, Any] = {"num_workers": num_workers, "pin_memory": device.type == "cuda"}
    if num_workers > 0:
        options["persistent_workers"] = True
    return options


def _eval_loader(dataset: ImageSet, batch_size: int, device: torch.device, num_workers: int, dist: DistContext, persistent: bool = False) -> DataLoader:
    """Loader over this rank's shard of ``dataset``, in order, yielding
    ``(images or None, labels, indices, failures)`` (see :func:`collate_skipping_failures`)."""
    indices = shard_indices(len(dataset), dist)
    options = _loader_options(device, num_workers)
    if not persistent:
        options.pop("persistent_workers", None)
    return DataLoader(_WithIndex(dataset), batch_size=batch_size, sampler=indices, collate_fn=collate_skipping_failures, **options)


class _WithIndex(Dataset):
    """``(image, label, index)``: the index puts gathered predictions back in order. A
    :class:`~qmdd.data.TolerantImageSet`'s ``LoadFailure`` passes through."""

    def __init__(self, dataset: ImageSet) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item = self.dataset[index]
        if isinstance(item, LoadFailure):
            return item
        return item[0], item[1], index


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset: ImageSet,
    batch_size: int,
    device: torch.device,
    num_workers: int = 0,
    desc: str | None = None,
    *,
    dist: DistContext = SINGLE_PROCESS,
    amp: str = "none",
    loader: DataLoader | None = None,
    skipped: list[LoadFailure] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and fake probabilities ``sigmoid(logit)`` for every image of ``dataset``.

    Under DDP each rank predicts its shard and the shards are gathered, so every rank
    returns the whole set in dataset order and AP is computed over all of it, exactly.
    ``loader`` reuses a loader from an earlier call (one made by this module for the same
    dataset and rank). Images a :class:`~qmdd.data.TolerantImageSet` could not read are
    left out of both arrays and appended to ``skipped`` (those of every rank, in dataset
    order); without a ``skipped`` list they raise :class:`~qmdd.data.ImageLoadError`.
    """
    was_training = model.training
    model.eval()
    if loader is None:
        loader = _eval_loader(dataset, batch_size, device, num_workers, dist)
    labels, scores, indices, failures = [], [], [], []
    with autocast(device, amp):
        for images, batch_labels, batch_indices, batch_failures in tqdm(loader, desc=desc or dataset.name, leave=False, disable=None if dist.is_main else True):
            failures.extend(batch_failures)
            if images is None:
                continue
            scores.append(fake_probability(model, images.to(device, non_blocking=True)).cpu().numpy())
            labels.append(batch_labels.numpy())
            indices.append(batch_indices.numpy())
    model.train(was_training)
    lost = sorted((f for part in all_gather_objects(failures, dist) for f in part), key=lambda f: f.index)
    if lost and skipped is None:
        raise ImageLoadError(f"{len(lost)} image(s) of {desc or dataset.name} unreadable, first: {lost[0].error}")
    empty = np.zeros(0)
    local = [np.concatenate(x) if x else empty for x in (indices, labels, scores)]
    ordered_labels, ordered_scores = gather_in_order(local[0], local[1].astype(np.int64), local[2].astype(np.float32), size=len(dataset) - len(lost), ctx=dist)
    if skipped is not None:
        skipped.extend(lost)
    return ordered_labels, ordered_scores


class Trainer:
    """Trains ``model`` on ``train_set``, validating on ``val_set`` after every epoch.

    ``batch_size`` is the global batch: under DDP (``dist.world_size`` ranks) each rank
    takes batch_size / world_size images per step. ``model`` stays the plain module (what
    callbacks, checkpoints and evaluation see); :attr:`train_model` is what the training
    step calls: ``model`` itself, or its DDP wrapper, built at the start of :meth:`fit`
    (after calibration: docs/quantization.md, "Calibration is explicit").
    """

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
        dist: DistContext = SINGLE_PROCESS,
        amp: str = "none",
        sync_batchnorm: bool = False,
        min_delta: float = 0.0,
    ) -> None:
        if batch_size % dist.world_size:
            raise ValueError(
                f"batch size {batch_size} (global) must be a multiple of the {dist.world_size} processes"
            )
        if amp not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {list(AMP_DTYPES)}, got {amp!r}")
        self.model = model
        self.optimizer = optimizer
        self.train_set = train_set
        self.val_set = val_set
        self.batch_size = batch_size
        self.device = device
        self.seed = seed
        self.state = state or TrainState(lr=optimizer.param_groups[0]["lr"])
        self.callbacks = list(callbacks)
        self.loss_fn = loss_fn
        self.num_workers = num_workers
        self.dist = dist
        self.amp = amp
        self.sync_batchnorm = sync_batchnorm
        self.min_delta = min_delta
        self.train_model: nn.Module | None = None
        #: Decision threshold fitted on the last validation pass (best accuracy there).
        self.val_threshold = DEFAULT_THRESHOLD
        self.sampler = EpochShuffleSampler(len(train_set), seed, dist.rank, dist.world_size)
        self._rank_batch = batch_size // dist.world_size
        # Batch-norm cannot train on a batch of one: drop the ragged tail when it could be.
        self._drop_last = len(self.sampler) > self._rank_batch
        self._train_loader: DataLoader | None = None
        self._val_loader: DataLoader | None = None

    def train_loader(self, epoch: int) -> DataLoader:
        """This rank's loader for ``epoch`` (one loader whose workers live across epochs)."""
        self.sampler.set_epoch(epoch)
        self.train_set.set_epoch(epoch)
        if self._train_loader is None:
            self._train_loader = DataLoader(
                _EpochIndexed(self.train_set),
                batch_size=self._rank_batch,
                sampler=_EpochTaggedSampler(self.sampler),
                drop_last=self._drop_last,
                **_loader_options(self.device, self.num_workers),
            )
        return self._train_loader

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.state.lr = lr

    def fit(self, epochs: int) -> TrainState:
        self.set_lr(self.state.lr)
        if self.train_model is None:
            self.train_model = wrap_data_parallel(self.model, self.dist, self.device, self.sync_batchnorm)
        for callback in self.callbacks:
            callback.on_fit_start(self)
        while self.state.epoch < epochs and not self.state.stopped_early:
            started = time.perf_counter()
            self._train_epoch(self.state.epoch)
            val = self.validate()
            self.state.epoch += 1
            self.state.elapsed_s += time.perf_counter() - started
            self.state.record_epoch(val, self.val_threshold, self.min_delta)
            for callback in self.callbacks:
                callback.on_epoch_end(self, val)
        for callback in self.callbacks:
            callback.on_fit_end(self)
        return self.state

    def _train_epoch(self, epoch: int) -> None:
        model = self.train_model if self.train_model is not None else self.model
        model.train()
        if self.dist.enabled:
            # Dropout draws differ per rank and are re-derivable on resume (see the helper).
            torch.manual_seed(epoch_torch_seed(self.seed, epoch, self.dist.rank))
        loader = self.train_loader(epoch)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, disable=None if self.dist.is_main else True)
        nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        first_unchecked = self.state.step
        for images, labels in bar:
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, dtype=torch.float32, non_blocking=True)
            with autocast(self.device, self.amp):
                loss = self.loss_fn(model, images, labels)
            nonfinite |= ~torch.isfinite(loss.detach())
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.state.step += 1
            for callback in self.callbacks:
                callback.on_step_end(self, loss.detach())
            if self.state.step % _SYNC_EVERY == 0:
                self._check_finite(nonfinite, first_unchecked)
                first_unchecked = self.state.step
                bar.set_postfix(loss=f"{loss.item():.4f}")
        self._check_finite(nonfinite, first_unchecked)

    def _check_finite(self, nonfinite: torch.Tensor, first_step: int) -> None:
        # Every rank takes the same decision, so none waits in a collective for a peer
        # that stopped.
        if any_rank(bool(nonfinite), self.dist):
            raise FloatingPointError(
                f"training loss became non-finite between steps {first_step + 1} and "
                f"{self.state.step}; lower train.lr or check the data"
            )

    def validate(self) -> BinaryMetrics:
        if self._val_loader is None:
            # Persistent: the validation workers too live across epochs.
            self._val_loader = _eval_loader(self.val_set, self.batch_size, self.device, self.num_workers, self.dist, persistent=True)
        labels, scores = predict(
            self.model, self.val_set, self.batch_size, self.device, desc="val",
            dist=self.dist, amp=self.amp, loader=self._val_loader,
        )
        # Accuracy at 0.5 lags AP after quantization (the logits shift): the threshold that
        # is best on validation travels with the checkpoint (docs/usage.md).
        self.val_threshold = best_threshold_accuracy(labels, scores)[1]
        return binary_metrics(labels, scores, calibrated_threshold=self.val_threshold)
