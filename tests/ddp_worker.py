"""What the distributed tests run in each process (import as ``ddp_worker``).

A module of its own, not the test file: ``torch.multiprocessing.spawn`` re-imports the
worker function by module name in fresh processes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import distributed as dist
from torch import nn

from qmdd.config import DataConfig, QuantConfig
from qmdd.data import build_training_data
from qmdd.quant import ActivationQuantizer, calibrate, quantize
from qmdd.training import Callback, Trainer
from qmdd.training._distributed import SINGLE_PROCESS, DistContext, all_gather_objects, init_distributed, sync_from_rank0

GLOBAL_BATCH = 8
CROP = 16


def tiny_float_model() -> nn.Module:
    """Conv/ReLU stack without BatchNorm: per-rank batch statistics cannot blur the
    comparison with one process, so what is compared is DDP's gradient averaging alone."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 1),
    )


def tiny_w2a2_model() -> nn.Module:
    return quantize(tiny_float_model(), QuantConfig(bits=2))


def flat_state(model: nn.Module) -> torch.Tensor:
    return torch.cat([v.detach().reshape(-1).float() for v in model.state_dict().values()])


class StepRecorder(Callback):
    """Records the weights after every optimizer step and, under DDP, the largest
    difference between any rank's weights and rank 0's."""

    def __init__(self) -> None:
        self.states: list[torch.Tensor] = []
        self.rank_gap = 0.0

    def on_step_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        state = flat_state(trainer.model)
        for other in all_gather_objects(state, trainer.dist):
            self.rank_gap = max(self.rank_gap, float((other - state).abs().max()))
        self.states.append(state)


def train_tiny(root: str, init_state: dict, ctx: DistContext = SINGLE_PROCESS, epochs: int = 1) -> dict:
    """One epoch of the W2A2 tiny model with plain SGD on the tiny tree (global batch 8).

    SGD rather than Adam: its update is linear in the gradient, so float rounding
    differences between one and two processes stay as small as they are; Adam's first
    step, lr * sign(g), would turn a 1e-9 difference in a near-zero gradient into 2 lr.
    """
    data = build_training_data(DataConfig(root=root, crop_size=CROP), seed=0)
    model = tiny_w2a2_model()
    model.load_state_dict(init_state)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    recorder = StepRecorder()
    trainer = Trainer(
        model, optimizer, data.train, data.val,
        batch_size=GLOBAL_BATCH, device=torch.device("cpu"), seed=0, callbacks=[recorder], dist=ctx,
    )
    trainer.fit(epochs)
    return {"states": recorder.states, "rank_gap": recorder.rank_gap, "history": trainer.state.history}


def calibrated_init_state() -> dict:
    model = tiny_w2a2_model()
    calibrate(model, [torch.rand(4, 3, CROP, CROP)])
    return model.state_dict()


def worker(rank: int, world_size: int, rendezvous: str, root: str, init_path: str, out_path: str) -> None:
    torch.set_num_threads(1)  # two processes on a two-core machine
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    try:
        ctx = init_distributed(torch.device("cpu"))
        assert ctx.world_size == world_size and ctx.rank == rank

        # 1. Calibration on different data per rank, then rank 0's quantizer state
        # everywhere, including the Python-side grid choice: rank 0 sees non-negative
        # inputs (unsigned grid), rank 1 signed ones.
        model = quantize(tiny_float_model(), QuantConfig(bits=2, first_layer_bits=2))
        batch = torch.rand(4, 3, CROP, CROP) if rank == 0 else torch.randn(4, 3, CROP, CROP) * 3
        calibrate(model, [batch])
        sync_from_rank0(model, ctx)
        grids = [q.signed_grid for q in model.modules() if isinstance(q, ActivationQuantizer)]
        gathered = all_gather_objects((flat_state(model), grids), ctx)
        assert all(torch.equal(state, gathered[0][0]) for state, _ in gathered), "calibration differs between ranks"
        assert all(g == gathered[0][1] for _, g in gathered), "grid choice differs between ranks"
        assert grids[0] is False, "rank 0's unsigned grid must win"

        # 2. Training: every rank's weights after every step, and the result.
        result = train_tiny(root, torch.load(init_path, weights_only=True), ctx)
        if rank == 0:
            torch.save(result, Path(out_path))
    finally:
        dist.destroy_process_group()
