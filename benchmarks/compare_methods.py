"""Compare FP32, LSQ, N2UQ and SLR, with and without CQB and distillation, on one benchmark.

    python benchmarks/compare_methods.py --out runs/compare                 # the full grid
    python benchmarks/compare_methods.py --out runs/compare --write-doc     # + docs/results.md
    python benchmarks/compare_methods.py --out runs/tiny --seeds 0 --bits 2 \\
        --quantizers lsq slr -- --epochs 1 --set data.embedded_scale=0.1   # a smoke test
    python benchmarks/compare_methods.py --out runs/compare --report-only   # table of what finished

The grid, per seed (identical seed and budget for every run; flags after ``--`` go to
every run, e.g. ``--epochs``, ``--arch``, ``--data-root``):

- ``fp32``: ``python -m qmdd.train --bits 32`` (plus ``--fp32-flags``, e.g. a longer
  ``--epochs``); it is also the teacher and the init;
- for each quantizer in {lsq, n2uq, slr}, bits in {3, 2}, block in {plain, cqb} and
  distillation off/on: ``--bits B --quantizer Q --block K --init fp32/best.pt``
  [``--teacher fp32/best.pt``]. Every low-bit run starts from the FP32 weights (the usual
  recipe; ``--no-init`` trains from scratch instead), so "distillation on/off" isolates
  the teacher's loss.

Each run is a subprocess in ``OUT/seed<S>/<name>``; a finished run (``metrics.json``) is
skipped and an interrupted one resumed, so the grid can be stopped and restarted.

The table gives, per configuration, mean and spread (sample standard deviation over
seeds) of the seen-family AP/Acc and of the mean over the unseen families, the best
validation accuracy, and the unseen-AP gap to FP32. The best configuration at each bit
width is **chosen on validation accuracy only**; its test numbers are then reported.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "results.md"
BEGIN, END = "<!-- compare_methods:begin -->", "<!-- compare_methods:end -->"


@dataclass(frozen=True)
class Method:
    """One cell of the grid; ``bits == 32`` is the FP32 baseline."""

    bits: int
    quantizer: str = "lsq"
    block: str = "plain"
    distill: bool = False

    @property
    def name(self) -> str:
        if self.bits == 32:
            return "fp32"
        return f"{self.quantizer}-w{self.bits}a{self.bits}-{self.block}-{'kd' if self.distill else 'nokd'}"

    def flags(self, fp32_checkpoint: Path, init: bool) -> list[str]:
        if self.bits == 32:
            return ["--bits", "32"]
        flags = ["--bits", str(self.bits), "--quantizer", self.quantizer, "--block", self.block]
        if init:
            flags += ["--init", str(fp32_checkpoint)]
        if self.distill:
            flags += ["--teacher", str(fp32_checkpoint)]
        return flags


def grid(bits: list[int], quantizers: list[str], blocks: list[str], distill: list[bool]) -> list[Method]:
    methods = [Method(32)]
    for b, q, k, d in itertools.product(bits, quantizers, blocks, distill):
        methods.append(Method(b, q, k, d))
    return methods


def run_one(method: Method, out: Path, seed: int, fp32_checkpoint: Path, init: bool, extra: list[str], fp32_extra: list[str] = ()) -> dict:
    """Train (or resume, or skip) one run; returns its metrics with the wall time added."""
    metrics_file = out / "metrics.json"
    if metrics_file.is_file():
        return json.loads(metrics_file.read_text())
    command = [sys.executable, "-m", "qmdd.train", *method.flags(fp32_checkpoint, init), "--seed", str(seed), "--out", str(out), *extra]
    if method.bits == 32:
        command += fp32_extra  # later flags win in argparse
    if (out / "last.pt").is_file():
        command.append("--resume")
    print(f"[compare] {' '.join(command)}", flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO)
    metrics = json.loads(metrics_file.read_text())
    metrics["wall_time_s"] = round(time.perf_counter() - started, 1)
    metrics_file.write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def _stat(values: list[float]) -> str:
    mean = 100 * statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def _seen(run: dict, key: str = "ap") -> float:
    return run["seen"][key]


def _unseen(run: dict, key: str = "ap") -> float:
    return run["mean_unseen"][key]


def _val(run: dict, key: str = "acc") -> float:
    return run["val_best"][key]


def _within_noise(a: list[float], b: list[float]) -> str:
    """'within noise' when the gap of the means is inside 2 standard errors of the
    difference (about a 95 % band), else 'beyond noise'; 'one seed' when either has one."""
    if len(a) < 2 or len(b) < 2:
        return "one seed: no spread"
    gap = abs(statistics.fmean(a) - statistics.fmean(b))
    band = 2 * (statistics.variance(a) / len(a) + statistics.variance(b) / len(b)) ** 0.5
    return "within noise" if gap <= band else "beyond noise"


def _gap(values: list[float], reference: list[float] | None) -> str:
    if not reference:
        return "-"
    return f"{100 * (statistics.fmean(values) - statistics.fmean(reference)):+.1f}"


def summarise(results: dict[Method, list[dict]]) -> str:
    """The Markdown tables (headline, per family) and the val-selected verdict."""
    fp32 = results.get(Method(32), [])
    fp32_seen = [_seen(m) for m in fp32]
    fp32_unseen = [_unseen(m) for m in fp32]
    lines = [
        "| method | bits | block | distill | seeds | seen AP | seen Acc | seen Acc@val-thr | unseen AP | unseen Acc | val Acc | Δ seen AP | Δ unseen AP | time/run |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    done = {method: runs for method, runs in results.items() if runs}
    for method, runs in done.items():
        is_fp32 = method.bits == 32
        wall = statistics.fmean(m.get("wall_time_s", m.get("train_time_s", 0.0)) for m in runs)
        lines.append(
            f"| {'FP32' if is_fp32 else method.quantizer} | "
            f"{'32' if is_fp32 else 'W%dA%d' % (method.bits, method.bits)} | {method.block} | "
            f"{'yes' if method.distill else 'no'} | {len(runs)} | "
            f"{_stat([_seen(m) for m in runs])} | {_stat([_seen(m, 'acc') for m in runs])} | "
            f"{_stat([_seen(m, 'cal_acc') for m in runs]) if all(m['seen'].get('cal_acc') is not None for m in runs) else 'n/a'} | "
            f"{_stat([_unseen(m) for m in runs])} | {_stat([_unseen(m, 'acc') for m in runs])} | "
            f"{_stat([_val(m) for m in runs])} | "
            f"{'-' if is_fp32 else _gap([_seen(m) for m in runs], fp32_seen)} | "
            f"{'-' if is_fp32 else _gap([_unseen(m) for m in runs], fp32_unseen)} | {wall / 60:.1f} min |"
        )
    families = sorted({name for runs in done.values() for m in runs for name in m["test"]})
    seen_family = next((m.get("seen_family") for runs in done.values() for m in runs), None)
    family_lines = [
        "| method | " + " | ".join(f"{f} (seen)" if f == seen_family else f for f in families) + " |",
        "|---|" + "---|" * len(families),
    ]
    for method, runs in done.items():
        cells = [_stat([m["test"][f]["ap"] for m in runs if f in m["test"]]) for f in families]
        family_lines.append(f"| {method.name} | " + " | ".join(cells) + " |")
    verdict = []
    for bits in sorted({m.bits for m in done if m.bits < 32}, reverse=True):
        candidates = {m: r for m, r in done.items() if m.bits == bits}
        # Chosen on validation accuracy (the seen family's val/), never on the test families.
        best = max(candidates, key=lambda m: statistics.fmean(_val(r) for r in candidates[m]))
        best_runs = candidates[best]
        line = (
            f"- W{bits}A{bits}: best on val accuracy is **{best.name}** "
            f"(val Acc {_stat([_val(r) for r in best_runs])}): seen AP {_stat([_seen(r) for r in best_runs])}, "
            f"mean unseen AP {_stat([_unseen(r) for r in best_runs])}"
        )
        if fp32:
            line += (
                f"; against FP32 {_gap([_seen(r) for r in best_runs], fp32_seen)} seen AP "
                f"({_within_noise([_seen(r) for r in best_runs], fp32_seen)}) and "
                f"{_gap([_unseen(r) for r in best_runs], fp32_unseen)} unseen AP "
                f"({_within_noise([_unseen(r) for r in best_runs], fp32_unseen)})"
            )
        plain_lsq = candidates.get(Method(bits, "lsq", "plain", False))
        if plain_lsq and best != Method(bits, "lsq", "plain", False):
            line += (
                f"; against plain LSQ {_gap([_unseen(r) for r in best_runs], [_unseen(r) for r in plain_lsq])} unseen AP "
                f"({_within_noise([_unseen(r) for r in best_runs], [_unseen(r) for r in plain_lsq])})"
            )
        verdict.append(line + ".")
    note = (
        "Mean ± sample standard deviation over seeds, in %. Δ: difference of the means to FP32. "
        "Acc is at 0.5; Acc@val-thr at the threshold each run fitted on its validation set. "
        "\"Within noise\": the gap is inside two standard errors of the difference."
    )
    return (
        "\n".join(lines) + "\n\n" + note + "\n\nAP per test family:\n\n" + "\n".join(family_lines)
        + "\n\n" + "\n".join(verdict) + "\n"
    )


def write_doc(table: str, command: str) -> None:
    """Replace the generated comparison block in docs/results.md (atomically)."""
    from qmdd.utils import atomic_write_text

    text = DOC.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{DOC} has no {BEGIN} ... {END} block to fill")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    body = f"{BEGIN}\nCommand: `{command}`\n\n{table}{END}"
    atomic_write_text(DOC, head + body + tail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/compare", help="parent folder of the runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--bits", type=int, nargs="+", default=[3, 2], choices=[2, 3, 4, 8])
    parser.add_argument("--quantizers", nargs="+", default=["lsq", "n2uq", "slr"])
    parser.add_argument("--blocks", nargs="+", default=["plain", "cqb"], choices=["plain", "cqb"])
    parser.add_argument("--distill", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--no-init", action="store_true", help="train low-bit runs from scratch instead of from the FP32 weights")
    parser.add_argument("--fp32-flags", default="", help="extra qmdd.train flags for the FP32 run only, after the shared ones (e.g. '--epochs 30': the init and teacher trained longer than the low-bit fine-tuning)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    parser.add_argument("--report-only", action="store_true", help="train nothing: tabulate the finished runs of the grid and leave the others out (a partial grid)")
    parser.add_argument("--write-doc", action="store_true", help=f"write the table into {DOC.relative_to(REPO)}")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="flags passed to every qmdd.train run, after --")
    args = parser.parse_args(argv)
    extra = [a for a in args.extra if a != "--"]
    methods = grid(args.bits, args.quantizers, args.blocks, [d == "on" for d in args.distill])
    out = Path(args.out).resolve()
    print(f"[compare] {len(methods)} runs x {len(args.seeds)} seeds into {out}", flush=True)
    if args.dry_run:
        for method in methods:
            print(method.name, " ".join(method.flags(out / "seed<S>/fp32/best.pt", not args.no_init)))
        return 0

    results: dict[Method, list[dict]] = {m: [] for m in methods}
    for seed in args.seeds:
        fp32_checkpoint = out / f"seed{seed}" / "fp32" / "best.pt"
        for method in methods:  # fp32 first: it is the teacher and the init of the others
            finished = out / f"seed{seed}" / method.name / "metrics.json"
            if args.report_only:
                if finished.is_file():
                    results[method].append(json.loads(finished.read_text()))
                continue
            results[method].append(run_one(method, out / f"seed{seed}" / method.name, seed, fp32_checkpoint, not args.no_init, extra, args.fp32_flags.split()))
    table = summarise(results)
    print(table)
    if args.write_doc:
        command = "python benchmarks/compare_methods.py " + " ".join(argv if argv is not None else sys.argv[1:])
        write_doc(table, command.replace(" --write-doc", ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
