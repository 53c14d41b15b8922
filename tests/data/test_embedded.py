"""The embedded benchmark: families leave their traces, builds are seeded, split by photo,
cached, atomic, and a colour-histogram classifier cannot solve it."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qmdd.data import embedded
from qmdd.data.embedded import (
    EMBEDDED_VERSION,
    FAMILIES,
    PHOTO_SPLITS,
    SEEN_FAMILY,
    apply_control,
    build_embedded_benchmark,
    generate_fake,
    histogram_baseline_ap,
    spectral_probe,
    spectral_probe_auc,
)
from qmdd.data.embedded import _builder
from qmdd.data.embedded._photos import load_photos

SMALL_SCALE = 0.1  # 150 train pairs, 30 val, 30 per test family: a few seconds to build


@pytest.fixture(scope="module")
def crops() -> list[np.ndarray]:
    """Eight 128 px crops of test photos, 2 per photo, at fixed positions."""
    out = []
    for _, image in load_photos("test")[:4]:
        for top, left in ((20, 30), (120, 150)):
            out.append(np.ascontiguousarray(image[top : top + 128, left : left + 128]))
    return out


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_embedded_benchmark(tmp_path_factory.mktemp("embedded") / "bench", scale=SMALL_SCALE, progress=False)


def _file_digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()
    }


# --- families ---------------------------------------------------------------------------


def test_registry_lists_every_family_with_a_docstring():
    assert FAMILIES == tuple(embedded.FAMILY_REGISTRY)
    assert SEEN_FAMILY in FAMILIES and len(FAMILIES) >= 6
    for name, fn in embedded.FAMILY_REGISTRY.items():
        assert fn.__doc__ and "Stands for" in fn.__doc__ and "Trace" in fn.__doc__, name


def test_unknown_family_and_bad_image_raise_with_the_valid_names():
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match=r"unknown generator family 'stylegan'.*transposed_conv.*learned_decoder"):
        generate_fake("stylegan", image, np.random.default_rng(0))
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        generate_fake("nearest_up", image.astype(np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown control 'sharpen'.*blur"):
        apply_control("sharpen", image, np.random.default_rng(0))


@pytest.mark.parametrize("family", FAMILIES)
def test_family_output_is_uint8_same_shape_changed_and_colour_neutral(family, crops):
    image = crops[1][:70, :90]  # sides not multiples of 8: exercises the padding path
    fake = generate_fake(family, image, np.random.default_rng(3))
    assert fake.dtype == np.uint8 and fake.shape == image.shape
    assert np.abs(fake.astype(int) - image).mean() > 1.0, "the family left the image unchanged"
    # Mean colour kept within 4 grey levels: a colour shift would be a content shortcut.
    shift = np.abs(fake.reshape(-1, 3).mean(0) - image.reshape(-1, 3).mean(0)).max()
    assert shift < 4.0, f"{family} shifts mean colour by {shift:.1f} levels"


@pytest.mark.parametrize("family", FAMILIES)
def test_family_draws_fresh_weights_per_call_but_is_seeded(family, crops):
    image = crops[0]
    a = generate_fake(family, image, np.random.default_rng(7))
    b = generate_fake(family, image, np.random.default_rng(7))
    c = generate_fake(family, image, np.random.default_rng(8))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def _nyquist_share(image: np.ndarray) -> float:
    """Share of the high-pass power at the Nyquist row/column of the spectrum."""
    grey = image.astype(np.float64).mean(axis=2)
    residual = grey - grey.mean()
    power = np.abs(np.fft.fft2(residual)) ** 2
    n = grey.shape[0] // 2
    nyquist = power[n, :].sum() + power[:, n].sum()
    high = power.sum() - power[: n // 2, : n // 2].sum()  # drop the lowest quarter-band (content)
    return float(nyquist / high)


@pytest.mark.parametrize("family", ["transposed_conv", "pixel_shuffle"])
def test_phase_dependent_upsamplers_put_energy_at_nyquist(family, crops):
    rng = np.random.default_rng(0)
    ratios = [_nyquist_share(generate_fake(family, c, rng)) / _nyquist_share(c) for c in crops]
    assert np.median(ratios) > 2.0, ratios


def _block_contrast(image: np.ndarray, period: int = 2) -> float:
    """Mean |horizontal step| across period boundaries over the mean step inside a period."""
    grey = image.astype(np.float64).mean(axis=2)
    steps = np.abs(np.diff(grey, axis=1))  # steps[:, j] is between columns j and j+1
    across = steps[:, period - 1 :: period].mean()
    inside = np.delete(steps, np.s_[period - 1 :: period], axis=1).mean()
    return float(across / inside)


def test_nearest_upsampling_leaves_a_block_grid(crops):
    rng = np.random.default_rng(0)
    fake = [_block_contrast(generate_fake("nearest_up", c, rng)) for c in crops]
    real = [_block_contrast(c) for c in crops]
    assert np.median(real) < 1.1, real
    assert np.median(fake) > 1.3, fake


def test_diffusion_like_flattens_fine_texture_without_periodic_peaks(crops):
    rng = np.random.default_rng(0)
    for crop in crops[:4]:
        fake = generate_fake("diffusion_like", crop, rng)
        assert _nyquist_share(fake) < 3.0 * _nyquist_share(crop)
    # TV denoising removes small-scale variation: the residual energy drops.
    def lap_energy(image):
        g = image.astype(np.float64).mean(axis=2)
        return float(np.mean((4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]) ** 2))

    drops = [lap_energy(generate_fake("diffusion_like", c, rng)) / lap_energy(c) for c in crops]
    assert np.median(drops) < 0.8, drops


def test_controls_smooth_the_real_but_stay_close(crops):
    rng = np.random.default_rng(0)
    for control in ("blur", "resample"):
        out = apply_control(control, crops[0], rng)
        assert out.dtype == np.uint8 and out.shape == crops[0].shape
        assert 0.5 < np.abs(out.astype(int) - crops[0]).mean() < 20


# --- the built benchmark ----------------------------------------------------------------


def test_layout_counts_and_benchmark_json(small_root):
    info = json.loads((small_root / "benchmark.json").read_text())
    assert info["name"] == "embedded" and info["version"] == EMBEDDED_VERSION and info["complete"] is True
    assert info["seen_family"] == SEEN_FAMILY and info["families"] == list(FAMILIES)
    assert info["image_size"] == 96 and info["seed"] == 0
    assert sorted(p.name for p in (small_root / "test").iterdir()) == sorted(FAMILIES)
    expected_groups = {"train", "val"} | {f"test/{f}" for f in FAMILIES}
    assert set(info["counts"]) == expected_groups
    for group, count in info["counts"].items():
        for label, key in (("0_real", "real"), ("1_fake", "fake")):
            files = list((small_root / group).glob(f"**/{label}/*.png"))
            assert len(files) == count[key] > 0, (group, label)
    assert info["counts"]["train"]["real"] == round(_builder.TRAIN_PAIRS * SMALL_SCALE)
    # Content classes under train/ are the photo categories.
    assert sorted(p.name for p in (small_root / "train").iterdir()) == info["classes"]
    sample = next((small_root / "test" / "transposed_conv" / "1_fake").iterdir())
    with Image.open(sample) as image:
        assert image.format == "PNG" and image.mode == "RGB" and image.size == (96, 96)


def test_train_and_val_hold_only_the_seen_family(small_root):
    for split in ("train", "val"):
        fakes = list((small_root / split).glob("*/1_fake/*.png"))
        assert fakes and all(p.stem.endswith("_" + SEEN_FAMILY) for p in fakes)
    for family in FAMILIES:
        fakes = list((small_root / "test" / family / "1_fake").glob("*.png"))
        assert fakes and all(p.stem.endswith("_" + family) for p in fakes)


def test_split_by_source_photo(small_root):
    ids = set(json.loads((small_root / "sources.json").read_text())["photos"])
    used: dict[str, set[str]] = {}
    for split in ("train", "val", "test"):
        used[split] = {
            next(pid for pid in ids if p.name.startswith(pid + "_")) for p in (small_root / split).rglob("*.png")
        }
        assert used[split] == set(PHOTO_SPLITS[split]), split
    assert not used["train"] & used["val"] and not used["train"] & used["test"] and not used["val"] & used["test"]


def test_processed_real_controls_are_mixed_into_every_split(small_root):
    for split in ("train", "val", "test"):
        reals = list((small_root / split).rglob("0_real/*.png"))
        for control in ("blur", "resample"):
            share = sum(p.stem.endswith("_" + control) for p in reals) / len(reals)
            assert 0.03 < share < 0.35, (split, control, share)


def test_colour_histograms_do_not_solve_it_but_traces_do(small_root):
    histogram = histogram_baseline_ap(small_root)
    assert set(histogram) == set(FAMILIES)
    assert np.mean(list(histogram.values())) < 0.72, histogram
    scores = spectral_probe(small_root)
    probe = {family: values["auc"] for family, values in scores.items()}
    assert probe == spectral_probe_auc(small_root)
    assert probe[SEEN_FAMILY] > 0.9, probe
    # The protocol's metric: the trace is there to be learnt to a high AP on the seen family.
    assert scores[SEEN_FAMILY]["ap"] > 0.9, scores
    unseen = [probe[f] for f in FAMILIES if f != SEEN_FAMILY]
    assert np.mean(unseen) < probe[SEEN_FAMILY], probe


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = _file_digests(build_embedded_benchmark(tmp_path / "a", scale=0.02, seed=5, progress=False))
    b = _file_digests(build_embedded_benchmark(tmp_path / "b", scale=0.02, seed=5, progress=False))
    c = _file_digests(build_embedded_benchmark(tmp_path / "c", scale=0.02, seed=6, progress=False))
    assert a == b
    pngs = [k for k in a if k.endswith(".png")]
    assert len(pngs) > 50
    assert sum(a[k] != c.get(k) for k in pngs) > 0.9 * len(pngs)


def test_cache_is_versioned_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("QMDD_CACHE", str(tmp_path / "cache"))
    root = build_embedded_benchmark(scale=0.02, progress=False)
    assert root.parent == tmp_path / "cache" / "embedded"
    assert root.name.startswith(f"v{EMBEDDED_VERSION}-")
    stamp = (root / "benchmark.json").stat().st_mtime_ns
    start = time.perf_counter()
    assert build_embedded_benchmark(scale=0.02, progress=False) == root
    assert time.perf_counter() - start < 1.0
    assert (root / "benchmark.json").stat().st_mtime_ns == stamp  # not rebuilt
    # Another parameter, another folder; another version, another folder.
    assert _builder.cache_key(0, 96, 0.03) != root.name
    monkeypatch.setattr(_builder, "EMBEDDED_VERSION", "999")
    assert _builder.cache_key(0, 96, 0.02).startswith("v999-")
    assert _builder.cache_key(0, 96, 0.02) != root.name


def test_interrupted_build_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    target = tmp_path / "bench"
    # A leftover temp folder of an earlier crash must not count.
    leftover = tmp_path / ".bench.partial-1-deadbeef"
    (leftover / "train").mkdir(parents=True)
    original = _builder._write_pair
    calls = {"n": 0}

    def crash_after_ten(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 10:
            raise KeyboardInterrupt  # as a user's Ctrl-C
        return original(*args, **kwargs)

    monkeypatch.setattr(_builder, "_write_pair", crash_after_ten)
    with pytest.raises(KeyboardInterrupt):
        build_embedded_benchmark(target, scale=0.02, progress=False)
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir()] == [leftover.name]  # our own temp folder is gone
    monkeypatch.setattr(_builder, "_write_pair", original)
    root = build_embedded_benchmark(target, scale=0.02, progress=False)
    assert root == target and json.loads((root / "benchmark.json").read_text())["complete"] is True


def test_refuses_to_overwrite_a_foreign_folder_and_force_rebuilds(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an embedded benchmark"):
        build_embedded_benchmark(foreign, scale=0.02, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"

    root = build_embedded_benchmark(tmp_path / "b", scale=0.02, progress=False)
    (root / "marker").write_text("old build")
    assert build_embedded_benchmark(root, scale=0.02, progress=False) == root
    assert (root / "marker").exists()  # reused
    build_embedded_benchmark(root, scale=0.02, force=True, progress=False)
    assert not (root / "marker").exists()  # rebuilt from scratch


@pytest.mark.parametrize("kwargs", [{"scale": 0}, {"image_size": 8}, {"seed": -1}])
def test_bad_parameters_raise(tmp_path, kwargs):
    with pytest.raises(ValueError):
        build_embedded_benchmark(tmp_path / "x", progress=False, **kwargs)
    assert not os.listdir(tmp_path)
