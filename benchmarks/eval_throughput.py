"""Evaluation throughput: the full suite pipeline (decode, crop, batch, forward) against the
pure model forward on ready tensors, so we see whether loading is the bottleneck.

    python benchmarks/eval_throughput.py                          # ResNet-18 FP32, 224 px, CPU
    python benchmarks/eval_throughput.py --arch resnet50 --device cuda --images 2048 --workers 0 4 8

It writes a synthetic ForenSynths-layout set (256x256 PNGs, the size of the ForenSynths
test images) to a temporary folder, runs ``qmdd.evaluation.evaluate`` on it with each
``--workers`` value, and times ``model(batch)`` alone at the same batch size. The ratio
pipeline / forward is the share of the forward speed the evaluation keeps (1.0: loading
is fully hidden behind the model).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qmdd.config import config_from_dict  # noqa: E402
from qmdd.evaluation import EvalOptions, SetSpec, Suite, Protocol, evaluate  # noqa: E402
from qmdd.checkpoint import save_checkpoint  # noqa: E402
from qmdd.detector import build_detector  # noqa: E402
from qmdd.training import resolve_device  # noqa: E402


def _write_set(root: Path, images: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for label in ("0_real", "1_fake"):
        folder = root / "bench" / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(images // 2):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")


def _forward_rate(model: torch.nn.Module, batch: int, crop: int, device: torch.device, seconds: float) -> float:
    x = torch.randn(batch, 3, crop, crop, device=device)
    with torch.inference_mode():
        model(x)  # warm-up (cudnn autotune, allocator)
        if device.type == "cuda":
            torch.cuda.synchronize()
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            model(x)
            done += batch
        if device.type == "cuda":
            torch.cuda.synchronize()
    return done / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--bits", type=int, default=32)
    parser.add_argument("--images", type=int, default=256, help="images in the synthetic set")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    config = config_from_dict({"model": {"arch": args.arch}, "quant": {"bits": args.bits}, "data": {"crop_size": args.crop}})
    model = build_detector(config).to(device).eval()
    if config.quant.enabled:
        from qmdd.quant import calibrate

        calibrate(model, [torch.randn(4, 3, args.crop, args.crop, device=device)])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _write_set(tmp, args.images, args.size)
        save_checkpoint(tmp / "model.pt", config=config, model=model.cpu())
        model.to(device)
        suite = Suite("bench", "throughput", (SetSpec("bench"),), Protocol(crop=args.crop))
        forward = _forward_rate(model, args.batch_size, args.crop, device, seconds=5.0)
        print(f"{args.arch} {config.quant.tag} on {device} ({torch.get_num_threads()} CPU threads), batch {args.batch_size}, "
              f"{args.images} PNGs {args.size}px, crop {args.crop}")
        print(f"pure forward: {forward:8.1f} images/s")
        for workers in args.workers:
            options = EvalOptions(batch_size=args.batch_size, workers=workers, device=str(device), progress=False)
            evaluate([tmp / "model.pt"], suite, tmp, options)  # warm-up pass: page cache, cudnn
            report = evaluate([tmp / "model.pt"], suite, tmp, options)
            rate = report.images_per_second
            print(f"eval pipeline, {workers} workers: {rate:8.1f} images/s  ({rate / forward:.2f} of forward)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
