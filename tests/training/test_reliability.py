"""User mistakes and accidents end in a sentence, never a traceback, and lose nothing.

Each test reproduces a failure a user met: two runs in one folder, a full disk, a crash
between two checkpoint writes, config values that passed validation and crashed later,
inconsistent checkpoints, output paths that cannot be written (docs/safety.md).
"""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys

import pytest
import torch

from qmdd.checkpoint import load_checkpoint
from qmdd.run_folder import RunFolderLock
from qmdd.train import main as train_main

TINY = ["--batch-size", "8", "--set", "data.crop_size=24"]


def _train(tiny_root, out, *extra):
    return train_main(["--data-root", str(tiny_root), "--out", str(out), *TINY, *extra])


@pytest.fixture(scope="module")
def fp32_run(tiny_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp32_run")
    assert _train(tiny_root, out, "--bits", "32", "--epochs", "1") == 0
    return out


def test_a_busy_run_folder_is_refused_and_a_killed_holder_leaves_no_lock(tiny_root, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from qmdd.run_folder import RunFolderLock; RunFolderLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(120)", str(out)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert _train(tiny_root, out, "--epochs", "1") == 1
        error = capsys.readouterr().err
        assert f"{out} is in use by pid {holder.pid}" in error and "Traceback" not in error
        assert not (out / "last.pt").exists(), "the refused run wrote nothing"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # kill -9 leaves the lock file behind; the kernel released the lock with the process.
    assert (out / ".lock").exists()
    assert _train(tiny_root, out, "--bits", "32", "--epochs", "1") == 0


def test_the_lock_is_released_when_the_run_ends(fp32_run):
    with RunFolderLock(fp32_run):  # would raise RunFolderBusy if the finished run still held it
        pass


def test_a_full_disk_stops_the_run_with_a_sentence_and_it_resumes(tiny_root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "full"
    real_save, saves = torch.save, []

    def save_until_the_disk_fills(obj, path, *args, **kwargs):
        saves.append(path)
        if len(saves) == 2:  # epoch 2's last.pt
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_the_disk_fills)
    assert _train(tiny_root, out, "--bits", "32", "--epochs", "3") == 1
    error = capsys.readouterr().err
    assert "the disk is full" in error and f"--resume --out {out}" in error
    assert load_checkpoint(out / "last.pt")["trainer"]["epoch"] == 1, "epoch 1 stays the resume point"
    assert not list(out.glob(".*.tmp")), "the failed write left no temporary file"
    monkeypatch.setattr(torch, "save", real_save)
    assert train_main(["--resume", "--out", str(out)]) == 0
    assert load_checkpoint(out / "last.pt")["trainer"]["epoch"] == 3


def test_resume_restores_best_from_last_and_removes_stale_temporaries(tiny_root, tmp_path):
    out = tmp_path / "crashed"
    assert _train(tiny_root, out, "--bits", "32", "--epochs", "1") == 0
    # A crash between writing last.pt and linking best.pt to it, plus a write cut short.
    (out / "best.pt").unlink()
    (out / "metrics.json").unlink()
    stale = out / ".last.pt.k3j2.tmp"
    stale.write_bytes(b"\0" * 1000)
    # Nothing is left to train: evaluation needs best.pt, which only last.pt can give back.
    assert train_main(["--resume", "--out", str(out)]) == 0
    assert not stale.exists()
    assert load_checkpoint(out / "best.pt")["trainer"]["epoch"] == 1
    assert json.loads((out / "metrics.json").read_text())["best_epoch"] == 1


@pytest.mark.parametrize(
    ("flags", "key"),
    [
        (["--lr", "nan"], "train.lr"),
        (["--lr", "inf"], "train.lr"),
        (["--seed", "-1"], "train.seed"),
        (["--device", "cudax"], "train.device"),
        (["--device", "cuda:abc"], "train.device"),
        (["--set", "train.weight_decay=-1"], "train.weight_decay"),
        (["--set", "data.embedded_scale=nan"], "data.embedded_scale"),
        (["--arch", "mesonet", "--block", "cqb"], "quant.block=cqb"),
        (["--classes", ""], "--classes"),
    ],
)
def test_config_values_that_would_crash_later_are_refused_at_validation(flags, key, capsys):
    assert train_main([*flags, "--print-config"]) == 2
    error = capsys.readouterr().err
    assert key in error and "Traceback" not in error


@pytest.mark.parametrize(("content", "reason"), [(b"\xff\xfe\x00binary", "not UTF-8"), (b"[]\n", "mapping"), (b"0\n", "mapping"), (b"false\n", "mapping")])
def test_config_files_that_are_not_a_mapping_are_refused(tmp_path, content, reason, capsys):
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    assert train_main(["--config", str(path), "--print-config"]) == 2
    assert reason in capsys.readouterr().err


@pytest.mark.parametrize(("content", "reason"), [(b"\x89PNG\r\n\x1a\n\xff\xd8", "not UTF-8"), (b"sets: 5\n", "sets must be a list"), (b"sets: [progan]\nsearch: 5\n", "search must be"), (b"sets: [5]\n", "sets[0]")])
def test_bad_suite_files_are_refused(fp32_run, tmp_path, content, reason, capsys):
    from qmdd.eval import main as eval_main

    suite = tmp_path / "suite.yaml"
    suite.write_bytes(content)
    assert eval_main(["--checkpoint", str(fp32_run / "best.pt"), "--suite", str(suite), "--out", str(tmp_path / "e")]) == 1
    assert reason in capsys.readouterr().err


def _forged(fp32_run, tmp_path, change) -> str:
    payload = torch.load(fp32_run / "best.pt", weights_only=True)
    change(payload)
    path = tmp_path / "forged.pt"
    torch.save(payload, path)
    return str(path)


class _Unpicklable:
    pass


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda run, tmp: str((tmp / "empty.pt").touch() or tmp / "empty.pt"), "is empty (0 bytes)"),
        (lambda run, tmp: _forged(run, tmp, lambda p: p["config"]["model"].update(arch="resnet9000")), "resnet9000"),
        (lambda run, tmp: _forged(run, tmp, lambda p: p["model"].pop(next(iter(p["model"])))), "not fit"),
        (lambda run, tmp: _forged(run, tmp, lambda p: p.pop("config")), "'config' entry is missing"),
        (lambda run, tmp: _forged(run, tmp, lambda p: p.update(extra=_Unpicklable())), "safe (weights-only) load refuses"),
    ],
)
def test_inconsistent_checkpoints_give_one_error_naming_the_file(fp32_run, tiny_root, tmp_path, make, reason, capsys):
    from qmdd.eval import main as eval_main

    path = make(fp32_run, tmp_path)
    assert eval_main(["--checkpoint", path, "--suite", "embedded", "--data-root", str(tiny_root), "--out", str(tmp_path / "e")]) == 1
    assert _train(tiny_root, tmp_path / "r", "--bits", "2", "--epochs", "1", "--init", path) == 1
    for error in capsys.readouterr().err.strip().splitlines():
        assert path in error and reason in error, error
        assert "weights_only=False" not in error  # torch's advice is the unsafe path


def test_output_paths_are_checked_before_the_work(fp32_run, tiny_root, tmp_path, capsys):
    from qmdd.eval import main as eval_main
    from qmdd.explain import main as explain_main
    from qmdd.export import main as export_main
    from qmdd.report import main as report_main

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    checkpoint = str(fp32_run / "best.pt")
    assert _train(tiny_root, a_file / "run", "--epochs", "1") == 1
    assert export_main(["--checkpoint", checkpoint, "--out", str(a_file / "m.qmdd")]) == 1
    assert export_main(["--checkpoint", checkpoint, "--out", str(tmp_path)]) == 1
    assert report_main(["--checkpoint", checkpoint, "--json", str(a_file / "r.json")]) == 2
    assert explain_main(["--checkpoint", checkpoint, str(a_file), "--out", str(a_file / "cams")]) == 1
    assert eval_main(["--checkpoint", checkpoint, "--suite", "embedded", "--out", str(a_file / "e")]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 6 and all(str(a_file) in e or str(tmp_path) in e for e in errors), errors
    assert "Traceback" not in "".join(errors)


def test_eval_prints_the_table_before_a_failed_write(fp32_run, tiny_root, tmp_path, monkeypatch, capsys):
    from qmdd import evaluation
    from qmdd.eval import main as eval_main

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(evaluation, "write_reports", disk_full)
    assert eval_main(["--checkpoint", str(fp32_run / "best.pt"), "--suite", "embedded", "--data-root", str(tiny_root), "--out", str(tmp_path / "e")]) == 1
    captured = capsys.readouterr()
    assert "unseen" in captured.out, "the results reach the screen"
    assert "No space left on device" in captured.err


def test_the_embedded_suite_scores_the_build_the_checkpoint_was_trained_on(monkeypatch):
    from qmdd.config import DataConfig
    from qmdd.evaluation import EvalError, default_data_root, get_suite

    built = []
    monkeypatch.setattr("qmdd.data.resolve_data_root", lambda data, progress=None: built.append(data.embedded_scale) or "root")
    default_data_root(get_suite("embedded"), trained_on=[DataConfig(embedded_scale=0.1)])
    assert built == [0.1]
    with pytest.raises(EvalError, match="different embedded builds"):
        default_data_root(get_suite("embedded"), trained_on=[DataConfig(embedded_scale=0.1), DataConfig()])
