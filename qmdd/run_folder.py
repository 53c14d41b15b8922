"""The layout of run folders: every file and sub-folder name qmdd writes, in one place.

A training run (``python -m qmdd.train``)::

    <run>/config.yaml        the resolved config
    <run>/last.pt            the resume point, after every epoch
    <run>/best.pt            the epoch with the best validation accuracy
    <run>/metrics.json       test metrics of best.pt, written last
    <run>/events.out.*       TensorBoard

A lottery-ticket experiment (``python -m qmdd.lth``): its own ``config.yaml`` and
``rewind.pt``, one training run per level under ``<method>/level_<KK>/`` (with the level's
``mask.pt`` and ``sparsity.json``), ``summary.json``, ``curves.png`` and ``curves/``. A
ticket transfer adds a ``dense/`` run and ``transfer.json``.
"""

from __future__ import annotations

import time
from pathlib import Path

__all__ = [
    "CONFIG_FILE",
    "METRICS_FILE",
    "LAST_CHECKPOINT",
    "BEST_CHECKPOINT",
    "MASK_FILE",
    "SPARSITY_FILE",
    "REWIND_FILE",
    "SUMMARY_FILE",
    "PLOT_FILE",
    "CURVES_DIR",
    "TRANSFER_FILE",
    "DENSE_DIR",
    "PRUNE_METHODS",
    "default_run_dir",
    "level_dir",
]

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"

MASK_FILE = "mask.pt"
SPARSITY_FILE = "sparsity.json"
REWIND_FILE = "rewind.pt"
SUMMARY_FILE = "summary.json"
PLOT_FILE = "curves.png"
CURVES_DIR = "curves"
TRANSFER_FILE = "transfer.json"
#: The transfer experiment's unpruned run.
DENSE_DIR = "dense"
#: Folder names of the two pruning methods, in plotting order.
PRUNE_METHODS = ("imp", "one_shot")


def default_run_dir(arch: str, tag: str, root: str | Path = "runs") -> Path:
    """``runs/<YYYYmmdd-HHMMSS>-<arch>-<tag>``: the folder of a run given no ``--out``."""
    return Path(root) / f"{time.strftime('%Y%m%d-%H%M%S')}-{arch}-{tag}"


def level_dir(out: str | Path, method: str, level: int) -> Path:
    """``<out>/<method>/level_<KK>``: one pruning level's training run."""
    return Path(out) / method / f"level_{level:02d}"
