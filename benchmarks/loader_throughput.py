"""Input pipeline against training step: can the loader keep the model busy?

Measures, on the quick-start setting (embedded benchmark, ``configs/default.yaml``: 64 px
crops, batch 64, blur/JPEG augmentation at p = 0.1):

- **loader alone**: images per second delivered by the training loader qmdd uses
  (``Trainer.train_loader``: seeded per-sample augmentation, persistent workers, pinned
  memory on CUDA), for each ``--workers`` count, over whole epochs; the first epoch includes
  the workers' start-up, later ones show the steady state of persistent workers;
- **training step alone**: images per second of the optimizer step (forward, backward,
  Adam) on one fixed batch, FP32 and W2A2 ResNet-18 (LSQ), no loading;
- **together**: images per second of real training epochs (``Trainer._train_epoch``), W2A2,
  for each worker count.

The loader keeps up when "loader alone" is well above "training step alone"; with fewer
cores than workers + training threads, they compete for the same cores.

    QMDD_CACHE=/tmp/qs_cache python benchmarks/loader_throughput.py
    python benchmarks/loader_throughput.py --workers 0,2 --epochs 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
from torch.nn import functional as F

from qmdd.config import load_config
from qmdd.data import build_training_data
from qmdd.quant import calibrate
from qmdd.detector import build_detector
from qmdd.training import Trainer


def loader_rate(trainer: Trainer, epochs: int) -> list[float]:
    """Images per second of each epoch of the training loader alone."""
    rates = []
    for epoch in range(epochs):
        start, images = time.perf_counter(), 0
        for batch, _ in trainer.train_loader(epoch):
            images += batch.shape[0]
        rates.append(images / (time.perf_counter() - start))
    return rates


def step_rate(model: torch.nn.Module, batch: torch.Tensor, steps: int) -> float:
    """Images per second of optimizer steps on one fixed batch (no loading)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    labels = (torch.arange(batch.shape[0]) % 2).float()
    model.train()

    def one_step() -> None:
        loss = F.binary_cross_entropy_with_logits(model(batch).squeeze(1), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    one_step()  # warm-up
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        one_step()
        times.append(time.perf_counter() - start)
    return batch.shape[0] / statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="0,1,2", help="loader worker counts to measure")
    parser.add_argument("--epochs", type=int, default=2, help="loader epochs per worker count")
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps per model")
    parser.add_argument("--train-epochs", type=int, default=1, help="real training epochs per worker count (0: skip)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    config = load_config(None, args.overrides)
    data = build_training_data(config.data, seed=config.train.seed)
    device = torch.device("cpu")
    batch_size = config.train.batch_size
    results: dict = {"images_per_epoch": len(data.train), "batch": batch_size, "crop": config.data.crop_size}

    def trainer_for(model: torch.nn.Module, workers: int) -> Trainer:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        return Trainer(model, optimizer, data.train, data.val, batch_size=batch_size, device=device, seed=0, num_workers=workers)

    worker_counts = [int(w) for w in args.workers.split(",")]
    results["loader_images_per_s"] = {}
    for workers in worker_counts:
        rates = loader_rate(trainer_for(torch.nn.Linear(1, 1), workers), args.epochs)
        results["loader_images_per_s"][workers] = [round(r, 1) for r in rates]
        print(f"loader, {workers} worker(s): " + ", ".join(f"epoch {i + 1} {r:.0f} img/s" for i, r in enumerate(rates)))

    batch = torch.stack([data.train[i][0] for i in range(batch_size)])
    results["step_images_per_s"] = {}
    for bits in (32, 2):
        model = build_detector(load_config(None, [*args.overrides, f"quant.bits={bits}"]))
        if bits < 32:
            calibrate(model, [batch])
        rate = step_rate(model, batch, args.steps)
        results["step_images_per_s"][f"w{bits}a{bits}" if bits < 32 else "fp32"] = round(rate, 1)
        print(f"training step alone, {'FP32' if bits == 32 else f'W{bits}A{bits}'} {config.model.arch}: {rate:.0f} img/s")

    results["train_epoch_images_per_s"] = {}
    for workers in worker_counts if args.train_epochs else []:
        model = build_detector(load_config(None, [*args.overrides, "quant.bits=2"]))
        calibrate(model, [batch])
        trainer = trainer_for(model, workers)
        rates = []
        for epoch in range(args.train_epochs):
            start = time.perf_counter()
            trainer._train_epoch(epoch)
            steps = len(data.train) // batch_size
            rates.append(steps * batch_size / (time.perf_counter() - start))
        results["train_epoch_images_per_s"][workers] = [round(r, 1) for r in rates]
        print(f"W2A2 training epochs, {workers} worker(s): " + ", ".join(f"{r:.0f} img/s" for r in rates))

    if args.json:
        results.update(
            command="python benchmarks/loader_throughput.py " + " ".join(os.sys.argv[1:]),
            torch=torch.__version__,
            cpu=platform.processor() or platform.machine(),
            cores=os.cpu_count(),
            threads=torch.get_num_threads(),
        )
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
