"""A trained low-bit detector against its int8 CPU deployment: agreement, AP and speed.

    python benchmarks/deployed_agreement.py --checkpoint runs/<run>/best.pt
    python benchmarks/deployed_agreement.py --checkpoint runs/<run>/best.pt --json out.json

On every test set of the checkpoint's own data (the embedded benchmark unless
``data.root`` names another), it scores each image with the fake-quant model (the
reference) and with ``qmdd.deploy.to_int8`` of it, and reports per set and overall:

- equal labels at 0.5 and at the checkpoint's validation threshold (share of images);
- the largest difference of the fake probabilities;
- the AP of each form.

Then it times FP32 eager PyTorch (the same architecture in full precision; speed does not
depend on the weights) against the int8 model at batch 1 and 32, in alternation, best of
``--reps`` rounds, and gives the speedup as a ratio from that one run.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

import numpy as np
import torch

from cpu_inference import interleaved_latency
from qmdd.data import build_training_data
from qmdd.deploy import calibration_images, to_int8
from qmdd.metrics import accuracy_at, average_precision
from qmdd.detector import build_detector, load_detector


def _scores(model: torch.nn.Module, dataset, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    labels, scores = [], []
    with torch.inference_mode():
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            images = torch.stack([image for image, _ in items])
            scores.append(torch.sigmoid(model(images).reshape(-1)).numpy())
            labels.append(np.array([label for _, label in items]))
    return np.concatenate(labels), np.concatenate(scores)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a trained low-bit checkpoint (best.pt)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--reps", type=int, default=10, help="timed rounds at batch 32 (4x at batch 1); best of")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    detector = load_detector(args.checkpoint)
    config = detector.config
    int8 = to_int8(detector.model, calibration_images(config.data))
    data = build_training_data(config.data, seed=config.train.seed)
    rows, all_ref, all_fast, all_labels = [], [], [], []
    for name, dataset in data.test.items():
        labels, reference = _scores(detector.model, dataset, args.batch_size)
        _, fast = _scores(int8, dataset, args.batch_size)
        all_ref.append(reference)
        all_fast.append(fast)
        all_labels.append(labels)
        rows.append({
            "set": name,
            "images": len(labels),
            "equal_labels_05": float(np.mean((reference > 0.5) == (fast > 0.5))),
            "equal_labels_thr": float(np.mean((reference > detector.threshold) == (fast > detector.threshold))),
            "max_prob_diff": float(np.abs(reference - fast).max()),
            "ap_fake_quant": average_precision(labels, reference),
            "ap_int8": average_precision(labels, fast),
            "acc_fake_quant": accuracy_at(labels, reference),
            "acc_int8": accuracy_at(labels, fast),
        })
    reference, fast = np.concatenate(all_ref), np.concatenate(all_fast)
    overall = {
        "images": int(reference.size),
        "equal_labels_05": float(np.mean((reference > 0.5) == (fast > 0.5))),
        "equal_labels_thr": float(np.mean((reference > detector.threshold) == (fast > detector.threshold))),
        "max_prob_diff": float(np.abs(reference - fast).max()),
        "mean_ap_fake_quant": float(np.mean([r["ap_fake_quant"] for r in rows])),
        "mean_ap_int8": float(np.mean([r["ap_int8"] for r in rows])),
    }
    engines = {"fp32": build_detector(replace(config, quant=config.quant.at_full_precision()), pretrained=False).eval(), "int8": int8}
    size = config.data.crop_size
    timing = {}
    for batch_size in (1, 32):
        batch = torch.randn(batch_size, 3, size, size)
        seconds = interleaved_latency(engines, batch, args.reps if batch_size > 1 else 4 * args.reps)
        timing[f"b{batch_size}"] = {"fp32_ms": 1000 * seconds["fp32"], "int8_ms": 1000 * seconds["int8"], "speedup": seconds["fp32"] / seconds["int8"]}
    result = {
        "checkpoint": args.checkpoint,
        "arch": config.model.arch,
        "quant": config.quant.tag,
        "quantizer": config.quant.quantizer,
        "threshold": detector.threshold,
        "input_size": size,
        "threads": torch.get_num_threads(),
        "sets": rows,
        "overall": overall,
        "timing": timing,
        "command": "python benchmarks/deployed_agreement.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    print(f"{config.model.arch} {config.quant.tag} ({config.quant.quantizer}), threshold {detector.threshold:.3f}, {size} px")
    print("| set | images | equal labels @0.5 | @val-thr | max Δp | AP fake-quant | AP int8 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['set']} | {r['images']} | {100 * r['equal_labels_05']:.2f}% | {100 * r['equal_labels_thr']:.2f}% | {r['max_prob_diff']:.4f} | {100 * r['ap_fake_quant']:.2f} | {100 * r['ap_int8']:.2f} |")
    o = overall
    print(f"| all | {o['images']} | {100 * o['equal_labels_05']:.2f}% | {100 * o['equal_labels_thr']:.2f}% | {o['max_prob_diff']:.4f} | {100 * o['mean_ap_fake_quant']:.2f} (mean) | {100 * o['mean_ap_int8']:.2f} (mean) |")
    for key, t in timing.items():
        print(f"latency {key}: FP32 eager {t['fp32_ms']:.2f} ms, int8 {t['int8_ms']:.2f} ms -> {t['speedup']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
