"""Suites as data: registry, YAML, resolution on disk, transforms, the oracle threshold."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from qmdd.config import DataConfig
from qmdd.data import DetectorTransform, LoadFailure, TolerantImageSet, collate_skipping_failures, gaussian_blur, jpeg_compress
from qmdd.evaluation import EvalTransform, Protocol, SuiteError, best_threshold_accuracy, get_suite, list_suites, load_suite_file, resolve_suite
from qmdd.metrics import accuracy_at


def test_builtin_suites_match_the_published_set_lists():
    assert {"forensynths", "forensynths-all", "universalfakedetect", "gangen", "diffusionforensics", "embedded"} <= set(list_suites())
    assert [s.name for s in get_suite("forensynths").sets] == ["progan", "stylegan", "stylegan2", "biggan", "cyclegan", "stargan", "gaugan", "deepfake"]
    assert len(get_suite("forensynths-all").sets) == 13
    ufd = {s.name: s.shared_real for s in get_suite("universalfakedetect").sets}
    assert ufd["guided"] == "imagenet" and {v for k, v in ufd.items() if k != "guided"} == {"laion"} and len(ufd) == 8
    assert get_suite("universalfakedetect").protocol.max_per_class == 1000
    assert get_suite("forensynths").protocol == Protocol(crop=224, resize=None)
    assert get_suite("embedded").protocol.from_checkpoint


@pytest.mark.parametrize("name", list_suites())
def test_every_suite_reports_missing_sets_on_an_empty_root(name, tmp_path):
    resolved = resolve_suite(get_suite(name), tmp_path)
    assert resolved.sets and all(s.status == "missing" and s.reason for s in resolved.sets)


def test_suite_search_accepts_the_root_or_the_unpacked_archive(forensynths_root):
    from_root = resolve_suite(get_suite("forensynths"), forensynths_root)
    from_test = resolve_suite(get_suite("forensynths"), forensynths_root / "test")
    assert from_root.data_dir == from_test.data_dir == forensynths_root / "test"


def test_the_cap_is_seeded_and_per_class(ufd_root):
    suite = get_suite("universalfakedetect").with_protocol(max_per_class=3)
    first = {s.name: s for s in resolve_suite(suite, ufd_root).sets}
    again = {s.name: s for s in resolve_suite(suite, ufd_root).sets}
    assert first["ldm_200"].samples == again["ldm_200"].samples
    assert (first["ldm_200"].n_real, first["ldm_200"].n_fake) == (3, 3)
    assert (first["ldm_200"].found_real, first["ldm_200"].found_fake) == (9, 8)


def test_yaml_suite_rejects_unknown_keys_with_a_hint(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsets: [a]\nprotocol: {crpo: 224}\n")
    with pytest.raises(SuiteError, match="did you mean 'crop'"):
        load_suite_file(bad)
    bad.write_text("name: x\nsets: []\n")
    with pytest.raises(SuiteError, match="lists no sets"):
        load_suite_file(bad)
    with pytest.raises(SuiteError, match="crop or resize"):
        Protocol(crop=None, resize=None)


def test_eval_transform_degrades_then_crops_like_the_training_test_pass():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
    expected = DetectorTransform(DataConfig(crop_size=24, crop_align=1), "test")(jpeg_compress(gaussian_blur(image, 1.0), 70), rng)
    got = EvalTransform(crop=24, blur_sigma=1.0, jpeg_quality=70)(image, rng)
    assert torch.equal(got, expected)
    assert torch.equal(EvalTransform(crop=24)(image, rng), DetectorTransform(DataConfig(crop_size=24, crop_align=1), "test")(image, rng))
    # The checkpoint's alignment and a deliberate shift reach the centre crop.
    aligned = DetectorTransform(DataConfig(crop_size=24, crop_align=8), "test", crop_shift=1)(image, rng)
    assert torch.equal(EvalTransform(crop=24, crop_align=8, crop_shift=1)(image, rng), aligned)
    assert not torch.equal(aligned, EvalTransform(crop=24, crop_align=8)(image, rng))
    resized = EvalTransform(crop=None, resize=32)(image, rng)
    assert resized.shape == (3, 32, 32)
    assert torch.equal(resized, DetectorTransform(DataConfig(crop_size=32), "test")(image.resize((32, 32), Image.BILINEAR), rng))


def test_tolerant_image_set_marks_unreadable_files(tmp_path):
    Image.new("RGB", (16, 16), 10).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    dataset = TolerantImageSet([(tmp_path / "ok.png", 0), (tmp_path / "bad.png", 1)], DetectorTransform(DataConfig(crop_size=8), "test"))
    images, labels, indices, failures = collate_skipping_failures([dataset[0], dataset[1]])
    assert images.shape == (1, 3, 8, 8) and labels.tolist() == [0] and indices.tolist() == [0]
    assert failures == [LoadFailure(1, str(tmp_path / "bad.png"), failures[0].error)] and "bad.png" in failures[0].error
    none, *_ , only = collate_skipping_failures([dataset[1]])
    assert none is None and len(only) == 1


@pytest.mark.parametrize("seed", range(5))
def test_best_threshold_accuracy_is_the_brute_force_optimum(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 40)
    scores = np.round(rng.random(40) * 0.5 + labels * 0.3, 2)  # ties on purpose
    acc, threshold = best_threshold_accuracy(labels, scores)
    brute = max(np.mean((scores >= t) == (labels == 1)) for t in [*np.unique(scores), np.inf])
    assert acc == pytest.approx(brute)
    assert accuracy_at(labels, scores, threshold) == pytest.approx(acc)
    assert acc >= accuracy_at(labels, scores, 0.5)
