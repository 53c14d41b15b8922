"""Milliseconds of one Adam update of a backbone's parameters: for-loop, foreach and fused.

The optimizer update is a fixed cost per step that fake quantization does not change; it
is timed alone here (gradients filled with noise), and the largest parameter difference
after the same updates shows that the three implementations compute the same thing.

    python benchmarks/adam_step.py --arch resnet18 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from qmdd.models import create_model

IMPLEMENTATIONS = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    setups = {}
    for name, options in IMPLEMENTATIONS.items():
        torch.manual_seed(0)
        model = create_model(args.arch)
        for parameter in model.parameters():
            parameter.grad = torch.randn_like(parameter)
        setups[name] = (model, torch.optim.Adam(model.parameters(), lr=1e-3, **options))
    seconds: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(args.rounds):  # alternate, so load changes hit all three alike
        for name, (_, optimizer) in setups.items():
            start = time.perf_counter()
            optimizer.step()
            seconds[name].append(time.perf_counter() - start)
    reference = list(setups["for-loop"][0].parameters())
    for name, (model, _) in setups.items():
        gap = max((a - b).abs().max().item() for a, b in zip(reference, model.parameters()))
        print(f"{name:<10}{1e3 * statistics.median(seconds[name]):8.1f} ms   max |diff| vs for-loop {gap:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
