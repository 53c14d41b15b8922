"""DistributedDataParallel on CPU with gloo: two processes, the sampler, and torchrun."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import multiprocessing as mp

import ddp_worker
from qmdd.metrics import binary_metrics
from qmdd.detector import load_detector
from qmdd.training import EpochShuffleSampler
from qmdd.training._loop import predict


def test_sampler_shards_cover_the_single_process_batches():
    size, seed, world, batch = 23, 5, 2, 4
    single = list(EpochShuffleSampler(size, seed))
    # Rank r's k-th batch (batch / world images) + the other ranks' = the global batch k.
    shards = [list(EpochShuffleSampler(size, seed, rank, world)) for rank in range(world)]
    assert all(len(s) == size // world for s in shards)
    per_rank = batch // world
    for k in range(len(shards[0]) // per_rank):
        together = sorted(i for s in shards for i in s[k * per_rank : (k + 1) * per_rank])
        assert together == sorted(single[k * batch : (k + 1) * batch])
    # Every epoch is a new permutation, the same on every rank.
    sampler = EpochShuffleSampler(size, seed, 1, world)
    sampler.set_epoch(1)
    assert list(sampler) != shards[1]
    with pytest.raises(ValueError, match="rank 2"):
        EpochShuffleSampler(size, seed, 2, world)


def test_single_process_order_is_unchanged():
    # The resume test and earlier runs depend on this exact order (seeded by (seed, epoch)).
    sampler = EpochShuffleSampler(10, 3)
    sampler.set_epoch(2)
    assert list(sampler) == np.random.default_rng((3, 2)).permutation(10).tolist()


def test_two_gloo_ranks_stay_identical_and_match_one_process(tiny_root, tmp_path):
    init_path, out_path = tmp_path / "init.pt", tmp_path / "ddp.pt"
    init_state = ddp_worker.calibrated_init_state()
    torch.save(init_state, init_path)
    mp.spawn(
        ddp_worker.worker,
        args=(2, str(tmp_path / "rendezvous"), str(tiny_root), str(init_path), str(out_path)),
        nprocs=2,
        join=True,
    )
    ddp = torch.load(out_path, weights_only=False)
    single = ddp_worker.train_tiny(str(tiny_root), init_state)

    # DDP all-reduces the gradients: every rank applies the same update, bit for bit.
    assert ddp["rank_gap"] == 0.0
    # Two ranks of 4 images = one process with the same 8: same weights after every step,
    # up to float summation order.
    assert len(ddp["states"]) == len(single["states"]) == 6
    for step, (a, b) in enumerate(zip(ddp["states"], single["states"]), 1):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), f"step {step}: max diff {(a - b).abs().max()}"
    assert not torch.allclose(ddp["states"][-1], ddp["states"][0])  # it did train
    # Validation predictions gathered from both ranks: the AP of the whole set.
    (ddp_val,), (single_val,) = ddp["history"], single["history"]
    assert ddp_val["n_real"] + ddp_val["n_fake"] == single_val["n_real"] + single_val["n_fake"]
    assert ddp_val["ap"] == pytest.approx(single_val["ap"], abs=1e-6)


@pytest.mark.slow
def test_torchrun_trains_with_rank_0_writing(tiny_root, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "qmdd.train", "--data-root", str(tiny_root), "--out", str(out), "--bits", "2",
        "--epochs", "1", "--batch-size", "8", "--set", "data.crop_size=24",
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("metrics in") == 1  # one summary, from rank 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert len(list(out.glob("events.out.tfevents.*"))) == 1  # rank 0's writer only
    # The test AP is that of all images, gathered from both ranks: one process predicting
    # every image with the saved best weights gets the same number.
    from qmdd.config import DataConfig
    from qmdd.data import build_training_data

    loaded = load_detector(out / "best.pt")
    model, config = loaded.model, loaded.config
    data = build_training_data(DataConfig(root=str(tiny_root), crop_size=24), seed=config.train.seed)
    labels, scores = predict(model, data.test["unseen"], 16, torch.device("cpu"))
    assert metrics["test"]["unseen"]["ap"] == pytest.approx(binary_metrics(labels, scores).ap, abs=1e-6)
    assert metrics["test"]["unseen"]["n_real"] + metrics["test"]["unseen"]["n_fake"] == len(labels)


def test_sync_bn_on_cpu_is_refused_with_a_fix(tiny_root, tmp_path, monkeypatch):
    from qmdd.config import load_config
    from qmdd.training import RunError, run
    from qmdd.training import _run

    # Pretend to be a rank of a 2-process group without starting one: the check comes first.
    monkeypatch.setattr(_run, "init_distributed", lambda device: ddp_worker.DistContext(0, 2))
    config = load_config(None, [f"data.root={tiny_root}", f"train.out={tmp_path / 'x'}", "train.sync_bn=true", "train.batch_size=8"])
    with pytest.raises(RunError, match="sync_bn=true needs CUDA"):
        run(config)
    config = load_config(None, [f"data.root={tiny_root}", f"train.out={tmp_path / 'y'}", "train.batch_size=7"])
    with pytest.raises(RunError, match="multiple of the 2 processes"):
        run(config)
