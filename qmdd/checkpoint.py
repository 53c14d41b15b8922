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

from pathlib import Path
from typing import Any

import torch
from torch import nn

import qmdd
from qmdd.config import RunConfig, config_to_dict
from qmdd.metrics import DEFAULT_THRESHOLD
from qmdd.utils import atomic_write

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "CheckpointError", "save_checkpoint", "load_checkpoint", "checkpoint_threshold"]

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
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated zip, wrong file type, unsafe pickle...
        raise CheckpointError(f"{path} is not a readable qmdd checkpoint: {error}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a qmdd checkpoint (no '{CHECKPOINT_FORMAT}' header)")
    if payload.get("format_version", 0) > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {payload['format_version']}, newer than this qmdd "
            f"reads ({CHECKPOINT_VERSION}); upgrade qmdd"
        )
    return payload


def checkpoint_threshold(payload: dict[str, Any]) -> float:
    """The validation-fitted decision threshold of a loaded checkpoint (0.5 if it has none)."""
    value = payload.get("threshold", DEFAULT_THRESHOLD)
    if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise CheckpointError(f"checkpoint threshold {value!r} is not a probability in [0, 1]")
    return float(value)
