"""A trained low-bit detector against its deployed forms: agreement, AP, file size and speed.

    python benchmarks/deployed_agreement.py --checkpoint runs/<run>/best.pt
    python benchmarks/deployed_agreement.py --checkpoint runs/<run>/best.pt --threads 1 --json out.json

Deployed forms (any quantizer family, plain or CQB blocks):

- ``int8``: ``qmdd.deploy.to_int8`` of the model (PyTorch's x86 int8 backend);
- ``onnx``: ``qmdd.deploy.export_onnx`` of it, run by ONNX Runtime on the CPU;
- ``onnx_float``: the float-activation ONNX file (``export_onnx(..., activations="float")``:
  the fake-quant model's float graph with integer weights), in ONNX Runtime;
- ``packed``: the ``.qmdd`` file written and loaded back (its outputs are checked equal to
  the fake-quant model's, and it is not scored again).

On every test set of the checkpoint's own data (the embedded benchmark unless
``data.root`` names another), each image is scored by the fake-quant model (the reference)
and by each deployed form; per set and overall the script reports the share of equal
labels at 0.5 and at the checkpoint's validation threshold, the largest difference of the
fake probabilities, and the AP of each form.

Sizes: the ``.qmdd`` and both ``.onnx`` files against ``torch.save`` of the FP32 state dict of
the same architecture. Speed: FP32 eager PyTorch (the same architecture in full precision;
speed does not depend on the weights) in its default NCHW memory order and in NHWC (the
order the int8 model runs in, faster for FP32 as well), the int8 model and ONNX Runtime at
batch 1 and 32, timed in alternation, best of ``--reps`` rounds; ratios to FP32 NCHW from
that one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings
from dataclasses import replace

import numpy as np
import torch

from cpu_inference import ChannelsLast, interleaved_latency
from qmdd.data import build_training_data
from qmdd.deploy import calibration_images, export_onnx, load_packed, open_deployed, save_packed, to_int8
from qmdd.detector import build_detector, load_detector
from qmdd.metrics import average_precision


#: The deployed forms scored and timed, in the printed order.
ENGINES = ("int8", "onnx", "onnx_float")


def _scores(model: torch.nn.Module, dataset, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    labels, scores = [], []
    with torch.inference_mode():
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            images = torch.stack([image for image, _ in items])
            scores.append(torch.sigmoid(model(images).reshape(-1)).numpy())
            labels.append(np.array([label for _, label in items]))
    return np.concatenate(labels), np.concatenate(scores)


def _agreement(reference: np.ndarray, deployed: np.ndarray, threshold: float) -> dict[str, float]:
    return {
        "equal_labels_05": float(np.mean((reference > 0.5) == (deployed > 0.5))),
        "equal_labels_thr": float(np.mean((reference > threshold) == (deployed > threshold))),
        "max_prob_diff": float(np.abs(reference - deployed).max()),
    }


def _files(detector, folder: str, calibration) -> tuple[dict[str, int], dict[str, torch.nn.Module], float]:
    """Write the packed and both ONNX files; return their sizes, the ONNX models and the
    largest output difference of the loaded packed model from the fake-quant model."""
    config = detector.config
    packed, onnx_path, onnx_float, fp32 = (os.path.join(folder, name) for name in ("model.qmdd", "model.onnx", "float.onnx", "fp32.pt"))
    save_packed(packed, detector.model, config, detector.threshold)
    export_onnx(onnx_path, detector.model, config, calibration, detector.threshold)
    export_onnx(onnx_float, detector.model, config, calibration, detector.threshold, activations="float")
    fp32_model = build_detector(replace(config, quant=config.quant.at_full_precision()), pretrained=False)
    torch.save(fp32_model.state_dict(), fp32)
    probe = calibration[0]
    with torch.inference_mode():
        packed_diff = float((load_packed(packed).model(probe) - detector.model(probe)).abs().max())
    files = {"fp32_state_dict": fp32, "qmdd": packed, "onnx": onnx_path, "onnx_float": onnx_float}
    sizes = {name: os.path.getsize(path) for name, path in files.items()}
    models = {name: open_deployed(files[name], threads=torch.get_num_threads()).model for name in ("onnx", "onnx_float")}
    return sizes, models, packed_diff


def _score_all(detector, engines: dict[str, torch.nn.Module], batch_size: int) -> tuple[list[dict], dict]:
    config = detector.config
    data = build_training_data(config.data, seed=config.train.seed)
    rows, pooled = [], {name: [] for name in ("fake_quant", *engines)}
    for name, dataset in data.test.items():
        labels, reference = _scores(detector.model, dataset, batch_size)
        row = {"set": name, "images": len(labels), "ap_fake_quant": average_precision(labels, reference)}
        pooled["fake_quant"].append(reference)
        for engine, model in engines.items():
            _, scores = _scores(model, dataset, batch_size)
            pooled[engine].append(scores)
            row[engine] = {**_agreement(reference, scores, detector.threshold), "ap": average_precision(labels, scores)}
        rows.append(row)
    reference = np.concatenate(pooled["fake_quant"])
    overall = {"images": int(reference.size), "mean_ap_fake_quant": float(np.mean([r["ap_fake_quant"] for r in rows]))}
    for engine in engines:
        overall[engine] = {**_agreement(reference, np.concatenate(pooled[engine]), detector.threshold), "mean_ap": float(np.mean([r[engine]["ap"] for r in rows]))}
    return rows, overall


def _timing(config, engines: dict[str, torch.nn.Module], reps: int) -> dict[str, dict[str, float]]:
    fp32 = build_detector(replace(config, quant=config.quant.at_full_precision()), pretrained=False).eval()
    timed = {"fp32": fp32, "fp32_nhwc": ChannelsLast(fp32), **engines}
    size = config.data.crop_size
    timing = {}
    for batch_size in (1, 32):
        batch = torch.randn(batch_size, 3, size, size)
        seconds = interleaved_latency(timed, batch, reps if batch_size > 1 else 4 * reps)
        timing[f"b{batch_size}"] = {f"{name}_ms": 1000 * s for name, s in seconds.items()}
        timing[f"b{batch_size}"].update({f"{name}_speedup": seconds["fp32"] / s for name, s in seconds.items() if name != "fp32"})
    return timing


def _print(result: dict) -> None:
    print(f"{result['arch']} {result['quant']} ({result['quantizer']}, {result['block']}), threshold {result['threshold']:.3f}, {result['input_size']} px")
    sizes = result["sizes"]
    fp32 = sizes["fp32_state_dict"]
    files = ", ".join(f"{name} {sizes[name] / 1e6:.2f} MB ({fp32 / sizes[name]:.2f}x)" for name in ("qmdd", "onnx", "onnx_float"))
    print(f"files: FP32 state_dict {fp32 / 1e6:.2f} MB, {files}; packed max |Δlogit| {result['packed_max_logit_diff']:.2e}")
    print("| set | images | AP fake-quant | " + " | ".join(f"{e}: equal @0.5 / @thr, max Δp, AP" for e in ENGINES) + " |")
    print("|---|---|---|" + "---|" * len(ENGINES))
    for r in [*result["sets"], {"set": "all", **result["overall"], "ap_fake_quant": result["overall"]["mean_ap_fake_quant"]}]:
        cells = []
        for engine in ENGINES:
            e = r[engine]
            cells.append(f"{100 * e['equal_labels_05']:.2f}% / {100 * e['equal_labels_thr']:.2f}%, {e['max_prob_diff']:.3f}, {100 * e.get('ap', e.get('mean_ap')):.2f}")
        print(f"| {r['set']} | {r['images']} | {100 * r['ap_fake_quant']:.2f} | " + " | ".join(cells) + " |")
    for key, t in result["timing"].items():
        others = ", ".join(f"{name} {t[f'{name}_ms']:.2f} ms ({t[f'{name}_speedup']:.2f}x)" for name in ("fp32_nhwc", *ENGINES))
        print(f"latency {key}: FP32 {t['fp32_ms']:.2f} ms, {others}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a trained low-bit checkpoint (best.pt)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--reps", type=int, default=10, help="timed rounds at batch 32 (4x at batch 1); best of")
    parser.add_argument("--threads", type=int, help="torch and ONNX Runtime threads (default: torch's choice)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions.*deprecated")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    detector = load_detector(args.checkpoint)
    config = detector.config
    calibration = calibration_images(config.data)
    with tempfile.TemporaryDirectory() as folder:
        sizes, onnx_models, packed_diff = _files(detector, folder, calibration)
        engines = {"int8": to_int8(detector.model, calibration), **onnx_models}
        rows, overall = _score_all(detector, engines, args.batch_size)
        timing = _timing(config, engines, args.reps)
    result = {
        "checkpoint": args.checkpoint,
        "arch": config.model.arch,
        "quant": config.quant.tag,
        "quantizer": config.quant.quantizer,
        "block": config.quant.block,
        "threshold": detector.threshold,
        "input_size": config.data.crop_size,
        "threads": torch.get_num_threads(),
        "sizes": sizes,
        "packed_max_logit_diff": packed_diff,
        "sets": rows,
        "overall": overall,
        "timing": timing,
        "command": "python benchmarks/deployed_agreement.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    _print(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
