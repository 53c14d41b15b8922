"""Train the quick-start detector at FP32, W3A3 and W2A2 and tabulate the results.

    python benchmarks/train_bits.py --out runs/bench [--bits 32 3 2] [-- extra train flags]

Each run is ``python -m qmdd.train --bits B --out OUT/wBaB`` in a subprocess, timed from
start to exit (the wall time a user waits, benchmark build and evaluation included). The
colour-histogram baseline of the embedded benchmark is computed once on the same data.
Prints a Markdown table (seen-family AP/Acc, mean unseen AP/Acc, wall time).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench", help="parent folder of the runs")
    parser.add_argument("--bits", type=int, nargs="+", default=[32, 3, 2])
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="flags passed to qmdd.train after --")
    args = parser.parse_args(argv)
    extra = [a for a in args.extra if a != "--"]

    rows = []
    for bits in args.bits:
        tag = "fp32" if bits == 32 else f"w{bits}a{bits}"
        out = Path(args.out) / tag
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "qmdd.train", "--bits", str(bits), "--out", str(out), *extra], check=True)
        wall = time.perf_counter() - started
        metrics = json.loads((out / "metrics.json").read_text())
        rows.append((tag, metrics, wall))

    from qmdd.data.embedded import histogram_baseline_ap

    baseline = histogram_baseline_ap(Path(rows[0][1]["data_root"]))
    seen = rows[0][1]["seen_family"]
    unseen = [v for k, v in baseline.items() if k != seen]

    print("| model | seen AP | seen Acc | mean unseen AP | mean unseen Acc | wall time |")
    print("|---|---|---|---|---|---|")
    for tag, m, wall in rows:
        print(
            f"| ResNet-18 {tag} | {100 * m['seen']['ap']:.1f} | {100 * m['seen']['acc']:.1f} | "
            f"{100 * m['mean_unseen']['ap']:.1f} | {100 * m['mean_unseen']['acc']:.1f} | {wall / 60:.1f} min |"
        )
    print(
        f"| colour-histogram baseline | {100 * baseline[seen]:.1f} | - | "
        f"{100 * sum(unseen) / len(unseen):.1f} | - | - |"
    )
    print("\nper family AP (%):")
    families = list(rows[0][1]["test"])
    print("| model | " + " | ".join(families) + " |")
    print("|---|" + "---|" * len(families))
    for tag, m, _ in rows:
        print(f"| {tag} | " + " | ".join(f"{100 * m['test'][f]['ap']:.1f}" for f in families) + " |")
    print("| histogram | " + " | ".join(f"{100 * baseline[f]:.1f}" for f in families) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
