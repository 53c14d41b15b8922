"""The real photos shipped in ``qmdd/data/assets/photos`` and their split by source photo.

Every photo belongs to exactly one split, so no crop of a test photo is ever seen in
training (split train and test by source photo, never by crop: docs/benchmark.md).
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["Photo", "PHOTO_SPLITS", "SPLITS", "assets_dir", "load_manifest", "load_photos", "assets_digest"]

SPLITS = ("train", "val", "test")

# Which photo goes where. Chosen so that each split mixes content (nature, animal, object,
# man-made structure), brightness (night scenes in train and test) and texture (smooth
# skies, fur, foliage, fine man-made edges). train/ has 10 photos, val/ 3, test/ 5.
PHOTO_SPLITS: dict[str, tuple[str, ...]] = {
    "train": (
        "aitzgorri",  # nature: mountain meadow, sky
        "sunset",  # nature: low sun, dark foreground
        "seeding",  # nature: dandelion close-up, bokeh
        "friends",  # animal: dogs at a wooden window
        "chelsea",  # animal: cat, fur texture
        "picture_1a",  # object: paint brushes, saturated colours
        "coffee",  # object: cup on wood grain
        "citrus_fruits",  # object: backlit fruit slices
        "cincinnati_bridge",  # structure: bridge at night, lights
        "china",  # structure: pagoda, foliage
    ),
    "val": (
        "picosdeeuropa",  # nature: rocky mountains, clouds
        "honey_bee",  # animal: bee on aster
        "wine",  # object: interior still life
    ),
    "test": (
        "life",  # nature: stream in a forest
        "flower",  # nature: dahlia, dark green background
        "picture_0b",  # object: fig in a red bowl on concrete
        "rocket",  # structure: launch pad at night
        "astronaut",  # structure / person: portrait with flag
    ),
}


@dataclass(frozen=True)
class Photo:
    """One normalised real photo and its manifest metadata."""

    photo_id: str
    category: str  # content class: the <class> folder name under train/ and val/
    split: str
    path: Path


def assets_dir() -> Path:
    """Folder of the shipped photos (package data ``qmdd/data/assets/photos``)."""
    return Path(__file__).resolve().parent.parent / "assets" / "photos"


@functools.lru_cache(maxsize=1)
def load_manifest() -> dict:
    """``MANIFEST.json`` of the shipped photos (licence and attribution per file)."""
    path = assets_dir() / "MANIFEST.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the embedded benchmark's photos were not installed with qmdd "
            "(package data qmdd/data/assets/**/*); reinstall qmdd or run tools/fetch_photos.py"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def _split_of() -> dict[str, str]:
    split_of = {}
    for split, ids in PHOTO_SPLITS.items():
        for photo_id in ids:
            if photo_id in split_of:
                raise AssertionError(f"photo {photo_id!r} is in two splits")  # a code bug, not user input
            split_of[photo_id] = split
    return split_of


def photos(split: str | None = None) -> list[Photo]:
    """The photos of one split (or all), in ``PHOTO_SPLITS`` order."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    entries = {entry["id"]: entry for entry in load_manifest()["photos"]}
    split_of = _split_of()
    unknown = sorted(set(split_of) ^ set(entries))
    if unknown:
        raise RuntimeError(f"MANIFEST.json and PHOTO_SPLITS disagree about photo ids {unknown}")
    chosen = [pid for s in SPLITS if split in (None, s) for pid in PHOTO_SPLITS[s]]
    return [
        Photo(pid, entries[pid]["category"], split_of[pid], assets_dir() / entries[pid]["file"]) for pid in chosen
    ]


# The builder shrinks every photo by this factor (antialiased) before cropping, so the 8x8
# grid of the assets' own JPEG q95 encoding is filtered out and does not mark reals as
# "JPEG-grid present" while fakes, re-synthesised from the pixels, lack it.
PHOTO_SCALE = 0.75


@functools.lru_cache(maxsize=32)
def _decoded(path: Path, photo_scale: float) -> np.ndarray:
    with Image.open(path) as image:
        image = image.convert("RGB")
        if photo_scale != 1.0:
            size = (round(image.width * photo_scale), round(image.height * photo_scale))
            image = image.resize(size, Image.LANCZOS, reducing_gap=None)
        array = np.asarray(image, dtype=np.uint8)
    array.setflags(write=False)
    return array


@functools.lru_cache(maxsize=8)
def load_photos(split: str | None = None, photo_scale: float = PHOTO_SCALE) -> tuple[tuple[Photo, np.ndarray], ...]:
    """Decoded photos (HxWx3 uint8, read-only) of one split, rescaled by ``photo_scale``.

    Cached per process: the builder calls it once per pair.
    """
    return tuple((photo, _decoded(photo.path, photo_scale)) for photo in photos(split))


def assets_digest() -> str:
    """sha256 over the manifest and every photo's bytes: part of the cache key."""
    digest = hashlib.sha256((assets_dir() / "MANIFEST.json").read_bytes())
    for photo in photos():
        digest.update(photo.path.read_bytes())
    return digest.hexdigest()
