"""Find each set of a suite on disk: its reals, its fakes, or why it is missing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qmdd.data import FAKE_DIR, REAL_DIR, find_labelled_images
from qmdd.evaluation._suites import Protocol, SetSpec, Suite

__all__ = ["ResolvedSet", "ResolvedSuite", "resolve_suite", "find_child"]

OK, MISSING, EMPTY = "ok", "missing", "empty"


@dataclass
class ResolvedSet:
    """A set as found on disk.

    ``samples`` are the images to evaluate (after the cap); ``found_real`` and
    ``found_fake`` count what was on disk before it. ``status`` is ``ok``, ``missing``
    (no folder) or ``empty`` (a folder without reals or without fakes); ``reason`` says
    which in words.
    """

    name: str
    status: str
    reason: str = ""
    folder: Path | None = None
    real_source: Path | None = None
    samples: list[tuple[Path, int]] = field(default_factory=list)
    found_real: int = 0
    found_fake: int = 0

    @property
    def n_real(self) -> int:
        return sum(1 for _, label in self.samples if label == 0)

    @property
    def n_fake(self) -> int:
        return sum(1 for _, label in self.samples if label == 1)


@dataclass
class ResolvedSuite:
    suite: Suite
    root: Path
    data_dir: Path
    sets: list[ResolvedSet]


def find_child(parent: Path, name: str) -> Path | None:
    """``parent/name``, else the one child whose name matches ignoring case; None if absent.

    ``name`` may hold several components (``diffusion_datasets/laion``).
    """
    current = parent
    for part in Path(name).parts:
        exact = current / part
        if exact.is_dir():
            current = exact
            continue
        if not current.is_dir():
            return None
        matches = [p for p in current.iterdir() if p.is_dir() and p.name.lower() == part.lower()]
        if len(matches) != 1:
            return None
        current = matches[0]
    return current


def _cap(samples: list[tuple[Path, int]], limit: int | None, seed: int) -> list[tuple[Path, int]]:
    """At most ``limit`` samples, drawn by a seeded permutation of the sorted list."""
    if limit is None or len(samples) <= limit:
        return samples
    order = np.random.default_rng(seed).permutation(len(samples))[:limit]
    return [samples[i] for i in sorted(order)]


def _resolve_set(spec: SetSpec, data_dir: Path, protocol: Protocol) -> ResolvedSet:
    folder = find_child(data_dir, spec.folder)
    if folder is None:
        return ResolvedSet(spec.name, MISSING, f"no folder {spec.folder}/ in {data_dir}")
    samples = find_labelled_images(folder)
    fakes = [s for s in samples if s[1] == 1]
    reals = [s for s in samples if s[1] == 0]
    real_source = folder
    if not reals and spec.shared_real is not None:
        pool = find_child(data_dir, spec.shared_real)
        if pool is not None:
            reals = [s for s in find_labelled_images(pool) if s[1] == 0]
            real_source = pool
    result = ResolvedSet(spec.name, OK, folder=folder, real_source=real_source, found_real=len(reals), found_fake=len(fakes))
    if not fakes or not reals:
        lacking = []
        if not reals:
            where = f"{REAL_DIR}/ in {folder}" + (f" nor in the shared pool {spec.shared_real}/{REAL_DIR}" if spec.shared_real else "")
            lacking.append(f"no real images ({where})")
        if not fakes:
            lacking.append(f"no fake images ({FAKE_DIR}/ in {folder})")
        result.status, result.reason = EMPTY, "; ".join(lacking)
        return result
    result.samples = _cap(reals, protocol.max_per_class, protocol.seed) + _cap(fakes, protocol.max_per_class, protocol.seed)
    return result


def _discover(data_dir: Path) -> list[SetSpec]:
    """Every sub-folder but hidden ones: a folder without images is a set reported
    ``empty``, never silently left out of the table."""
    if not data_dir.is_dir():
        return []
    return [SetSpec(p.name) for p in sorted(data_dir.iterdir()) if p.is_dir() and not p.name.startswith(".")]


def resolve_suite(suite: Suite, root: str | Path) -> ResolvedSuite:
    """Locate every set of ``suite`` under ``root``; never raises for missing sets.

    The data folder is the first of ``suite.search`` below ``root`` that holds any of the
    suite's sets (for discovering suites: that exists), else ``root`` itself.
    """
    root = Path(root).expanduser()
    data_dir = root
    for candidate in suite.search:
        folder = find_child(root, candidate) if candidate else root
        if folder is None:
            continue
        if suite.discover or any(find_child(folder, s.folder) is not None for s in suite.sets):
            data_dir = folder
            break
    specs = _discover(data_dir) if suite.discover else list(suite.sets)
    if suite.discover and not specs:
        return ResolvedSuite(suite, root, data_dir, [ResolvedSet("(none)", MISSING, f"no set folders in {data_dir}")])
    return ResolvedSuite(suite, root, data_dir, [_resolve_set(spec, data_dir, suite.protocol) for spec in specs])
