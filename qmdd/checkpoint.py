"""Checkpoints: atomic, ``torch.load(..., weights_only=True)``-safe, self-describing.

A checkpoint is a plain dict of tensors and primitives::

    {"format": "qmdd-checkpoint", "format_version": 1, "qmdd_version": "...",
     "config": <RunConfig as nested dicts>, "model": state_dict,
     "optimizer": state_dict | None, "trainer": TrainState as dict, "torch_rng": ByteTensor,
     "threshold": float}

``threshold`` is the decision threshold on ``sigmoid(logit)`` fitted on the validation set
of the checkpoint's epoch (the best validation accuracy); files written before it existed
read as 0.5 (:func:`checkpoint_threshold`).

The resolved config travels inside, so :func:`qmdd.detector.load_detector` rebuilds the
exact architecture (backbone, input filter, bit widths, quantizer) without any other file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

import qmdd
from qmdd.config import ConfigError, RunConfig, config_from_dict, config_to_dict
from qmdd.metrics import DEFAULT_THRESHOLD
from qmdd.utils import atomic_write

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "CheckpointError", "save_checkpoint", "link_checkpoint", "load_checkpoint", "stored_config", "checkpoint_threshold"]

CHECKPOINT_FORMAT = "qmdd-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A file is not a readable qmdd checkpoint."""


def save_checkpoint(path: str | Path, *, config: RunConfig, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, trainer: dict[str, Any] | None = None, threshold: float = DEFAULT_THRESHOLD) -> None:
    """Write a checkpoint atomically: a crash mid-save keeps the previous file."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "qmdd_version": qmdd.__version__,
        "config": config_to_dict(config),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "trainer": trainer or {},
        "torch_rng": torch.get_rng_state(),
        "threshold": float(threshold),
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no pickle code execution)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): not a checkpoint (an interrupted copy?)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated zip, wrong file type, unsafe pickle...
        raise CheckpointError(f"{path} is not a readable qmdd checkpoint: {_load_failure(error)}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a qmdd checkpoint (no '{CHECKPOINT_FORMAT}' header)")
    for key in ("config", "model"):
        if not isinstance(payload.get(key), dict):
            raise CheckpointError(f"{path} is not a complete qmdd checkpoint: its {key!r} entry is missing or not a mapping")
    if payload.get("format_version", 0) > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {payload['format_version']}, newer than this qmdd "
            f"reads ({CHECKPOINT_VERSION}); upgrade qmdd"
        )
    return payload


def link_checkpoint(source: str | Path, target: str | Path) -> None:
    """Make ``target`` hold the same checkpoint as ``source``, atomically.

    A hard link costs neither time nor disk space (best.pt is last.pt of the best epoch;
    the next atomic replace of last.pt leaves it alone); where links are not supported, a
    copy.
    """
    import shutil

    def write(tmp: Path) -> None:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)

    atomic_write(target, write)


def _load_failure(error: Exception) -> str:
    """Why ``torch.load`` refused a file, in one sentence.

    torch's own message for a pickle that needs arbitrary code suggests loading it with
    ``weights_only=False``: that is the unsafe path, so it is never repeated here.
    """
    message = str(error)
    if "weights_only" in message or "Unsupported global" in message:
        return "it holds Python objects a safe (weights-only) load refuses; qmdd never executes code from a file"
    return message.strip().splitlines()[0] if message.strip() else type(error).__name__


def stored_config(payload: dict[str, Any], path: str | Path) -> RunConfig:
    """The run config a loaded checkpoint was trained with; CheckpointError if it is not valid."""
    try:
        return config_from_dict(payload["config"])
    except ConfigError as error:
        raise CheckpointError(f"{path}: its stored config is not usable: {error}") from None


def checkpoint_threshold(payload: dict[str, Any]) -> float:
    """The validation-fitted decision threshold of a loaded checkpoint (0.5 if it has none)."""
    value = payload.get("threshold", DEFAULT_THRESHOLD)
    if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise CheckpointError(f"checkpoint threshold {value!r} is not a probability in [0, 1]")
    return float(value)
