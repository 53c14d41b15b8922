"""Small shared helpers: atomic file writes, seeding, and the command lines' integer type."""

from __future__ import annotations

import argparse
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["atomic_write", "atomic_write_text", "seed_everything", "OutputPathError", "writable_dir", "writable_file", "is_disk_full", "positive_int"]


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp_path)`` and move the result onto ``path`` in one rename.

    A crash mid-write leaves the previous file intact instead of a truncated one: the
    temporary file lives in the same folder, so ``os.replace`` is atomic on POSIX.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) generators."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class OutputPathError(ValueError):
    """An output path that cannot be written, found before any work starts."""


def writable_dir(path: str | Path, what: str = "--out") -> Path:
    """Create folder ``path`` if needed and prove it writable with a probe file.

    Checked before the work starts, so a bad ``--out`` (under a file, naming a file,
    read-only) costs a sentence instead of a finished evaluation or training.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputPathError(f"{what} {path} is a file, not a folder") from None
    except OSError as error:
        raise OutputPathError(f"{what} {path}: cannot create the folder ({error.strerror or error})") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", suffix=".tmp", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise OutputPathError(f"{what} {path} is not writable ({error.strerror or error})") from None
    return path


def writable_file(path: str | Path, what: str = "--out") -> Path:
    """Check that file ``path`` can be written (its folder created if needed)."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{what} {path} is a folder; give a file name")
    writable_dir(path.parent, f"{what}'s folder")
    return path


def is_disk_full(error: BaseException) -> bool:
    """True for "no space left" and "quota exceeded" errors (also wrapped by torch.save)."""
    import errno

    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse names the flag in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value
