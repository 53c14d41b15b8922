"""Hostile images: thin strips, oversized headers, corrupt files, link loops, empty sets.

Each must be skipped and counted (evaluation, the training run's test sets) or refused with
a reason (the loaders), never crash a run or exhaust memory. The guards below turn an
allocation the limits should have prevented into a test failure, not into gigabytes.
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from qmdd.config import DataConfig, config_from_dict
from qmdd.data import (
    DetectorTransform,
    ImageLoadError,
    ImageSet,
    ImageSizeError,
    LoadFailure,
    TolerantImageSet,
    TrainingData,
    collate_skipping_failures,
    find_labelled_images,
    load_rgb,
)
from qmdd.data import folder
from qmdd.metrics import binary_metrics

#: Pixels a test may allocate for one image; far above every image written here.
GUARD_PIXELS = 4_000_000


@pytest.fixture
def allocation_guard(monkeypatch):
    """Fail (inside the per-image handling, so the reason changes) any resize or decode of
    more than GUARD_PIXELS pixels, instead of letting it take gigabytes."""
    resize, load = Image.Image.resize, ImageFile.ImageFile.load

    def guarded_resize(self, size, *args, **kwargs):
        assert size[0] * size[1] <= GUARD_PIXELS, f"resize to {size} was not prevented"
        return resize(self, size, *args, **kwargs)

    def guarded_load(self):
        assert self.size[0] * self.size[1] <= GUARD_PIXELS, f"decode of {self.size} was not prevented"
        return load(self)

    monkeypatch.setattr(Image.Image, "resize", guarded_resize)
    monkeypatch.setattr(ImageFile.ImageFile, "load", guarded_load)


def _png(path: Path, width: int, height: int, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (value, value // 2, 255 - value)).save(path)
    return path


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` followed by a few bytes of data:
    what an oversized image looks like to a reader that checks the header first."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = zlib.compress(b"\0" + b"\x80" * 30)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def _random_png(path: Path, size: int = 32, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def _corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return path


def _loop(path: Path) -> Path:
    """``path`` -> ``path``.b.png -> ``path``: a symlink loop with an image name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    other = path.with_name(path.stem + ".b.png")
    os.symlink(other.name, path)
    os.symlink(path.name, other)
    return path


# --------------------------------------------------------------------------- limits


def test_limits_are_below_pils_own_and_stop_the_reported_images():
    assert folder.MAX_IMAGE_PIXELS < Image.MAX_IMAGE_PIXELS  # PIL would only warn, not stop
    assert 12000 * 12000 > folder.MAX_IMAGE_PIXELS
    assert 61_000_000 < folder.MAX_IMAGE_PIXELS  # a 61 MP camera photo still loads
    assert 10 < folder.MAX_ASPECT_RATIO < 20000 / 3  # panoramas pass, a 3x20000 strip does not


@pytest.mark.parametrize("size", [(1, 60000), (20000, 3)])
def test_thin_images_are_refused_from_the_header_before_decoding(tmp_path, allocation_guard, size):
    path = _png(tmp_path / "thin.png", *size)
    assert path.stat().st_size < 2000  # cheap on disk, 9 GB when upscaled to a 224 crop
    with pytest.raises(ImageSizeError, match="MAX_ASPECT_RATIO") as caught:
        load_rgb(path)
    assert "thin.png" in str(caught.value)


@pytest.mark.parametrize("side", [12000, 30000])  # between PIL's warning and error; over its error
def test_oversized_header_is_refused_before_decoding_without_a_pil_warning(tmp_path, allocation_guard, side):
    path = _png_claiming(tmp_path / "huge.png", side, side)
    pil_limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(ImageSizeError, match="MAX_IMAGE_PIXELS") as caught:
            load_rgb(path)
    assert "huge.png" in str(caught.value) and str(side * side) in str(caught.value)
    assert not [w for w in seen if issubclass(w.category, Image.DecompressionBombWarning)]
    assert Image.MAX_IMAGE_PIXELS == pil_limit  # PIL's own setting is left as it was


def test_pixel_limit_is_read_at_each_check_and_inclusive(tmp_path, monkeypatch):
    monkeypatch.setattr(folder, "MAX_IMAGE_PIXELS", 30 * 30)
    assert load_rgb(_random_png(tmp_path / "at.png", 30)).size == (30, 30)
    with pytest.raises(ImageSizeError, match="901|961"):
        load_rgb(_random_png(tmp_path / "over.png", 31))


def test_resize_is_refused_before_it_allocates(allocation_guard, monkeypatch):
    transform = DetectorTransform(DataConfig(crop_size=224), "test")
    rng = np.random.default_rng(0)
    # Given in memory, past the loader's checks: the transform's own bound stops it.
    with pytest.raises(ImageSizeError, match="MAX_IMAGE_PIXELS"):
        transform(Image.new("RGB", (1, 60000)), rng)
    # The bound is on the resized result: 10x20 -> 224x448 is at the limit, 10x21 over it.
    monkeypatch.setattr(folder, "MAX_IMAGE_PIXELS", 224 * 448)
    assert transform(Image.new("RGB", (10, 20)), rng).shape == (3, 224, 224)
    with pytest.raises(ImageSizeError, match="224x470"):
        transform(Image.new("RGB", (10, 21)), rng)


# --------------------------------------------------------------------------- per image


class _FailsOn:
    """The test transform, except that it raises ``error`` for images of ``size``."""

    def __init__(self, size: tuple[int, int], error: BaseException) -> None:
        self.inner = DetectorTransform(DataConfig(crop_size=16), "test")
        self.size, self.error = size, error

    def __call__(self, image, rng):
        if image.size == self.size:
            raise self.error
        return self.inner(image, rng)


@pytest.mark.parametrize("error", [RuntimeError("boom"), MemoryError()])
def test_transform_errors_are_per_image(tmp_path, error):
    good, bad = _random_png(tmp_path / "good.png", 32), _random_png(tmp_path / "bad.png", 24)
    transform = _FailsOn((24, 24), error)
    tolerant = TolerantImageSet([(good, 0), (bad, 1)], transform)
    assert tolerant[0][0].shape == (3, 16, 16)
    failure = tolerant[1]
    assert isinstance(failure, LoadFailure) and failure.path == str(bad) and failure.index == 1
    assert "bad.png" in failure.error and type(error).__name__ in failure.error
    # A strict set (training) raises too, but as an ImageLoadError naming the file.
    with pytest.raises(ImageLoadError, match="bad.png"):
        ImageSet([(bad, 1)], transform)[0]


def test_symlink_loops_and_dangling_links_are_listed_then_skipped(tmp_path):
    real, fake = tmp_path / "s/0_real", tmp_path / "s/1_fake"
    _random_png(real / "a.png")
    _loop(real / "loop.png")
    _random_png(fake / "b.png", seed=1)
    os.symlink("missing.png", fake / "dangling.png")
    (fake / "sub.png").mkdir()  # a folder with an image name is not an image
    samples = find_labelled_images(tmp_path)
    names = sorted(p.name for p, _ in samples)
    assert names == ["a.png", "b.png", "dangling.png", "loop.b.png", "loop.png"]
    tolerant = TolerantImageSet(samples, DetectorTransform(DataConfig(crop_size=16), "test"))
    images, labels, indices, failures = collate_skipping_failures([tolerant[i] for i in range(len(samples))])
    assert sorted(Path(f.path).name for f in failures) == ["dangling.png", "loop.b.png", "loop.png"]
    assert images.shape[0] == len(labels) == len(indices) == 2
    assert any("symbolic links" in f.error for f in failures)


# --------------------------------------------------------------------------- evaluation


def _hostile_root(root: Path) -> dict[str, list[str]]:
    """test/mixed with 3 good reals, 3 good fakes and one of each hostile kind; test/empty
    with empty label folders; test/bare with nothing. Returns the hostile file names."""
    real, fake = root / "test/mixed/0_real", root / "test/mixed/1_fake"
    for i in range(3):
        _random_png(real / f"r{i}.png", seed=i)
        _random_png(fake / f"f{i}.png", seed=10 + i)
    hostile = {
        "real": [_png(real / "thin_1x60000.png", 1, 60000).name, _corrupt(real / "corrupt.png").name],
        "fake": [
            _png(fake / "thin_20000x3.png", 20000, 3).name,
            _png_claiming(fake / "huge_12000.png", 12000, 12000).name,
            _loop(fake / "loop.png").name,
            "loop.b.png",
        ],
    }
    (root / "test/empty/0_real").mkdir(parents=True)
    (root / "test/empty/1_fake").mkdir(parents=True)
    (root / "test/bare").mkdir(parents=True)
    (root / "test/.hidden").mkdir(parents=True)
    return hostile


@pytest.fixture(scope="module")
def cnn5_checkpoint(tmp_path_factory) -> Path:
    from qmdd.checkpoint import save_checkpoint
    from qmdd.detector import build_detector

    config = config_from_dict({"model": {"arch": "cnn5"}, "data": {"crop_size": 24}, "quant": {"bits": 32}})
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "cnn5" / "best.pt"
    save_checkpoint(path, config=config, model=build_detector(config))
    return path


def test_evaluation_skips_counts_and_lists_every_set(tmp_path, allocation_guard, cnn5_checkpoint):
    from qmdd.evaluation import EvalOptions, evaluate, format_table, report_dict
    from qmdd.evaluation._suites import Protocol, Suite

    hostile = _hostile_root(tmp_path)
    suite = Suite(name="hostile", description="hostile images", sets=(), protocol=Protocol(crop=24), search=("test",), discover=True)
    report = evaluate([cnn5_checkpoint], suite, tmp_path, EvalOptions(batch_size=4, device="cpu", progress=False))
    sets = report_dict(report)["checkpoints"][0]["sets"]
    # Folders without images are sets too, reported empty; hidden folders are not sets.
    assert list(sets) == ["bare", "empty", "mixed"]
    assert sets["bare"]["status"] == sets["empty"]["status"] == "empty"
    assert "no real images" in sets["empty"]["reason"] and "no fake images" in sets["bare"]["reason"]
    mixed = sets["mixed"]
    assert mixed["status"] == "ok"
    skipped = sorted(Path(f["path"]).name for f in mixed["skipped_files"])
    assert skipped == sorted(hostile["real"] + hostile["fake"]) and mixed["skipped"] == 6
    reasons = {Path(f["path"]).name: f["error"] for f in mixed["skipped_files"]}
    assert "MAX_ASPECT_RATIO" in reasons["thin_1x60000.png"] and "MAX_ASPECT_RATIO" in reasons["thin_20000x3.png"]
    assert "MAX_IMAGE_PIXELS" in reasons["huge_12000.png"]
    # Counts: what was scored excludes the skipped files; what was found includes them.
    assert (mixed["n_real"], mixed["n_fake"]) == (3, 3)
    assert (mixed["found_real"], mixed["found_fake"]) == (5, 7)
    assert report.images_loaded == 6
    assert len(report.checkpoints[0].sets[2].paths) == 6
    table = format_table(report)
    assert "mean (1/3 sets)" in table and "empty" in table


def test_empty_data_folder_is_a_clear_missing_row(tmp_path):
    from qmdd.evaluation._resolve import resolve_suite
    from qmdd.evaluation._suites import Protocol, Suite

    (tmp_path / "test").mkdir()
    suite = Suite(name="d", description="d", sets=(), protocol=Protocol(crop=24), search=("test",), discover=True)
    [only] = resolve_suite(suite, tmp_path).sets
    assert only.status == "missing" and "no set folders" in only.reason


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("workers", [0, 1])
def test_training_test_sets_skip_and_count_unreadable_images(tmp_path, allocation_guard, cnn5_checkpoint, workers):
    from qmdd.detector import load_detector
    from qmdd.training._loop import predict
    from qmdd.training._run import _evaluate_tests

    hostile = _hostile_root(tmp_path)
    transform = DetectorTransform(DataConfig(crop_size=24), "test")
    samples = find_labelled_images(tmp_path / "test/mixed")
    strict = ImageSet(samples, transform, name="mixed")
    data = TrainingData(root=tmp_path, train=strict, val=strict, test={"mixed": strict}, seen_family=None, benchmark="hostile")
    model = load_detector(cnn5_checkpoint).model
    with pytest.warns(UserWarning, match="test set mixed: 6 unreadable image") as caught:
        results = _evaluate_tests(model, data, 4, torch.device("cpu"), workers, threshold=0.5)
    [message] = [str(w.message) for w in caught if "test set mixed" in str(w.message)]
    assert all(name in message for name in hostile["real"] + hostile["fake"])
    assert (results["mixed"].n_real, results["mixed"].n_fake) == (3, 3)
    # The scores are those of the readable images alone, in dataset order.
    readable = [(p, label) for p, label in samples if p.name.startswith(("r", "f"))]
    labels, scores = predict(model, ImageSet(readable, transform), 4, torch.device("cpu"))
    assert results["mixed"].ap == pytest.approx(binary_metrics(labels, scores).ap)
    # predict() without a list for the skipped images refuses to drop them silently.
    with pytest.raises(ImageLoadError, match="6 image"):
        predict(model, TolerantImageSet.of(strict), 4, torch.device("cpu"))
