"""Distributed data-parallel training: the process group, rank roles and collectives.

``torchrun --nproc_per_node N -m qmdd.train ...`` starts N processes and tells each its
place through the environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``). :func:`init_distributed` reads it and joins the process group: gloo on
CPU, NCCL on CUDA (one GPU per process, ``cuda:LOCAL_RANK``). A plain ``python -m
qmdd.train`` sees no such variables and runs as one process, exactly as before.

Division of labour (docs/usage.md, "Distributed training"):

- ``train.batch_size`` is the *global* batch: every rank takes batch_size / world_size
  images of the same seeded permutation per step, so hyperparameters and data order do not
  depend on the number of processes;
- every rank calibrates, then all take rank 0's quantizer state (:func:`sync_from_rank0`)
  before DDP is built, so the learned steps start identical everywhere;
- validation and test predictions are gathered from all ranks, so AP is computed exactly
  over the whole set (AP is not an average of per-shard APs) and every rank takes the same
  early-stopping decision;
- only rank 0 writes TensorBoard events, checkpoints, ``config.yaml`` and ``metrics.json``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import numpy as np
import torch
from torch import distributed as dist
from torch import nn

__all__ = [
    "DistContext",
    "SINGLE_PROCESS",
    "environment_world_size",
    "init_distributed",
    "leave_process_group",
    "broadcast_object",
    "all_gather_objects",
    "any_rank",
    "all_reduce_mean",
    "sync_from_rank0",
    "on_main",
    "shard_indices",
    "gather_in_order",
    "wrap_data_parallel",
    "epoch_torch_seed",
]

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank among ``world_size`` processes.

    ``world_size == 1`` is a single process; every helper below is then a no-op, so the
    training code calls them unconditionally.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and logs."""
        return self.rank == 0


SINGLE_PROCESS = DistContext()


def environment_world_size() -> int:
    """Processes torchrun started (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group torchrun describes (gloo on CPU, NCCL on CUDA).

    Returns :data:`SINGLE_PROCESS` when the environment names no group. A group that is
    already initialised (e.g. by a test harness, or by a caller who wants another backend)
    is used as it is.
    """
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    if environment_world_size() <= 1:
        return SINGLE_PROCESS
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def leave_process_group() -> None:
    """Destroy the process group, if any (the entry point's last act under torchrun)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# --------------------------------------------------------------------------- collectives


def broadcast_object(obj: T, ctx: DistContext) -> T:
    """Rank 0's ``obj`` on every rank (pickled; for small or once-per-run payloads)."""
    if not ctx.enabled:
        return obj
    holder = [obj if ctx.is_main else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]  # type: ignore[return-value]


def all_gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's ``obj``, in rank order."""
    if not ctx.enabled:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True on every rank when ``flag`` is True on any rank (keeps decisions in lockstep)."""
    if not ctx.enabled:
        return flag
    return any(all_gather_objects(bool(flag), ctx))


def all_reduce_mean(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The mean of ``value`` over ranks (a copy; ``value`` is left alone)."""
    if not ctx.enabled:
        return value
    reduced = value.detach().clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced / ctx.world_size


def on_main(fn: Callable[[], T], ctx: DistContext) -> T:
    """Run ``fn`` on rank 0 only and hand its result, or its exception, to every rank.

    For work that touches files only rank 0 may see (checking or reading the run folder):
    an error raised there is raised on every rank, so no rank waits forever in a collective
    its peers never reach.
    """
    if not ctx.enabled:
        return fn()
    outcome: tuple[bool, Any] = (True, None)
    if ctx.is_main:
        try:
            outcome = (True, fn())
        except Exception as error:  # re-raised below, on every rank
            outcome = (False, error)
    ok, value = broadcast_object(outcome, ctx)
    if not ok:
        raise value
    return value


def sync_from_rank0(model: nn.Module, ctx: DistContext) -> None:
    """Give every rank rank 0's parameters and buffers, through ``load_state_dict``.

    Called after the data-driven quantizer calibration (each rank calibrated on its own
    shard) and before DDP is built: going through ``load_state_dict`` also re-derives the
    quantizers' Python-side state (e.g. the signed/unsigned grid choice) from the received
    buffers, which a raw tensor broadcast would leave as each rank decided it.
    """
    if not ctx.enabled:
        return
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()} if ctx.is_main else None
    state = broadcast_object(state, ctx)
    if not ctx.is_main:
        model.load_state_dict(state)


# --------------------------------------------------------------------------- data


def shard_indices(size: int, ctx: DistContext) -> list[int]:
    """This rank's share of ``range(size)`` for evaluation: every index on exactly one rank."""
    return list(range(ctx.rank, size, ctx.world_size))


def gather_in_order(indices: np.ndarray, *arrays: np.ndarray, size: int, ctx: DistContext) -> tuple[np.ndarray, ...]:
    """Reassemble per-rank ``arrays`` (aligned with ``indices``) into dataset order."""
    if not ctx.enabled:
        order = np.argsort(indices, kind="stable")
        return tuple(a[order] for a in arrays)
    parts = all_gather_objects((indices, *arrays), ctx)
    all_indices = np.concatenate([p[0] for p in parts])
    if len(all_indices) != size or len(np.unique(all_indices)) != size:
        raise RuntimeError(f"ranks returned {len(all_indices)} predictions for {size} images")
    order = np.argsort(all_indices, kind="stable")
    return tuple(np.concatenate([p[i + 1] for p in parts])[order] for i in range(len(arrays)))


def epoch_torch_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of torch's generator (dropout) for one rank and epoch under DDP.

    Derived from ``(seed, epoch, rank)`` rather than carried over, so a resumed distributed
    run draws what an uninterrupted one would without saving every rank's generator state.
    """
    return int(np.random.SeedSequence((seed, epoch, rank, 0x0DD)).generate_state(1, dtype=np.uint64)[0] % 2**63)


# --------------------------------------------------------------------------- model


def wrap_data_parallel(model: nn.Module, ctx: DistContext, device: torch.device, sync_batchnorm: bool) -> nn.Module:
    """The module the training step calls: ``model`` itself, or a DDP wrapper around it.

    ``sync_batchnorm`` converts BatchNorm layers to ``SyncBatchNorm`` (statistics over the
    global batch). SyncBatchNorm runs on CUDA only, so on CPU it is refused by the config
    check in ``run``; without it each rank normalises with its own batch statistics and
    DDP broadcasts rank 0's running statistics at every forward, so all ranks keep
    identical models.
    """
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if sync_batchnorm:
        if device.type != "cuda":
            raise RuntimeError("SyncBatchNorm needs CUDA; set train.sync_bn=false on CPU")
        _convert_to_sync_batchnorm(model)
    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        broadcast_buffers=True,  # rank 0's BatchNorm running statistics everywhere
    )


def _convert_to_sync_batchnorm(model: nn.Module) -> None:
    """Swap BatchNorm layers for SyncBatchNorm in place (same Parameters and buffers).

    In place, unlike ``SyncBatchNorm.convert_sync_batchnorm`` which returns a new root:
    the Trainer, the optimizer and the checkpoints keep holding the same ``model`` object.
    State-dict keys do not change, so checkpoints load into a plain-BatchNorm model.
    """
    for name, child in list(model.named_children()):
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(child)
        if converted is not child:
            setattr(model, name, converted)
