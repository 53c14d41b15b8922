"""data_scripts/faceforensics.py on a synthetic tree with FF++'s real folder names: validation,
face crops split by video pairs, and the per-manipulation table with a video-level AUC."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from face_clips import make_face_clip

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "data_scripts"))

import faceforensics  # noqa: E402

from qmdd.video import video_id_of  # noqa: E402

REALS = ("000", "003", "001", "002")
FAKES = ("000_003", "003_000", "001_002", "002_001")


@pytest.fixture(scope="module")
def ffpp_root(tmp_path_factory) -> Path:
    """original_sequences/youtube/c23/videos and every method's c23/videos, 4 + 5 x 4 clips of 6 frames."""
    root = tmp_path_factory.mktemp("FaceForensics++")
    clip = make_face_clip(root / "template.mp4", frames=6)
    folders = [root / "original_sequences" / "youtube" / "c23" / "videos"]
    folders += [root / "manipulated_sequences" / m / "c23" / "videos" for m in faceforensics.METHODS]
    for index, folder in enumerate(folders):
        folder.mkdir(parents=True)
        for name in REALS if index == 0 else FAKES:
            (folder / f"{name}.mp4").write_bytes(clip.read_bytes())
    clip.unlink()
    splits = root / "splits"
    splits.mkdir()
    (splits / "train.json").write_text(json.dumps([["000", "003"]]))
    (splits / "val.json").write_text(json.dumps([]))
    (splits / "test.json").write_text(json.dumps([["001", "002"]]))
    return root


def test_validation_counts_every_source_and_names_what_is_missing(ffpp_root, tmp_path, capsys):
    assert faceforensics.main(["--root", str(ffpp_root), "--validate-only"]) == 0
    out = capsys.readouterr().out
    assert all(f"{source:<16}{4:>8}" in out for source in ("original", *faceforensics.METHODS))
    assert faceforensics.main(["--root", str(ffpp_root), "--validate-only", "--compression", "c40"]) == 1
    err = capsys.readouterr().err
    assert "original: no folder original_sequences/youtube/c40/videos" in err and "NeuralTextures: no folder" in err
    assert faceforensics.main(["--root", str(tmp_path / "absent")]) == 1
    assert "signed terms-of-use form" in capsys.readouterr().err


def test_the_default_split_keeps_both_videos_of_a_pair_and_their_fakes_together():
    names = [f"{i:03d}" for i in range(40)] + [f"{i:03d}_{i + 1:03d}" for i in range(0, 40, 2)] + [f"{i + 1:03d}_{i:03d}" for i in range(0, 40, 2)]
    mapping = faceforensics.seeded_splits(names, seed=0)
    for i in range(0, 40, 2):
        a, b = f"{i:03d}", f"{i + 1:03d}"
        assert mapping[a] == mapping[b] == faceforensics.split_of(f"{a}_{b}", mapping)
    counts = {s: sum(v == s for v in mapping.values()) // 2 for s in faceforensics.SPLITS}
    assert counts == {"train": 14, "val": 3, "test": 3}  # 20 pairs cut 72/14/14
    assert faceforensics.seeded_splits(names, seed=1) != mapping


def test_extraction_and_evaluation_on_the_synthetic_tree(ffpp_root, tmp_path, tiny_detector, capsys):
    out = tmp_path / "faces"
    argv = ["--root", str(ffpp_root), "--out", str(out), "--splits", str(ffpp_root / "splits"), "--real-every", "3", "--fake-frames", "2", "--face-size", "64", "--set", "scale_factor=1.25", "--set", "min_face=48"]
    assert faceforensics.main(argv) == 0
    crops = sorted(out.rglob("*.png"))
    by_split = {s: {video_id_of(p) for p in crops if p.relative_to(out).parts[0] == s} for s in faceforensics.SPLITS}
    assert by_split["train"] == {"000", "003", "000_003", "003_000"} and by_split["test"] == {"001", "002", "001_002", "002_001"}
    assert len(list((out / "test" / "original" / "0_real").glob("*.png"))) == 2 * 2  # 2 videos x frames 0 and 3
    assert all(len(list((out / "test" / m / "1_fake").glob("*.png"))) == 2 * 2 for m in faceforensics.METHODS)
    manifest = json.loads((out / "extraction.json").read_text())
    assert len(manifest) == 4 * 6 and all(e["saved"] == e["sampled"] for e in manifest.values())
    # a rerun skips every video already in the manifest
    before = {p: p.stat().st_mtime_ns for p in crops}
    assert faceforensics.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in sorted(out.rglob("*.png"))} == before
    capsys.readouterr()

    reports = tmp_path / "reports"
    assert faceforensics.main(["--out", str(out), "--evaluate", str(tiny_detector[0]), "--reports", str(reports)]) == 0
    printed = capsys.readouterr().out
    sets = json.loads((reports / "faceforensics.json").read_text())["checkpoints"][0]["sets"]
    rows = list(csv.DictReader((reports / "faceforensics_predictions.csv").open()))
    aucs = next(iter(json.loads((reports / "faceforensics_video_auc.json").read_text()).values()))
    for method in faceforensics.METHODS:
        assert method in printed
        mine = [r for r in rows if r["set"] == method]
        labels, scores = [int(r["label"]) for r in mine], [float(r["score"]) for r in mine]
        assert sorted(labels) == [0] * 4 + [1] * 4  # the 2 test reals' 4 crops, and 4 crops of 2 fakes
        assert sets[method]["ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-6)
        # independent video pooling: the mean score of each video's crops, by file name
        videos: dict[str, list] = {}
        for r in mine:
            videos.setdefault(Path(r["path"]).stem.rsplit("__f", 1)[0], [int(r["label"]), []])[1].append(float(r["score"]))
        assert len(videos) == 4
        expected = roc_auc_score([v[0] for v in videos.values()], [np.mean(v[1]) for v in videos.values()])
        assert aucs[method] == pytest.approx(expected)
    assert "video-level AUC" in printed and aucs["all"] is not None
