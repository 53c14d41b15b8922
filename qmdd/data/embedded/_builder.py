"""Write the embedded benchmark to disk in the ForenSynths layout, seeded, cached, atomically.

Layout (ForenSynths', Wang et al. CVPR 2020; labels come from the folder names)::

    <root>/train/<category>/{0_real,1_fake}/*.png    fakes: SEEN_FAMILY only
    <root>/val/<category>/{0_real,1_fake}/*.png      fakes: SEEN_FAMILY only
    <root>/test/<family>/{0_real,1_fake}/*.png       one folder per family (seen one included)
    <root>/benchmark.json                            name, version, seed, families, counts, ...
    <root>/sources.json                              which photos feed which split

Every file name starts with its source photo id (``<photo>_<index>[_<control>|_<family>].png``).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from qmdd.data.embedded import _decoder
from qmdd.data.embedded._families import CONTROL_REGISTRY, FAMILY_REGISTRY, apply_control, generate_fake
from qmdd.data.embedded._photos import PHOTO_SCALE, PHOTO_SPLITS, SPLITS, assets_digest, load_manifest, load_photos

__all__ = ["EMBEDDED_VERSION", "SEEN_FAMILY", "FAMILIES", "build_embedded_benchmark", "build_embedded_variant", "default_cache_dir", "cache_key"]

#: Bump on any change that alters the written images (families, controls, split, counts,
#: layout): the cache folder name contains it, so stale data is never mixed with new.
EMBEDDED_VERSION = "1"
#: The single training family, in the role ProGAN plays in ForenSynths.
SEEN_FAMILY = "nearest_up"
#: All generator families, registry order; each has a test/<family> folder.
FAMILIES: tuple[str, ...] = tuple(FAMILY_REGISTRY)

# Real/fake pairs per split at scale=1. Each test family gets its own TEST_PAIRS pairs.
TRAIN_PAIRS, VAL_PAIRS, TEST_PAIRS = 1500, 300, 300
# Share of reals replaced by a processed-real control (still labelled real), per control.
CONTROL_SHARE = {"blur": 0.15, "resample": 0.15}
# Context (px) around each stored crop that the families and controls see and that is then
# cut away: convolution borders never reach the stored image. A multiple of 8 keeps the
# upsampling grid of every family at the same phase relative to the stored pixels.
MARGIN = 16
PNG_COMPRESS_LEVEL = 1  # zlib level: lossless either way; 1 is ~3x faster to write than 6
PARALLEL_MIN_PAIRS = 600  # below this a single process is faster than starting a pool


def default_cache_dir() -> Path:
    """``${QMDD_CACHE:-~/.cache/qmdd}/embedded``."""
    return Path(os.environ.get("QMDD_CACHE", "~/.cache/qmdd")).expanduser() / "embedded"


def _pairs(base: int, scale: float) -> int:
    return max(2, int(round(base * scale)))


@dataclass(frozen=True)
class _Job:
    split: str  # "train", "val" or "test"
    family: str
    index: int
    photo_index: int


def cache_key(seed: int, image_size: int, scale: float) -> str:
    """``v<EMBEDDED_VERSION>-<hash>``: the hash covers every parameter and the shipped assets."""
    params = {
        "version": EMBEDDED_VERSION,
        "seed": seed,
        "image_size": image_size,
        "scale": scale,
        "assets": assets_digest(),
        "decoder": hashlib.sha256(_decoder.weights_path().read_bytes()).hexdigest(),
    }
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    return f"v{EMBEDDED_VERSION}-{digest}"


def _is_complete(root: Path, key: str | None = None, name: str = "embedded") -> bool:
    """A folder is a finished build when its benchmark.json says so (written last, then renamed)."""
    try:
        info = json.loads((root / "benchmark.json").read_text())
    except (OSError, ValueError):
        return False
    return info.get("name") == name and info.get("complete") is True and (key is None or info.get("key") == key)


def _save_png(path: Path, image: np.ndarray) -> None:
    Image.fromarray(image).save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def _jobs(scale: float) -> list[_Job]:
    jobs = []
    n_photos = {split: len(PHOTO_SPLITS[split]) for split in SPLITS}
    # Crops cycle through the split's photos, so every photo contributes equally.
    for split, pairs in (("train", _pairs(TRAIN_PAIRS, scale)), ("val", _pairs(VAL_PAIRS, scale))):
        jobs += [_Job(split, SEEN_FAMILY, i, i % n_photos[split]) for i in range(pairs)]
    for family in FAMILIES:
        jobs += [_Job("test", family, i, i % n_photos["test"]) for i in range(_pairs(TEST_PAIRS, scale))]
    return jobs


def _write_pair(job: _Job, out: Path, seed: int, image_size: int) -> tuple[str, str | None]:
    """Crop one window, write its real (maybe a control) and its fake; returns (folder, control)."""
    photo, image = load_photos(job.split)[job.photo_index]
    # One independent stream per pair: the bytes of a pair do not depend on build order.
    rng = np.random.default_rng([seed, SPLITS.index(job.split), FAMILIES.index(job.family), job.index])
    window = image_size + (-image_size % 8) + 2 * MARGIN
    if min(image.shape[:2]) < window:
        raise ValueError(f"image_size={image_size} needs {window} px windows; photo {photo.photo_id} is smaller")
    top = int(rng.integers(image.shape[0] - window + 1))
    left = int(rng.integers(image.shape[1] - window + 1))
    crop = image[top : top + window, left : left + window]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    crop = np.ascontiguousarray(crop)

    draw, control, threshold = rng.random(), None, 0.0
    for name, share in CONTROL_SHARE.items():
        threshold += share
        if control is None and draw < threshold:
            control = name
    real = apply_control(control, crop, rng) if control else crop
    fake = generate_fake(job.family, crop, rng)

    inner = slice(MARGIN, MARGIN + image_size)
    folder = f"test/{job.family}" if job.split == "test" else f"{job.split}/{photo.category}"
    stem = f"{photo.photo_id}_{job.index:05d}"
    _save_png(out / folder / "0_real" / (f"{stem}_{control}.png" if control else f"{stem}.png"), real[inner, inner])
    _save_png(out / folder / "1_fake" / f"{stem}_{job.family}.png", fake[inner, inner])
    return folder, control


def _write_job(task: tuple[Callable[[_Job], tuple[str, str | None]], _Job]) -> tuple[str, str | None]:
    write, job = task
    return write(job)


def _workers(n_jobs: int) -> int:
    """Processes for a build: one per CPU (at most 4) when there is enough work to pay
    for starting them, else 1. QMDD_EMBEDDED_WORKERS overrides."""
    override = os.environ.get("QMDD_EMBEDDED_WORKERS")
    if override:
        return max(1, int(override))
    if n_jobs < PARALLEL_MIN_PAIRS:
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cpus))


def _mp_context() -> multiprocessing.context.BaseContext:
    # fork starts workers in milliseconds (as torch's DataLoader does on Linux; the workers'
    # torch calls run on one thread, see _decoder.one_thread); elsewhere (macOS, Windows)
    # spawn is the safe choice.
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _build_into(out: Path, *, key: str, seed: int, image_size: int, scale: float, progress: bool | None) -> None:
    photos = {split: load_photos(split) for split in SPLITS}  # decoded once, before any fork
    _decoder.trained_autoencoder()
    jobs = _jobs(scale)
    folders = {
        f"test/{job.family}" if job.split == "test" else f"{job.split}/{photos[job.split][job.photo_index][0].category}"
        for job in jobs
    }
    for folder in folders:
        for label in ("0_real", "1_fake"):
            (out / folder / label).mkdir(parents=True, exist_ok=True)
    results = _write_pairs(jobs, functools.partial(_write_pair, out=out, seed=seed, image_size=image_size), progress)
    counts: dict[str, dict[str, int]] = {}
    controls: dict[str, dict[str, int]] = {}
    for job, (folder, control) in zip(jobs, results):
        group = "test/" + job.family if job.split == "test" else job.split
        counts.setdefault(group, {"real": 0, "fake": 0})
        counts[group]["real"] += 1
        counts[group]["fake"] += 1
        if control:
            controls.setdefault(group, {name: 0 for name in CONTROL_REGISTRY})[control] += 1
    classes = sorted({folder.split("/", 1)[1] for folder in folders if folder.startswith("train/")})
    _write_metadata(out, key=key, seed=seed, image_size=image_size, scale=scale, classes=classes, counts=counts, controls=controls)


def _write_pairs(jobs: list[_Job], write: Callable[[_Job], tuple[str, str | None]], progress: bool | None) -> list[tuple[str, str | None]]:
    """Run ``write`` on every job, in worker processes when there are enough of them."""
    disable = None if progress is None else not progress
    workers = _workers(len(jobs))
    with contextlib.ExitStack() as stack:
        # One BLAS thread: the matrices are small, and idle OpenBLAS threads spin, which
        # doubled the CPU time of a build and starved the parallel workers.
        stack.enter_context(threadpool_limits(1))
        stack.enter_context(_decoder.one_thread())  # once for the build, not per image
        if workers > 1:
            # Every pair has its own random stream and numpy float64 arithmetic, so the
            # bytes are the same whichever process writes a pair.
            pool = stack.enter_context(
                ProcessPoolExecutor(workers, mp_context=_mp_context(), initializer=threadpool_limits, initargs=(1,))
            )
            results = pool.map(_write_job, [(write, job) for job in jobs], chunksize=32)
        else:
            results = map(_write_job, [(write, job) for job in jobs])
        return list(tqdm(results, total=len(jobs), desc="embedded benchmark", unit="pair", disable=disable))


def _write_metadata(out: Path, *, key: str, seed: int, image_size: int, scale: float, classes: list[str], counts: dict, controls: dict) -> None:
    """``sources.json`` (which photo feeds which split, with attribution), then
    ``benchmark.json``, whose ``complete`` flag marks a finished build."""
    manifest = {entry["id"]: entry for entry in load_manifest()["photos"]}
    sources = {
        "splits": {split: list(PHOTO_SPLITS[split]) for split in SPLITS},
        "photos": {
            pid: {key_: manifest[pid][key_] for key_ in ("category", "title", "author", "licence", "url")}
            for pid in manifest
        },
        "file_names": "<photo id>_<pair index>[_<control>].png in 0_real, <photo id>_<pair index>_<family>.png in 1_fake",
    }
    (out / "sources.json").write_text(json.dumps(sources, indent=2, ensure_ascii=False) + "\n")
    info = {
        "name": "embedded",
        "version": EMBEDDED_VERSION,
        "key": key,
        "seed": seed,
        "image_size": image_size,
        "scale": scale,
        "seen_family": SEEN_FAMILY,
        "families": list(FAMILIES),
        "unseen_families": [f for f in FAMILIES if f != SEEN_FAMILY],
        "classes": classes,
        "counts": counts,
        "controls": controls,
        "photo_scale": PHOTO_SCALE,
        "margin": MARGIN,
        "docs": "docs/benchmark.md",
        "complete": True,  # written last: a folder without it is an interrupted build
    }
    (out / "benchmark.json").write_text(json.dumps(info, indent=2) + "\n")


def build_embedded_benchmark(
    root: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    image_size: int = 96,
    scale: float = 1.0,
    force: bool = False,
    progress: bool | None = None,
) -> Path:
    """Build (or return the cached) embedded benchmark; returns the dataset root.

    Args:
        root: dataset folder to write. None: ``default_cache_dir() / cache_key(...)``
            (``${QMDD_CACHE:-~/.cache/qmdd}/embedded/v<version>-<hash>``).
        seed: seeds every crop, control and fake; same seed, same bytes.
        image_size: side of the stored square PNGs, px (the trainer crops 64 from 96).
        scale: multiplies the number of pairs per split (1.0: 1500 train, 300 val,
            300 per test family); tests use e.g. 0.05.
        force: rebuild even when a complete build with the same parameters exists.
        progress: tqdm bar; None shows it only on a terminal.

    The build goes to a hidden sibling folder that is renamed onto ``root`` only when
    complete, so an interrupted build never looks finished. A complete build whose
    ``benchmark.json`` carries the same cache key is returned at once.
    """
    seed, image_size, scale = _checked_build_args(seed, image_size, scale)
    key = cache_key(seed, image_size, scale)
    root = ((default_cache_dir() / key) if root is None else Path(root).expanduser()).absolute()
    if root.exists():
        if _is_complete(root, key) and not force:
            return root
        if any(root.iterdir()) and not _is_complete(root):
            # A user folder with other content: never delete what this code did not write.
            raise FileExistsError(f"{root} exists and is not an embedded benchmark; choose an empty or new folder")
    build = functools.partial(_build_into, key=key, seed=seed, image_size=image_size, scale=scale, progress=progress)
    return _build_atomically(root, build, lambda: _is_complete(root, key))


def _checked_build_args(seed: int, image_size: int, scale: float) -> tuple[int, int, float]:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(image_size, (int, np.integer)) or not 16 <= image_size <= 256:
        raise ValueError(f"image_size must be an integer in [16, 256] px, got {image_size!r}")
    if not scale > 0 or not np.isfinite(scale):
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    return int(seed), int(image_size), float(scale)


def _build_atomically(target: Path, build: Callable[[Path], None], finished_elsewhere: Callable[[], bool]) -> Path:
    """Run ``build`` into a hidden sibling folder, then rename it onto ``target``.

    An interrupted build never looks finished, and a reader sees no tree or a whole one.
    A folder already at ``target`` (an older or other-parameter build, or an empty folder)
    is moved aside first; if a concurrent build renamed its own first
    (``finished_elsewhere``), that one is used.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.parent / f".{target.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    partial.mkdir()
    try:
        build(partial)
        if target.exists():
            stale = target.parent / f".{target.name}.stale-{uuid.uuid4().hex[:8]}"
            os.rename(target, stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(partial, target)
        except OSError:
            if not finished_elsewhere():
                raise
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    return target


def build_embedded_variant(seen_family: str, *, scale: float = 1.0, progress: bool | None = None) -> Path:
    """The embedded benchmark with ``seen_family`` as the training family; returns its root.

    Built once next to the cached benchmark (``<benchmark>-train-<family>``): train/ and
    val/ get the benchmark's pair counts, written by the same pair writer with
    ``seen_family`` as the generator, so reals, processed-real controls and crops follow
    the same recipe; test/ links to the benchmark's own test folder (the same held-out
    photos and families). The default family returns the benchmark itself. Raises
    ValueError for a family that does not exist.
    """
    if seen_family not in FAMILIES:
        close = difflib.get_close_matches(seen_family, FAMILIES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"{seen_family!r} is not an embedded generator family{hint}; families: {', '.join(FAMILIES)}")
    base = build_embedded_benchmark(scale=scale, progress=progress)
    info = json.loads((base / "benchmark.json").read_text())
    if seen_family == info["seen_family"]:
        return base
    target = base.parent / f"{base.name}-train-{seen_family}"
    name = f"embedded-train-{seen_family}"
    if _is_complete(target, name=name):
        return target
    build = functools.partial(_write_variant, base=base, info=info, seen_family=seen_family, scale=scale, progress=progress)
    return _build_atomically(target, build, lambda: _is_complete(target, name=name))


def _write_variant(out: Path, base: Path, info: dict, seen_family: str, scale: float, progress: bool | None) -> None:
    photos = {split: load_photos(split) for split in ("train", "val")}
    counts = {"train": _pairs(TRAIN_PAIRS, scale), "val": _pairs(VAL_PAIRS, scale)}
    jobs = [_Job(split, seen_family, index, index % len(PHOTO_SPLITS[split])) for split, pairs in counts.items() for index in range(pairs)]
    for job in jobs:
        category = photos[job.split][job.photo_index][0].category
        for label in ("0_real", "1_fake"):
            (out / job.split / category / label).mkdir(parents=True, exist_ok=True)
    disable = None if progress is None else not progress
    for job in tqdm(jobs, desc=f"train/val on {seen_family}", unit="pair", disable=disable):
        _write_pair(job, out, seed=info["seed"], image_size=info["image_size"])
    (out / "test").symlink_to(base / "test", target_is_directory=True)
    derived = {
        "name": f"embedded-train-{seen_family}",
        "seen_family": seen_family,
        "derived_from": base.name,
        "families": info["families"],
        "counts": counts,
        "docs": "docs/lottery.md (ticket transfer)",
        "complete": True,  # written last
    }
    (out / "benchmark.json").write_text(json.dumps(derived, indent=2) + "\n")
