"""Build the embedded benchmark, optionally with its sanity baselines.

    python -m qmdd.data.embedded                                  # into the cache; prints the root
    python -m qmdd.data.embedded --out /tmp/embedded              # into a folder
    python -m qmdd.data.embedded --out /tmp/embedded --baselines  # + histogram AP, probe AP and AUC
"""

from __future__ import annotations

import argparse
import json
import time

from qmdd.data.embedded._baselines import histogram_baseline_ap, spectral_probe
from qmdd.data.embedded._builder import SEEN_FAMILY, build_embedded_benchmark


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qmdd.data.embedded", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="dataset folder (default: the qmdd cache, ${QMDD_CACHE:-~/.cache/qmdd}/embedded/)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every crop, control and fake")
    parser.add_argument("--image-size", type=int, default=96, help="side of the stored PNGs, px")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the number of images per split")
    parser.add_argument("--force", action="store_true", help="rebuild even if a complete build exists")
    parser.add_argument("--baselines", action="store_true",
                        help="also fit the colour-histogram baseline (AP) and the spectral probe (AP and AUC)")
    parser.add_argument("--json", action="store_true", help="print the baseline numbers as JSON")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    root = build_embedded_benchmark(
        args.out, seed=args.seed, image_size=args.image_size, scale=args.scale, force=args.force
    )
    print(f"{root}  ({time.perf_counter() - start:.1f} s)")
    if args.baselines:
        probe = spectral_probe(root)
        results = {
            "histogram_ap": histogram_baseline_ap(root),
            "probe_ap": {family: values["ap"] for family, values in probe.items()},
            "probe_auc": {family: values["auc"] for family, values in probe.items()},
        }
        if args.json:
            print(json.dumps(results, indent=2))
        else:
            print(f"{'test family':18s} {'histogram AP':>12s} {'probe AP':>9s} {'probe AUC':>10s}")
            for family in results["histogram_ap"]:
                marker = " (seen)" if family == SEEN_FAMILY else ""
                print(f"{family:18s} {results['histogram_ap'][family]:12.3f} {results['probe_ap'][family]:9.3f} {results['probe_auc'][family]:10.3f}{marker}")
            unseen = [f for f in results["histogram_ap"] if f != SEEN_FAMILY]
            for name, table in results.items():
                mean = sum(table[f] for f in unseen) / max(1, len(unseen))
                print(f"mean over unseen families, {name}: {mean:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
