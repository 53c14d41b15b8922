"""End-to-end: ``python -m qmdd.train`` on a tiny tree, checkpoints, resume."""

import json
import os
import subprocess
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from qmdd.quant import QConv2d
from qmdd.train import main
from qmdd.checkpoint import load_checkpoint
from qmdd.detector import load_detector

TINY = ["--batch-size", "8", "--set", "data.crop_size=24", "--set", "train.log_every=1"]


def _train(tiny_root, out, *extra):
    return main(["--data-root", str(tiny_root), "--out", str(out), *TINY, *extra])


@pytest.fixture(scope="module")
def w2_run(tiny_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("w2_run")
    assert _train(tiny_root, out, "--bits", "2", "--epochs", "2") == 0
    return out


def test_run_folder_holds_config_metrics_checkpoints_and_curves(w2_run):
    for name in ("config.yaml", "metrics.json", "last.pt", "best.pt"):
        assert (w2_run / name).is_file(), name
    metrics = json.loads((w2_run / "metrics.json").read_text())
    assert metrics["quant"] == "w2a2" and metrics["seen_family"] == "seen"
    # Which LSQ kernel ran is recorded (their step gradients differ in the last bits).
    assert metrics["fake_quant_kernels"] == ("python" if os.environ.get("QMDD_NATIVE_KERNELS") == "0" else "native")
    assert set(metrics["test"]) == {"seen", "unseen"}
    for family in metrics["test"].values():
        assert {"ap", "acc", "real_acc", "fake_acc", "n_real", "n_fake"} <= set(family)
        assert 0.0 <= family["ap"] <= 1.0
    # With a single unseen family its mean is that family.
    assert metrics["mean_unseen"]["ap"] == pytest.approx(metrics["test"]["unseen"]["ap"])
    # The savings are counted for every run: a W2A2 body costs less than FP32.
    assert metrics["cost"]["ops_ratio"] > 1.0 and metrics["cost"]["storage_ratio"] > 1.0
    assert metrics["cost"]["ops"] < metrics["cost"]["fp32_ops"]

    events = EventAccumulator(str(w2_run))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "val/ap", "val/acc", "test/seen/ap"} <= tags
    assert any(tag.startswith("quant/") and tag.endswith("weight_step") for tag in tags)
    assert len(events.Scalars("val/acc")) == 2  # one point per epoch: a curve
    hparams = EventAccumulator(str(w2_run / "hparams"))
    hparams.Reload()
    assert "cost/ops_ratio" in hparams.Tags()["scalars"]


def test_checkpoints_load_weights_only_and_rebuild_the_quantized_model(w2_run):
    payload = torch.load(w2_run / "last.pt", weights_only=True)
    assert payload["config"]["quant"]["bits"] == 2 and payload["trainer"]["epoch"] == 2
    assert payload["optimizer"]["state"], "optimizer state is saved for resuming"
    loaded = load_detector(w2_run / "best.pt")
    model, config = loaded.model, loaded.config
    assert config.quant.bits == 2
    assert any(isinstance(m, QConv2d) for m in model.modules())
    assert model(torch.randn(2, 3, 24, 24)).shape == (2, 1)


def test_resumed_run_ends_with_the_same_metrics(tiny_root, tmp_path, w2_run):
    out = tmp_path / "interrupted"
    assert _train(tiny_root, out, "--bits", "2", "--epochs", "1") == 0
    # --resume takes the run's own config from last.pt: only what may change is given.
    assert main(["--out", str(out), "--resume", "--epochs", "2"]) == 0
    resumed = json.loads((out / "metrics.json").read_text())
    straight = json.loads((w2_run / "metrics.json").read_text())
    assert resumed["test"] == straight["test"]
    assert load_checkpoint(out / "last.pt")["trainer"]["step"] == load_checkpoint(w2_run / "last.pt")["trainer"]["step"]
    a, b = load_checkpoint(out / "last.pt")["model"], load_checkpoint(w2_run / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_different_config_and_a_missing_run(tiny_root, tmp_path, w2_run, capsys):
    assert _train(tiny_root, w2_run, "--bits", "3", "--epochs", "2", "--resume") == 1
    assert "quant.bits: 2 -> 3" in capsys.readouterr().err
    assert _train(tiny_root, tmp_path / "nothing", "--bits", "2", "--resume") == 2
    assert "holds no last.pt" in capsys.readouterr().err
    assert main(["--resume", "--config", "configs/default.yaml", "--out", str(w2_run)]) == 2
    assert "leave out --config" in capsys.readouterr().err
    assert _train(tiny_root, w2_run, "--bits", "2") == 1
    assert "--resume" in capsys.readouterr().err


def test_bad_input_gives_clear_errors(tmp_path, capsys):
    assert main(["--bits", "5", "--out", str(tmp_path / "x")]) == 2
    assert "quant.bits=5 is not a supported bit width" in capsys.readouterr().err
    assert main(["--set", "train.lrr=1", "--out", str(tmp_path / "x")]) == 2
    assert "did you mean 'lr'" in capsys.readouterr().err
    assert main(["--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 1
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["--data-root", str(tmp_path / "empty"), "--out", str(tmp_path / "y")]) == 1
    assert "no train/ folder" in capsys.readouterr().err


def test_classes_filter_and_unknown_class(tiny_root, tmp_path, capsys):
    assert _train(tiny_root, tmp_path / "one", "--classes", "a", "--epochs", "1") == 0
    assert json.loads((tmp_path / "one" / "metrics.json").read_text())["train_images"] == 24
    assert _train(tiny_root, tmp_path / "bad", "--classes", "a,zebra", "--epochs", "1") == 1
    assert "zebra" in capsys.readouterr().err


def test_help_and_listings_run_as_a_module():
    result = subprocess.run([sys.executable, "-m", "qmdd.train", "--help"], capture_output=True, text=True, check=True)
    assert "--bits" in result.stdout and "--resume" in result.stdout and "embedded benchmark" in result.stdout
    keys = subprocess.run([sys.executable, "-m", "qmdd.train", "--list-keys"], capture_output=True, text=True, check=True)
    assert "first_layer_bits" in keys.stdout
