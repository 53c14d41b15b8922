"""Structured (channel) pruning on the embedded benchmark: accuracy, size and speed.

    python benchmarks/structured_pruning.py --phase accuracy --work /tmp/slim-bench
    python benchmarks/structured_pruning.py --phase lite0 --work /tmp/slim-bench
    python benchmarks/structured_pruning.py --phase compare --work /tmp/slim-bench
    python benchmarks/structured_pruning.py --phase speed --work /tmp/slim-bench
    python benchmarks/structured_pruning.py --phase tables --work /tmp/slim-bench

Scaled down to fit a shared 2-core CPU (docs/pruning.md says so next to every table):
the sources are the trained FP32 ``trunc_resnet18`` runs of the default recipe (three
seeds, trained at ``data.embedded_scale=1``), fine-tuning and testing use the same
benchmark at ``--scale`` (default 0.25: its first quarter of pairs, the same generator and
the same disjoint photo splits, so no test photo was seen in training), and each pruning
step is followed by ``--epochs`` (default 1) of fine-tuning. The 0 % row gets the same
fine-tuning, so every row has the same budget.

Phases (each skips what its folder already holds, so the command can be repeated):

- ``accuracy``: removed share 0/10/20/30/40 % (global Taylor, one-shot); at 30 %: per-layer
  scope, magnitude importance, K=5 steps against one-shot with the same 5 epochs, and
  distillation (alpha 0.25); 0 % and 30 % also from seeds 1 and 2.
- ``lite0``: ``efficientnet_lite0`` trained from scratch at ``--scale`` (``--lite-epochs``),
  then pruned 0/20/40 %.
- ``compare``: on seed 0 at 30 %: unstructured one-shot ticket (``qmdd.lth``, one level),
  W2A2 LSQ from the FP32 run, and W2A2 LSQ from the 30 % pruned detector (``--qat-epochs``).
- ``speed``: parameters, MACs, file sizes and CPU latency at batch 1 and 32 of the
  detectors in ``SPEED``, each timed round by round against its unpruned FP32 parent (FP32
  eager, and both through the int8 path); the speedup is the median of the rounds' ratios
  from one run, one thread.
- ``tables``: the Markdown tables of docs/pruning.md from the JSON files.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from qmdd.checkpoint import load_checkpoint, stored_config
from qmdd.config import apply_overrides
from qmdd.cost import cost_summary
from qmdd.detector import load_detector
from qmdd.prune import run_lottery, run_slim
from qmdd.training import run

SOURCES = "/tmp/grid/runs/seed{seed}/fp32/best.pt"
# name -> (source seed, slim overrides)
ACCURACY = {
    **{f"r{r:02d}": (0, [f"slim.ratio={r / 100}"]) for r in (0, 10, 20, 30, 40)},
    "r30-layer": (0, ["slim.ratio=0.3", "slim.scope=layer"]),
    "r30-magnitude": (0, ["slim.ratio=0.3", "slim.importance=magnitude"]),
    "r30-k5": (0, ["slim.ratio=0.3", "slim.steps=5"]),
    "r30-oneshot-5ep": (0, ["slim.ratio=0.3", "train.epochs=5"]),
    "r30-kd": (0, ["slim.ratio=0.3", "slim.distill=true", "train.distill_alpha=0.25"]),
    **{f"r{r:02d}-seed{s}": (s, [f"slim.ratio={r / 100}"]) for r in (0, 30) for s in (1, 2)},
}


# Timed detectors (the variants and seeds share these sizes).
SPEED = ("r00", "r10", "r20", "r30", "r40", "r30-k5", "ticket-r30", "w2a2", "r30-w2a2", "lite0-r00", "lite0-r20", "lite0-r40")


def _base(source: str, args, extra: list[str]):
    """The source run's config, moved to the benchmark's scale and fine-tuning budget."""
    config = stored_config(load_checkpoint(source), source)
    common = [f"data.embedded_scale={args.scale}", f"train.epochs={args.epochs}", "train.init=", "train.teacher=", "train.device=cpu"]
    return apply_overrides(config, [*common, *extra])


def _slim(name: str, source: str, extra: list[str], args) -> dict:
    out = Path(args.work) / "slim" / name
    if (out / "slim.json").is_file():
        return json.loads((out / "slim.json").read_text())
    config = _base(source, args, [*extra, f"train.out={out}"])
    return run_slim(config, source)


def phase_accuracy(args) -> None:
    for name, (seed, extra) in ACCURACY.items():
        _slim(name, SOURCES.format(seed=seed), extra, args)


def phase_lite0(args) -> None:
    work = Path(args.work)
    source = work / "lite0-fp32" / "best.pt"
    if not (work / "lite0-fp32" / "metrics.json").is_file():
        config = apply_overrides(stored_config(load_checkpoint(SOURCES.format(seed=0)), "source"), [
            "model.arch=efficientnet_lite0", "model.input_filter=highpass", f"data.embedded_scale={args.scale}",
            f"train.epochs={args.lite_epochs}", "train.init=", "train.teacher=", "train.device=cpu", f"train.out={source.parent}",
        ])
        run(config)
    for ratio in (0, 20, 40):
        _slim(f"lite0-r{ratio:02d}", str(source), [f"slim.ratio={ratio / 100}"], args)


def phase_compare(args) -> None:
    work, source = Path(args.work), SOURCES.format(seed=0)
    ticket = work / "ticket-r30"
    if not (ticket / "summary.json").is_file():
        run_lottery(_base(source, args, ["prune.levels=1", "prune.fraction=0.3", f"train.init={source}", f"train.out={ticket}"]))
    qat = ["quant.bits=2", f"train.epochs={args.qat_epochs}"]
    for name, init, base in (("w2a2", source, source), ("r30-w2a2", str(work / "slim" / "r30" / "pruned.pt"), str(work / "slim" / "r30" / "pruned.pt"))):
        out = work / name
        if not (out / "metrics.json").is_file():
            config = stored_config(load_checkpoint(base), base)
            run(apply_overrides(config, [f"data.embedded_scale={args.scale}", *qat, f"train.init={init}", "train.teacher=", "train.device=cpu", f"train.out={out}"]))


def _file_bytes(payload) -> int:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.pt")
        torch.save(payload, path)
        return os.path.getsize(path)


def _packed_bytes(loaded) -> int:
    from qmdd.deploy import save_packed

    with tempfile.TemporaryDirectory() as folder:
        return save_packed(Path(folder) / "model.qmdd", loaded.model, loaded.config, loaded.threshold).file_bytes


def paired_latency(model, parent, batch: torch.Tensor, rounds: int) -> tuple[float, float]:
    """(best seconds of ``model``, median over rounds of parent time / model time).

    The machine is shared and its load changes by the second: each round times both, in
    alternating order, and the speedup is the median of the rounds' own ratios, which a
    burst of load during one round cannot move much.
    """
    ratios, best = [], float("inf")
    with torch.inference_mode():
        model(batch), parent(batch)  # warm-up
        for index in range(rounds):
            pair = {}
            for name, engine in ((("model", model), ("parent", parent)) if index % 2 == 0 else (("parent", parent), ("model", model))):
                start = time.perf_counter()
                engine(batch)
                pair[name] = time.perf_counter() - start
            ratios.append(pair["parent"] / pair["model"])
            best = min(best, pair["model"])
    return best, statistics.median(ratios)


def _latency_row(model, parent, size: int, rounds: int, prefix: str) -> dict:
    row = {}
    for batch in (1, 32):
        seconds, speedup = paired_latency(model, parent, torch.randn(batch, 3, size, size), rounds * (4 if batch == 1 else 1))
        row[f"{prefix}ms_b{batch}"], row[f"{prefix}speedup_b{batch}"] = 1e3 * seconds, speedup
    return row


def _int8_latency(loaded, reference, size: int, rounds: int) -> dict:
    """int8 CPU path of the detector and of its parent, timed in alternation."""
    from qmdd.deploy import calibration_images, to_int8

    calibration = calibration_images(loaded.config.data)
    try:
        engines = {"model": to_int8(loaded.model, calibration), "parent": to_int8(reference.model, calibration)}
    except Exception as error:  # the int8 path may not cover a layer type: say which
        return {"int8_error": f"{type(error).__name__}: {error}"[:300]}
    return _latency_row(engines["model"], engines["parent"], size, rounds, "int8_")


def _measure(checkpoint: Path, parent: Path, rounds: int) -> dict:
    """Size and cost of a detector, and its latency against its parent's in one run."""
    loaded, reference = load_detector(checkpoint), load_detector(parent)
    size = loaded.config.data.crop_size
    cost = cost_summary(loaded.model, size)
    row = {"params": cost["params"], "macs": cost["macs"], "ops": cost["ops"], "state_dict_bytes": _file_bytes(loaded.model.state_dict()), "packed_bytes": _packed_bytes(loaded)}
    row.update(_latency_row(loaded.model, reference.model, size, rounds, ""))
    from qmdd.cost import nonzero_parameter_count

    row["nonzero_params"] = nonzero_parameter_count(loaded.model)
    return {**row, **_int8_latency(loaded, reference, size, rounds)}


def _detectors(work: Path) -> dict[str, tuple[Path, Path]]:
    """name -> (checkpoint, unpruned parent to time it against)."""
    found = {}
    for folder in sorted((work / "slim").glob("*/pruned.pt")):
        source = json.loads((folder.parent / "slim.json").read_text())["source"]
        found[folder.parent.name] = (folder, Path(source))
    for name in ("w2a2", "r30-w2a2"):
        if (work / name / "best.pt").is_file():
            found[name] = (work / name / "best.pt", Path(SOURCES.format(seed=0)))
    ticket = work / "ticket-r30" / "imp" / "level_01" / "best.pt"
    if ticket.is_file():
        found["ticket-r30"] = (ticket, Path(SOURCES.format(seed=0)))
    return found


def phase_speed(args) -> None:
    torch.set_num_threads(1)
    path = Path(args.work) / "speed.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for name, (checkpoint, parent) in _detectors(Path(args.work)).items():
        if name not in results and name in SPEED:
            results[name] = _measure(checkpoint, parent, args.rounds)
            path.write_text(json.dumps(results, indent=2))
            print(name, results[name], flush=True)


def _metrics(work: Path, name: str) -> dict | None:
    """Test metrics of a finished detector: the last step of a slim run, or a run folder."""
    for path in (work / "slim" / name / "slim.json", work / name / "metrics.json", work / name / "imp" / "level_01" / "metrics.json"):
        if path.is_file():
            data = json.loads(path.read_text())
            if "rows" in data:
                row = data["rows"][-1]
                return {"removed": row["removed"], "seen_ap": row["seen_ap"], "unseen_ap": row["mean_unseen_ap"], "seen_acc": row["seen_acc"], "unseen_acc": row["mean_unseen_acc"]}
            return {"seen_ap": data["seen"]["ap"], "unseen_ap": data["mean_unseen"]["ap"], "seen_acc": data["seen"]["acc"], "unseen_acc": data["mean_unseen"]["acc"]}
    return None


def _accuracy_table(work: Path, names: list[str]) -> None:
    print("| detector | removed | seen AP | unseen AP | seen acc | unseen acc |\n|---|---|---|---|---|---|")
    for name in names:
        m = _metrics(work, name)
        if m is not None:
            removed = f"{100 * m['removed']:.1f} %" if "removed" in m else "-"
            print(f"| {name} | {removed} | {100 * m['seen_ap']:.1f} | {100 * m['unseen_ap']:.1f} | {100 * m['seen_acc']:.1f} | {100 * m['unseen_acc']:.1f} |")


def _seed_table(work: Path) -> None:
    import statistics

    print("| removed | seeds | seen AP | unseen AP |\n|---|---|---|---|")
    for ratio in (0, 30):
        found = [m for m in (_metrics(work, f"r{ratio:02d}" + suffix) for suffix in ("", "-seed1", "-seed2")) if m]
        if len(found) > 1:
            cells = [f"{100 * statistics.mean(v):.1f} +- {100 * statistics.stdev(v):.1f}" for v in ([m["seen_ap"] for m in found], [m["unseen_ap"] for m in found])]
            print(f"| {ratio} % | {len(found)} | {cells[0]} | {cells[1]} |")


def _speed_table(work: Path) -> None:
    speed = json.loads((work / "speed.json").read_text()) if (work / "speed.json").is_file() else {}
    print("| detector | params | non-zero | MMACs | MOPs | state dict KB | .qmdd KB | FP32 b1 ms (x) | FP32 b32 ms (x) | int8 b1 ms (x) | int8 b32 ms (x) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in speed.items():
        int8 = [f"{r[f'int8_ms_b{b}']:.2f} ({r[f'int8_speedup_b{b}']:.2f})" if f"int8_ms_b{b}" in r else "-" for b in (1, 32)]
        print(f"| {name} | {r['params']:,} | {r['nonzero_params']:,} | {r['macs'] / 1e6:.1f} | {r['ops'] / 1e6:.1f} | {r['state_dict_bytes'] / 1e3:.0f} | {r['packed_bytes'] / 1e3:.0f} "
              f"| {r['ms_b1']:.2f} ({r['speedup_b1']:.2f}) | {r['ms_b32']:.1f} ({r['speedup_b32']:.2f}) | {int8[0]} | {int8[1]} |")


def print_tables(work: Path) -> None:
    print("## Removed share (seed 0, global Taylor, one-shot)\n")
    _accuracy_table(work, [f"r{r:02d}" for r in (0, 10, 20, 30, 40)])
    print("\n## Variants at 30 %\n")
    _accuracy_table(work, ["r30", "r30-layer", "r30-magnitude", "r30-oneshot-5ep", "r30-k5", "r30-kd"])
    print("\n## Seeds\n")
    _seed_table(work)
    print("\n## efficientnet_lite0\n")
    _accuracy_table(work, ["lite0-fp32", "lite0-r00", "lite0-r20", "lite0-r40"])
    print("\n## Side by side\n")
    _accuracy_table(work, ["r00", "r30", "ticket-r30", "w2a2", "r30-w2a2"])
    print("\n## Size and speed\n")
    _speed_table(work)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", required=True, choices=("accuracy", "lite0", "compare", "speed", "tables"))
    parser.add_argument("--work", required=True, help="folder of all runs and results (reused: finished runs are skipped)")
    parser.add_argument("--scale", type=float, default=0.25, help="embedded benchmark scale of fine-tuning and test")
    parser.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs per pruning step")
    parser.add_argument("--lite-epochs", type=int, default=6, help="epochs of the efficientnet_lite0 FP32 run")
    parser.add_argument("--qat-epochs", type=int, default=2, help="W2A2 epochs in the comparison")
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds at batch 32 (4x at batch 1)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.phase == "tables":
        print_tables(Path(args.work))
        return 0
    {"accuracy": phase_accuracy, "lite0": phase_lite0, "compare": phase_compare, "speed": phase_speed}[args.phase](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
