"""Cost table and CPU inference benchmark: FP32 vs W3A3 vs W2A2, ResNet-50 and MobileNetV2.

One run measures, per architecture and bit width, at 224 px:
- counted params, MACs, BOPs, OPs and OPs ratio, counted storage (qmdd.cost);
- the measured size of the QMDD packed file (.qmdd) against the FP32 ``state_dict`` file;
- CPU latency of FP32 eager PyTorch and of the int8 deployment (qmdd.deploy.to_int8) at
  batch 1 and 32, and the speedup; also FP32 in NHWC, the int8 model's memory order
  (``nhwc_speedup_*``: the int8 model against it);
- the agreement of the int8 model with the fake-quant model (share of equal labels at 0.5,
  maximum probability difference) on crops of qmdd's shipped photos.

Models are untrained (speed does not depend on the weights); for agreement they are
calibrated on shipped photos and their BatchNorm statistics re-estimated on them, so their
activations are not degenerate.

    python benchmarks/cpu_inference.py --json docs/cpu_inference.json
    python benchmarks/cpu_inference.py --archs resnet50 --bits 2 --reps 2     # quicker
    python benchmarks/cpu_inference.py --archs resnet50 --bits 32,2 --quantizers lsq,slr --onnx   # + families, ONNX Runtime

``--quantizers`` adds a row per quantizer family (and ``--block cqb`` Connected Quantized
Blocks); ``--onnx`` also exports each low-bit model with ``qmdd.deploy.export_onnx`` and
times it in ONNX Runtime (its file size and latency in the ``onnx_*`` fields).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import tempfile
import time

import torch
from torch import nn

from qmdd.config import load_config
from qmdd.cost import cost_summary
from qmdd.deploy import calibration_images, export_onnx, load_onnx, save_packed, to_int8
from qmdd.models import create_model
from qmdd.quant import calibrate
from qmdd.detector import build_detector


def reestimate_batchnorm(model: nn.Module, batches) -> None:
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the batches
    model.train()
    with torch.no_grad():
        for batch in batches:
            model(batch)
    model.eval()


class ChannelsLast(nn.Module):
    """A copy of ``model`` with channels-last weights, fed channels-last images: the FP32
    reference in the memory order the int8 model runs in, which is faster for FP32 too.
    ``model`` itself is left as it is (``Module.to`` converts in place)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last))


def interleaved_latency(engines: dict[str, nn.Module], batch: torch.Tensor, rounds: int) -> dict[str, float]:
    """Best-of-``rounds`` seconds per forward pass for each engine, timed in alternation.

    The machine is shared: timing the engines in turn, round after round, exposes them to
    the same background load, so their ratio is fairer than timing one after the other.
    """
    times: dict[str, list[float]] = {name: [] for name in engines}
    with torch.inference_mode():
        for engine in engines.values():
            engine(batch)  # warm-up
        for _ in range(rounds):
            for name, engine in engines.items():
                start = time.perf_counter()
                engine(batch)
                times[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in times.items()}


def file_bytes(write) -> int:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model")
        write(path)
        return os.path.getsize(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default="resnet50,mobilenet_v2")
    parser.add_argument("--bits", default="32,3,2")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--reps", type=int, default=5, help="timed rounds at batch 32 (4x at batch 1); best of")
    parser.add_argument("--agreement-images", type=int, default=64)
    parser.add_argument("--quantizers", default="lsq", help="comma-separated quantizer families for the low-bit rows")
    parser.add_argument("--block", default="plain", choices=("plain", "cqb"))
    parser.add_argument("--onnx", action="store_true", help="also time each low-bit model exported to ONNX, in ONNX Runtime")
    parser.add_argument("--threads", type=int, help="torch and ONNX Runtime threads (default: torch's choice)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    onnx_folder = tempfile.TemporaryDirectory()
    rows = []
    for arch in args.archs.split(","):
        fp32_model = create_model(arch).eval()
        fp32_file = file_bytes(lambda p: torch.save(fp32_model.state_dict(), p))
        engines: dict[str, nn.Module] = {}
        arch_rows: dict[str, dict] = {}
        variants = [(int(b), q) for b in args.bits.split(",") for q in (["lsq"] if int(b) == 32 else args.quantizers.split(","))]
        for bits, quantizer in variants:
            block = args.block if bits < 32 else "plain"
            config = load_config(None, [f"model.arch={arch}", f"quant.bits={bits}", f"data.crop_size={args.size}", f"quant.quantizer={quantizer}", f"quant.block={block}"])
            tag = config.quant.tag if bits == 32 else f"{config.quant.tag}-{quantizer}-{block}"
            row = {"arch": arch, "quant": tag}
            if bits == 32:
                model = fp32_model
                row["file_bytes"] = fp32_file
            else:
                model = build_detector(config)
                calib = calibration_images(config.data, count=16)
                calibrate(model, calib[:1])
                reestimate_batchnorm(model, calib)
                calibrate(model, calib[:1])
                model.eval()
                row["file_bytes"] = file_bytes(lambda p: save_packed(p, model, config))
            row.update({k: v for k, v in cost_summary(model, args.size).items() if k != "convention"})
            row["file_ratio"] = fp32_file / row["file_bytes"]
            engines[row["quant"]] = model if bits == 32 else to_int8(model, calib)
            if bits == 32:
                engines["fp32-nhwc"] = ChannelsLast(model)
            if bits < 32 and args.onnx:
                onnx_path = os.path.join(onnx_folder.name, f"{arch}-{tag}.onnx")
                export_onnx(onnx_path, model, config, calib)
                row["onnx_file_bytes"] = os.path.getsize(onnx_path)
                engines[f"{tag}-onnx"] = load_onnx(onnx_path, threads=torch.get_num_threads()).model
            if bits < 32:
                images = torch.cat(calibration_images(config.data, count=args.agreement_images, batch_size=32, seed=1))
                with torch.inference_mode():
                    fake = torch.cat([torch.sigmoid(model(chunk)) for chunk in images.split(32)]).reshape(-1)
                    fast = torch.cat([torch.sigmoid(engines[row["quant"]](chunk)) for chunk in images.split(32)]).reshape(-1)
                row["equal_labels"] = float(((fake > 0.5) == (fast > 0.5)).float().mean())
                row["max_prob_diff"] = float((fake - fast).abs().max())
                row["fake_quant_prob_range"] = [float(fake.min()), float(fake.max())]
                row["agreement_images"] = len(images)
            arch_rows[row["quant"]] = row
        for batch_size in (1, 32):
            batch = torch.randn(batch_size, 3, args.size, args.size)
            rounds = args.reps if batch_size > 1 else 4 * args.reps
            seconds = interleaved_latency(engines, batch, rounds)
            for tag, row in arch_rows.items():
                row[f"latency_ms_b{batch_size}"] = 1000 * seconds[tag]
                row[f"speedup_b{batch_size}"] = seconds["fp32"] / seconds[tag] if "fp32" in seconds else float("nan")
                if "fp32-nhwc" in seconds:  # the FP32 model in the int8 model's memory order
                    row[f"nhwc_speedup_b{batch_size}"] = seconds["fp32-nhwc"] / seconds[tag]
                if f"{tag}-onnx" in seconds:
                    row[f"onnx_latency_ms_b{batch_size}"] = 1000 * seconds[f"{tag}-onnx"]
                    row[f"onnx_speedup_b{batch_size}"] = seconds["fp32"] / seconds[f"{tag}-onnx"] if "fp32" in seconds else float("nan")
        for row in arch_rows.values():
            rows.append(row)
            print(json.dumps(row), flush=True)
        del engines
    onnx_folder.cleanup()
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(), "torch": torch.__version__, "engine": "x86"},
        "input_size": args.size,
        "rows": rows,
    }
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    print()
    print("| model | params | MACs | BOPs | OPs | OPs ratio | storage (counted) | ratio | file | ratio | latency b1 / b32 | speedup b1 / b32 | equal labels | max dp |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        agree = f"{100 * r['equal_labels']:.1f}% | {r['max_prob_diff']:.3f}" if "equal_labels" in r else "- | -"
        print(
            f"| {r['arch']} {r['quant']} | {r['params'] / 1e6:.2f}M | {r['macs'] / 1e9:.2f}G | {r['bops'] / 1e9:.2f}G | "
            f"{r['ops'] / 1e9:.3f}G | {r['ops_ratio']:.2f}x | {r['storage_bytes'] / 1e6:.2f} MB | "
            f"{r['fp32_storage_bits'] / r['storage_bits']:.2f}x | {r['file_bytes'] / 1e6:.2f} MB | {r['file_ratio']:.2f}x | "
            f"{r['latency_ms_b1']:.0f} / {r['latency_ms_b32']:.0f} ms | {r['speedup_b1']:.2f}x / {r['speedup_b32']:.2f}x | {agree} |"
        )
    for r in rows:
        if "onnx_latency_ms_b32" in r:
            print(f"ONNX Runtime {r['arch']} {r['quant']}: file {r['onnx_file_bytes'] / 1e6:.2f} MB, {r['onnx_latency_ms_b1']:.0f} / {r['onnx_latency_ms_b32']:.0f} ms, "
                  f"{r['onnx_speedup_b1']:.2f}x / {r['onnx_speedup_b32']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
