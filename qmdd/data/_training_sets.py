"""Assemble the train / val / test sets of a run from its data config."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from qmdd.config import DataConfig
from qmdd.data.folder import BenchmarkInfo, DataLayoutError, ImageSet, find_labelled_images
from qmdd.data.transforms import DetectorTransform

__all__ = ["TrainingData", "resolve_data_root", "build_training_data"]


@dataclass
class TrainingData:
    root: Path
    train: ImageSet
    val: ImageSet
    test: dict[str, ImageSet]  # family / generator name -> its test set
    seen_family: str | None
    benchmark: str


def resolve_data_root(config: DataConfig, progress: bool | None = None) -> Path:
    """The data root: ``config.root``, or the (built on first use) embedded benchmark."""
    if config.root is not None:
        root = Path(config.root).expanduser()
        if not root.is_dir():
            raise DataLayoutError(f"data root {root} does not exist")
        return root
    from qmdd.data.embedded import build_embedded_benchmark

    return build_embedded_benchmark(scale=config.embedded_scale, progress=progress)


def _split_samples(root: Path, split: str, classes: tuple[str, ...] | None):
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataLayoutError(
            f"{root} has no {split}/ folder; expected the ForenSynths layout "
            f"{split}/<class>/{{0_real,1_fake}} (see docs/data.md)"
        )
    if classes is None:
        samples = find_labelled_images(split_dir)
    else:
        available = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
        missing = [c for c in classes if c not in available]
        if missing:
            raise DataLayoutError(
                f"class folder(s) {missing} not found in {split_dir}; available: {', '.join(available)}"
            )
        samples = [s for c in classes for s in find_labelled_images(split_dir / c)]
    labels = {label for _, label in samples}
    if labels != {0, 1}:
        raise DataLayoutError(f"{split_dir} must hold both 0_real and 1_fake images; found labels {sorted(labels)}")
    return samples


def build_training_data(config: DataConfig, seed: int, progress: bool | None = None) -> TrainingData:
    root = resolve_data_root(config, progress)
    info = BenchmarkInfo.read(root)
    train = ImageSet(_split_samples(root, "train", config.classes), DetectorTransform(config, "train"), seed, "train")
    val = ImageSet(_split_samples(root, "val", config.classes), DetectorTransform(config, "val"), seed, "val")
    test: dict[str, ImageSet] = {}
    test_dir = root / "test"
    if test_dir.is_dir():
        for family_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
            samples = find_labelled_images(family_dir)
            if samples:
                test[family_dir.name] = ImageSet(samples, DetectorTransform(config, "test"), seed, family_dir.name)
            elif not family_dir.name.startswith("."):
                print(f"warning: {family_dir} holds no images; it is left out of the test pass", file=sys.stderr)
    seen = config.seen_family or info.seen_family
    return TrainingData(root=root, train=train, val=val, test=test, seen_family=seen, benchmark=info.name)
