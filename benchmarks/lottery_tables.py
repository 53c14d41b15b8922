"""Markdown tables of lottery-ticket experiments, in the shape of arXiv 2507.15636's.

Reads finished ``python -m qmdd.lth`` folders (their ``summary.json`` / ``transfer.json`` and
level folders) and prints, for docs/lottery.md:

* accuracy and AP against sparsity (0, 20, 36, ... 83 %), IMP vs one-shot, per model;
* ticket transfer: dense, IMP / one-shot tickets and random masks at the transferred levels;
* storage of chosen checkpoints: parameters, non-zeros, counted storage (dense and sparse
  convention, ``qmdd.cost``) and the size of the ``.qmdd`` file written by
  ``qmdd.deploy.save_packed`` (the same as ``python -m qmdd.export``).

Examples::

    python benchmarks/lottery_tables.py curves runs/lth/mesonet-fp32 runs/lth/cnn5-fp32
    python benchmarks/lottery_tables.py transfer runs/lth/mesonet-fp32-to-transposed_conv
    python benchmarks/lottery_tables.py storage runs/lth/cnn5-w2/imp/level_00/best.pt \\
        runs/lth/cnn5-w2/imp/level_07/best.pt runs/lth/cnn5-fp32/imp/level_00/best.pt
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _rows(folder: Path) -> list[dict]:
    from qmdd.prune import summarise

    return summarise(folder)["rows"]  # rewritten from the level folders, so always current


def curves(folders: list[Path], groups: list[str]) -> str:
    experiments = {}
    for folder in folders:
        rows = _rows(folder)
        config = json.loads((folder / "summary.json").read_text())["config"]
        name = f"{config['model']['arch']} {'fp32' if config['quant']['bits'] == 32 else 'w%da%d' % (config['quant']['bits'], config['quant']['bits'])}"
        experiments[name] = {(r["method"], r["level"]): r for r in rows}
    levels = sorted({level for rows in experiments.values() for _, level in rows})
    out = []
    for group in groups:
        for metric, label in (("acc", "Acc"), ("ap", "AP")):
            header = "| sparsity | " + " | ".join(f"{name} IMP | {name} one-shot" for name in experiments) + " |"
            out.append(f"{group} {label} (%):\n")
            out.append(header)
            out.append("|---|" + "---|" * (2 * len(experiments)))
            for level in levels:
                cells, sparsity = [], None
                for rows in experiments.values():
                    for method in ("imp", "one_shot"):
                        row = rows.get((method, level))
                        if sparsity is None and row is not None:
                            sparsity = row["sparsity"]  # the first model's (they differ by < 0.1 %)
                        cells.append("-" if row is None or group not in row else _pct(row[group][metric]))
                out.append(f"| {_pct(sparsity)} | " + " | ".join(cells) + " |")
            out.append("")
    return "\n".join(out)


def transfer(folders: list[Path]) -> str:
    out = ["| model | target | arm | source level | sparsity | seen Acc | seen AP | unseen Acc | unseen AP |", "|---|---|---|---|---|---|---|---|---|"]
    for folder in folders:
        summary = json.loads((folder / "transfer.json").read_text())
        config = json.loads(json.dumps(summary["target_data"]))
        arch = json.loads((Path(summary["source"]) / "summary.json").read_text())["config"]["model"]["arch"]
        target = config.get("seen_family") or Path(config["root"]).name
        for row in summary["rows"]:
            arm = row["arm"] if row["arm"] == "dense" else f"{row['arm']} ({row['method'].replace('_', '-')})"
            seen, unseen = row.get("seen", {}), row.get("mean_unseen", {})
            out.append(
                f"| {arch} | {target} | {arm} | {row['level']} | {_pct(row['sparsity'])} | {_pct(seen.get('acc'))} | "
                f"{_pct(seen.get('ap'))} | {_pct(unseen.get('acc'))} | {_pct(unseen.get('ap'))} |"
            )
    return "\n".join(out)


def storage(checkpoints: list[Path]) -> str:
    from qmdd.cost import sparse_cost_summary
    from qmdd.deploy import save_packed
    from qmdd.detector import load_detector

    out = [
        "| checkpoint | model | sparsity (prunable) | params | non-zero | counted, dense convention | counted, sparse | .qmdd file | FP32 / file |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for path in checkpoints:
        loaded = load_detector(path)
        model, config = loaded.model, loaded.config
        cost = sparse_cost_summary(model)
        sparsity_file = path.parent / "sparsity.json"
        sparsity = json.loads(sparsity_file.read_text())["sparsity"] if sparsity_file.is_file() else 0.0
        with tempfile.TemporaryDirectory() as folder:
            stats = save_packed(Path(folder) / "model.qmdd", model, config)
        name = f"{path.parent.parent.parent.name}/{path.parent.parent.name}/{path.parent.name}"
        out.append(
            f"| {name} | {config.model.arch} {config.quant.tag} | {_pct(sparsity)} % | {cost['params']:,} | {cost['nonzero_params']:,} | "
            f"{cost['storage_bits'] / 8e3:.1f} kB | {cost['sparse_storage_bits'] / 8e3:.1f} kB | {stats.file_bytes / 1e3:.1f} kB | "
            f"{cost['fp32_storage_bits'] / 8 / stats.file_bytes:.1f}x |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("Examples::", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", choices=("curves", "transfer", "storage"))
    parser.add_argument("paths", nargs="+", type=Path, help="experiment folders (curves, transfer) or checkpoints (storage)")
    parser.add_argument("--groups", default="seen,mean_unseen", help="metric groups for curves (seen, mean_unseen, mean_all)")
    args = parser.parse_args(argv)
    if args.table == "curves":
        print(curves(args.paths, args.groups.split(",")))
    elif args.table == "transfer":
        print(transfer(args.paths))
    else:
        print(storage(args.paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
