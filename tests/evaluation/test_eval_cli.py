"""python -m qmdd.eval on synthetic ForenSynths / UniversalFakeDetect trees."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from qmdd.eval import main

FAST = ["--crop", "24", "--workers", "0", "--batch-size", "8"]


def _json(out: Path, name: str) -> dict:
    return json.loads((out / f"{name}.json").read_text())


def _predictions(path: Path) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    with path.open() as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == ("set", "path", "label", "score")
        for row in reader:
            rows.setdefault(row["set"], []).append(row)
    return rows


@pytest.fixture(scope="module")
def forensynths_run(forensynths_root, checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_fs")
    code = main(["--checkpoint", str(checkpoint), "--suite", "forensynths", "--data-root", str(forensynths_root), "--out", str(out), "--save-predictions", "--oracle", *FAST])
    return code, out


def test_forensynths_table_has_every_set_with_its_status_and_counts(forensynths_run, capsys):
    code, out = forensynths_run
    assert code == 0
    report = _json(out, "forensynths")
    sets = report["checkpoints"][0]["sets"]
    assert list(sets) == ["progan", "stylegan", "stylegan2", "biggan", "cyclegan", "stargan", "gaugan", "deepfake"]
    assert {n for n, s in sets.items() if s["status"] == "missing"} == {"stylegan2", "cyclegan", "deepfake"}
    assert sets["gaugan"]["status"] == "empty" and "no real images" in sets["gaugan"]["reason"]
    # Per-class sub-folders are gathered: progan has car and cat.
    assert (sets["progan"]["n_real"], sets["progan"]["n_fake"]) == (6, 6)
    assert (sets["stylegan"]["n_real"], sets["stylegan"]["n_fake"]) == (2, 4)
    # Odd modes (L, CMYK, RGBA, 16-bit) are scored; the truncated file is skipped by path.
    assert (sets["stargan"]["n_real"], sets["stargan"]["n_fake"]) == (5, 5)
    assert sets["stargan"]["skipped"] == 1 and sets["stargan"]["skipped_files"][0]["path"].endswith("truncated.png")
    mean = report["checkpoints"][0]["mean"]
    assert mean["over"] == ["progan", "stylegan", "biggan", "stargan"]
    assert mean["ap"] == pytest.approx(np.mean([sets[n]["ap"] for n in mean["over"]]))
    markdown = (out / "forensynths.md").read_text()
    assert "| stargan |" in markdown and "missing" in markdown and "Acc@best (oracle)" in markdown
    csv_rows = list(csv.DictReader((out / "forensynths.csv").open()))
    assert [r["set"] for r in csv_rows] == [*sets, "mean"]


def test_saved_predictions_recompute_the_reported_metrics(forensynths_run):
    _, out = forensynths_run
    sets = _json(out, "forensynths")["checkpoints"][0]["sets"]
    predictions = _predictions(out / "forensynths_predictions.csv")
    assert set(predictions) == {n for n, s in sets.items() if s["status"] == "ok"}
    for name, rows in predictions.items():
        labels = np.array([int(r["label"]) for r in rows])
        scores = np.array([float(r["score"]) for r in rows])
        assert sets[name]["ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
        assert sets[name]["acc"] == pytest.approx(np.mean((scores > 0.5) == (labels == 1)))
        assert sets[name]["real_acc"] == pytest.approx(np.mean(scores[labels == 0] <= 0.5))
        best = max(np.mean((scores >= t) == (labels == 1)) for t in [*scores, np.inf])
        assert sets[name]["oracle_acc"] == pytest.approx(best)
        assert all(("1_fake" in r["path"]) == (r["label"] == "1") for r in rows)
    assert not any("truncated" in r["path"] for rows in predictions.values() for r in rows)


def test_tensorboard_holds_the_suite_scalars(forensynths_run):
    _, out = forensynths_run
    runs = list((out / "tensorboard").iterdir())
    assert len(runs) == 1
    events = EventAccumulator(str(runs[0]))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"forensynths/progan/ap", "forensynths/stargan/acc", "forensynths/mean/ap"} <= tags
    assert not any(tag.startswith("forensynths/deepfake/") for tag in tags)


def test_multiple_checkpoints_give_comparison_columns_and_workers_change_nothing(forensynths_root, forensynths_run, checkpoint, checkpoint_w2, tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["--checkpoint", str(checkpoint), str(checkpoint_w2), "--suite", "forensynths", "--data-root", str(forensynths_root), "--save-predictions", "--crop", "24", "--batch-size", "4"]
    assert main([*argv, "--out", str(out), "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "fp32/best AP" in printed and "w2/best AP" in printed
    report = _json(out, "forensynths")
    assert [c["quant"] for c in report["checkpoints"]] == ["fp32", "w2a2"]
    # Same scores as the fp32 checkpoint alone, in the main process, at another batch size.
    alone = _json(forensynths_run[1], "forensynths")["checkpoints"][0]["sets"]
    together = report["checkpoints"][0]["sets"]
    for name, entry in alone.items():
        assert entry["ap"] == pytest.approx(together[name]["ap"], abs=1e-9) and entry["acc"] == together[name]["acc"], name
    assert together["stargan"]["skipped"] == report["checkpoints"][1]["sets"]["stargan"]["skipped"] == 1
    assert report["checkpoints"][1]["sets"]["progan"]["ap"] != together["progan"]["ap"], "each column is its own model"
    assert (out / "forensynths_predictions_fp32-best.csv").is_file() and (out / "forensynths_predictions_w2-best.csv").is_file()


def test_universalfakedetect_shared_real_pools_and_cap(ufd_root, checkpoint, tmp_path):
    out = tmp_path / "ufd"
    assert main(["--checkpoint", str(checkpoint), "--suite", "universalfakedetect", "--data-root", str(ufd_root), "--out", str(out), "--save-predictions", "--max-per-class", "4", *FAST]) == 0
    sets = _json(out, "universalfakedetect")["checkpoints"][0]["sets"]
    predictions = _predictions(out / "universalfakedetect_predictions.csv")
    assert (sets["guided"]["n_real"], sets["guided"]["n_fake"], sets["guided"]["found_real"]) == (4, 4, 6)
    assert (sets["ldm_200"]["n_real"], sets["ldm_200"]["n_fake"], sets["ldm_200"]["found_fake"]) == (4, 4, 8)
    assert (sets["ldm_100"]["n_real"], sets["ldm_100"]["n_fake"]) == (4, 3)
    assert (sets["glide_100_27"]["n_real"], sets["glide_100_27"]["n_fake"]) == (2, 2)
    assert sets["dalle"]["status"] == "missing"

    def reals(name):
        return sorted(r["path"] for r in predictions[name] if r["label"] == "0")

    assert all("/imagenet/0_real/" in p for p in reals("guided"))
    assert all("/laion/0_real/" in p for p in reals("ldm_200"))
    assert reals("ldm_200") == reals("ldm_100"), "one seed draws the same reals from a shared pool"
    assert all("/glide_100_27/0_real/" in p for p in reals("glide_100_27")), "a set's own reals win"
    # Another seed draws another subset of the pool (9 choose 4 = 126 subsets).
    from qmdd.evaluation import get_suite, resolve_suite

    suite = get_suite("universalfakedetect").with_protocol(max_per_class=4, seed=1)
    drawn = sorted(str(p) for rset in resolve_suite(suite, ufd_root).sets if rset.name == "ldm_200" for p, label in rset.samples if label == 0)
    assert drawn != reals("ldm_200") and len(drawn) == 4


def test_robustness_options_name_the_report_and_change_the_scores(forensynths_root, checkpoint, tmp_path, forensynths_run):
    out = tmp_path / "robust"
    assert main(["--checkpoint", str(checkpoint), "--suite", "forensynths", "--data-root", str(forensynths_root), "--out", str(out), "--blur", "1.5", "--jpeg", "50", "--max-per-class", "3", "--save-predictions", *FAST]) == 0
    degraded = _json(out, "forensynths_blur1.5_jpeg50")
    assert degraded["blur_sigma"] == 1.5 and degraded["jpeg_quality"] == 50
    assert degraded["checkpoints"][0]["sets"]["biggan"]["n_fake"] == 3
    clean = {r["path"]: float(r["score"]) for rows in _predictions(forensynths_run[1] / "forensynths_predictions.csv").values() for r in rows}
    blurred = {r["path"]: float(r["score"]) for rows in _predictions(out / "forensynths_blur1.5_jpeg50_predictions.csv").values() for r in rows}
    assert set(blurred) <= set(clean)
    assert all(abs(blurred[p] - clean[p]) > 1e-7 for p in blurred), "every degraded image scores differently"


def test_yaml_suite(forensynths_root, checkpoint, tmp_path):
    suite = tmp_path / "two.yaml"
    suite.write_text("name: two\nsearch: [test]\nprotocol: {crop: 24}\nsets:\n  - biggan\n  - {name: style, path: StyleGAN}\n")
    out = tmp_path / "yaml"
    assert main(["--checkpoint", str(checkpoint), "--suite", str(suite), "--data-root", str(forensynths_root), "--out", str(out), "--workers", "0"]) == 0
    sets = _json(out, "two")["checkpoints"][0]["sets"]
    assert list(sets) == ["biggan", "style"] and sets["style"]["n_fake"] == 4  # case-insensitive folder


def test_errors_are_reported_not_raised(forensynths_root, checkpoint, tmp_path, capsys):
    assert main(["--checkpoint", str(checkpoint), "--suite", "forensynth", "--data-root", str(forensynths_root), "--out", str(tmp_path)]) == 1
    assert "did you mean 'forensynths'" in capsys.readouterr().err
    assert main(["--checkpoint", str(tmp_path / "nope.pt"), "--suite", "forensynths", "--data-root", str(forensynths_root), "--out", str(tmp_path)]) == 1
    assert "nope.pt" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--checkpoint", str(checkpoint), "--suite", "gangen", "--data-root", str(empty), "--out", str(tmp_path / "g"), "--workers", "0"]) == 1
    assert "no set of suite 'gangen'" in capsys.readouterr().err
    assert (tmp_path / "g" / "gangen.md").is_file(), "the table of missing sets is still written"
    assert main(["--list-suites"]) == 0
    assert "universalfakedetect" in capsys.readouterr().out


@pytest.mark.slow
def test_embedded_suite_reproduces_the_training_test_metrics(tiny_root, tmp_path):
    from qmdd.train import main as train_main

    run = tmp_path / "run"
    assert train_main(["--data-root", str(tiny_root), "--out", str(run), "--bits", "32", "--epochs", "1", "--batch-size", "8", "--set", "data.crop_size=24"]) == 0
    trained = json.loads((run / "metrics.json").read_text())["test"]
    out = tmp_path / "eval"
    assert main(["--checkpoint", str(run / "best.pt"), "--suite", "embedded", "--data-root", str(tiny_root), "--out", str(out), "--workers", "0"]) == 0
    sets = _json(out, "embedded")["checkpoints"][0]["sets"]
    assert set(sets) == set(trained) == {"seen", "unseen"}
    for name in trained:
        assert sets[name]["ap"] == pytest.approx(trained[name]["ap"], abs=1e-6)
        assert sets[name]["acc"] == pytest.approx(trained[name]["acc"], abs=1e-6)
