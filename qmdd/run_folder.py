"""The layout of run folders: every file and sub-folder name qmdd writes, in one place.

A training run (``python -m qmdd.train``)::

    <run>/config.yaml        the resolved config
    <run>/last.pt            the resume point, after every epoch
    <run>/best.pt            the epoch with the best validation accuracy
    <run>/metrics.json       test metrics of best.pt, written last
    <run>/events.out.*       TensorBoard
    <run>/.lock              held (``flock``) by the process training into the folder

A lottery-ticket experiment (``python -m qmdd.lth``): its own ``config.yaml`` and
``rewind.pt``, one training run per level under ``<method>/level_<KK>/`` (with the level's
``mask.pt`` and ``sparsity.json``), ``summary.json``, ``curves.png`` and ``curves/``. A
ticket transfer adds a ``dense/`` run and ``transfer.json``.
"""

from __future__ import annotations

import errno
import os
import socket
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
    "LOCK_FILE",
    "RunFolderBusy",
    "RunFolderLock",
    "remove_stale_temporaries",
    "default_run_dir",
    "level_dir",
]

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
LOCK_FILE = ".lock"

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


class RunFolderBusy(RuntimeError):
    """Another process is training into the run folder."""


class RunFolderLock:
    """An exclusive lock on a run folder for the life of one run (a context manager).

    Two runs into one ``--out`` would overwrite each other's checkpoints and both report
    the last one's metrics, so the second is refused. The lock is an advisory ``flock`` on
    ``<run>/.lock``: the kernel drops it when its process ends, however it ends, so a lock
    file left by a killed run is stale and simply taken over (``--resume`` after
    ``kill -9`` works). The file records the holder's pid and host for the message.
    ``flock`` is local to one machine: runs on two hosts sharing a network folder are not
    kept apart. Without ``fcntl`` (Windows) the lock is a no-op.
    """

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "RunFolderLock":
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            if error.errno in (errno.EAGAIN, errno.EACCES):
                raise RunFolderBusy(f"{self.path.parent} is in use by {holder}; wait for it to finish, or choose another --out") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        # The file stays: unlinking it would let a process that opened it just before lock a
        # file no newer process can see. An unheld lock file means nothing.
        os.ftruncate(self._fd, 0)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunFolderLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete what an interrupted atomic write left in ``folder`` (``.<name>.*.tmp``, see
    :func:`qmdd.utils.atomic_write`); call it only while holding the folder's lock."""
    removed = []
    for path in Path(folder).glob(".*.tmp"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
