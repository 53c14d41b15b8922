"""Tables and files from a :class:`SuiteReport`: terminal, CSV, JSON, Markdown, TensorBoard.

Terminal and Markdown tables are in percent with one decimal, as papers print them; CSV
and JSON keep fractions in [0, 1] at full precision, for recomputation.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path
from typing import Any

from qmdd.evaluation._runner import CheckpointResult, SetResult, SuiteReport
from qmdd.utils import atomic_write_text

__all__ = ["format_table", "markdown_table", "report_dict", "write_reports", "log_tensorboard", "PREDICTION_COLUMNS"]

PREDICTION_COLUMNS = ("set", "path", "label", "score")
_METRIC_FIELDS = ("ap", "acc", "real_acc", "fake_acc", "cal_acc")
_CAL_HEADER = "Acc@val-thr"


def _pct(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _set_row(s: SetResult, oracle: bool) -> list[str]:
    m = s.metrics
    values = [_pct(getattr(m, f)) if m else "n/a" for f in _METRIC_FIELDS]
    if oracle:
        values.append(_pct(s.oracle_acc))
    counts = [str(m.n_real) if m else "0", str(m.n_fake) if m else "0", str(len(s.skipped))]
    status = s.status if not s.reason else f"{s.status}: {s.reason}"
    return [s.name, *values, *counts, status]


def _mean_row(result: CheckpointResult, oracle: bool) -> list[str]:
    mean = result.mean
    values = [_pct(getattr(mean, f)) if mean else "n/a" for f in _METRIC_FIELDS]
    if oracle:
        values.append(_pct(result.mean_oracle_acc))
    counts = [str(mean.n_real) if mean else "0", str(mean.n_fake) if mean else "0", str(sum(len(s.skipped) for s in result.sets))]
    return [f"mean ({len(result.evaluated)}/{len(result.sets)} sets)", *values, *counts, ""]


def _single_rows(report: SuiteReport, result: CheckpointResult) -> tuple[list[str], list[list[str]]]:
    oracle = report.options.oracle
    header = ["set", "AP", "Acc", "real Acc", "fake Acc", _CAL_HEADER, *(["Acc@best (oracle)"] if oracle else []), "n real", "n fake", "skipped", "status"]
    rows = [_set_row(s, oracle) for s in result.sets] + [_mean_row(result, oracle)]
    return header, rows


def _comparison_rows(report: SuiteReport) -> tuple[list[str], list[list[str]]]:
    """Rows are sets; each checkpoint contributes an AP and an Acc column (and the oracle)."""
    oracle = report.options.oracle
    header = ["set"]
    for result in report.checkpoints:
        header += [f"{result.label} AP", f"{result.label} Acc", f"{result.label} {_CAL_HEADER}", *([f"{result.label} Acc@best (oracle)"] if oracle else [])]
    header.append("status")
    rows = []
    for position, first in enumerate(report.checkpoints[0].sets):
        row = [first.name]
        for result in report.checkpoints:
            s = result.sets[position]
            row += [_pct(getattr(s.metrics, f)) if s.metrics else "n/a" for f in ("ap", "acc", "cal_acc")]
            if oracle:
                row.append(_pct(s.oracle_acc))
        skipped = len(first.skipped)
        row.append(first.status + (f": {first.reason}" if first.reason else "") + (f" ({skipped} unreadable skipped)" if skipped else ""))
        rows.append(row)
    mean = [f"mean ({len(report.checkpoints[0].evaluated)}/{len(report.checkpoints[0].sets)} sets)"]
    for result in report.checkpoints:
        m = result.mean
        mean += [_pct(getattr(m, f)) if m else "n/a" for f in ("ap", "acc", "cal_acc")]
        if oracle:
            mean.append(_pct(result.mean_oracle_acc))
    rows.append([*mean, ""])
    return header, rows


def _rows(report: SuiteReport) -> tuple[list[str], list[list[str]]]:
    if len(report.checkpoints) == 1:
        return _single_rows(report, report.checkpoints[0])
    return _comparison_rows(report)


def _title(report: SuiteReport) -> str:
    degradations = []
    if report.options.blur_sigma > 0:
        degradations.append(f"blur sigma {report.options.blur_sigma:g}")
    if report.options.jpeg_quality is not None:
        degradations.append(f"JPEG quality {report.options.jpeg_quality}")
    models = ", ".join(f"{r.label} ({r.arch} {r.quant})" for r in report.checkpoints)
    extra = f"; test-time {' then '.join(degradations)}" if degradations else ""
    return f"{report.name}: {models} on {report.resolved.data_dir} ({report.suite.protocol.describe()}{extra})"


def _notes(report: SuiteReport) -> list[str]:
    thresholds = ", ".join(f"{r.label} {r.threshold:.3f}" for r in report.checkpoints)
    notes = [f"Acc: at 0.5. {_CAL_HEADER}: at the threshold fitted on each checkpoint's validation set ({thresholds})."]
    if report.options.oracle:
        notes.append("Acc@best (oracle): accuracy at the best threshold fitted on the test set itself; not a deployable accuracy.")
    return notes


def format_table(report: SuiteReport) -> str:
    """Plain-text table for the terminal (percent, one decimal)."""
    header, rows = _rows(report)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = [_title(report)]
    for row in [header, *rows]:
        cells = [str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row[:-1], widths))]
        lines.append("  ".join(cells) + ("  " + row[-1] if row[-1] else ""))
    lines += _notes(report)
    return "\n".join(line.rstrip() for line in lines)


def markdown_table(report: SuiteReport) -> str:
    header, rows = _rows(report)

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |"

    out = [f"**{_title(report)}**", "", line(header), line(["---"] + ["---:"] * (len(header) - 2) + ["---"])]
    out += [line(r) for r in rows]
    out += ["", *_notes(report)]
    return "\n".join(out) + "\n"


def _set_dict(s: SetResult) -> dict[str, Any]:
    entry: dict[str, Any] = {"status": s.status, "reason": s.reason, "found_real": s.found_real, "found_fake": s.found_fake}
    entry.update({f: _finite(getattr(s.metrics, f)) if s.metrics else None for f in _METRIC_FIELDS})
    entry["n_real"] = s.metrics.n_real if s.metrics else 0
    entry["n_fake"] = s.metrics.n_fake if s.metrics else 0
    entry["oracle_acc"], entry["oracle_threshold"] = _finite(s.oracle_acc), _finite(s.oracle_threshold)
    entry["skipped"] = len(s.skipped)
    entry["skipped_files"] = [{"path": f.path, "error": f.error} for f in s.skipped]
    return entry


def report_dict(report: SuiteReport) -> dict[str, Any]:
    protocol = report.suite.protocol
    return {
        "report": report.name,
        "suite": report.suite.name,
        "description": report.suite.description,
        "data_root": str(report.resolved.root),
        "data_dir": str(report.resolved.data_dir),
        "protocol": {
            "crop": protocol.crop,
            "resize": protocol.resize,
            "from_checkpoint": protocol.from_checkpoint,
            "max_per_class": protocol.max_per_class,
            "seed": protocol.seed,
            "text": protocol.describe(),
        },
        "blur_sigma": report.options.blur_sigma,
        "jpeg_quality": report.options.jpeg_quality,
        "oracle": report.options.oracle,
        "crop_shift": report.options.crop_shift,
        "images_loaded": report.images_loaded,
        "seconds": report.seconds,
        "images_per_second": _finite(report.images_per_second),
        "checkpoints": [
            {
                "label": r.label,
                "path": r.path,
                "arch": r.arch,
                "quant": r.quant,
                "threshold": r.threshold,
                "sets": {s.name: _set_dict(s) for s in r.sets},
                "mean": {**({k: _finite(v) for k, v in r.mean.as_dict().items()} if r.mean else {}), "oracle_acc": _finite(r.mean_oracle_acc), "over": [s.name for s in r.evaluated]},
            }
            for r in report.checkpoints
        ],
    }


def _csv_text(report: SuiteReport) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["checkpoint", "set", "status", *_METRIC_FIELDS, "oracle_acc", "n_real", "n_fake", "skipped", "reason"])
    for r in report.checkpoints:
        for s in r.sets:
            d = _set_dict(s)
            writer.writerow([r.label, s.name, s.status, *(d[f] for f in _METRIC_FIELDS), d["oracle_acc"], d["n_real"], d["n_fake"], d["skipped"], s.reason])
        m = r.mean
        writer.writerow([r.label, "mean", "ok" if m else "none", *((_finite(getattr(m, f)) if m else None) for f in _METRIC_FIELDS), _finite(r.mean_oracle_acc), m.n_real if m else 0, m.n_fake if m else 0, sum(len(s.skipped) for s in r.sets), f"unweighted mean over {len(r.evaluated)} of {len(r.sets)} sets"])
    return buffer.getvalue()


def _predictions_text(result: CheckpointResult) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(PREDICTION_COLUMNS)
    for s in result.sets:
        for path, label, score in zip(s.paths, s.labels.tolist(), s.scores.tolist()):
            writer.writerow([s.name, path, label, repr(float(score))])
    return buffer.getvalue()


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-") or "checkpoint"


def write_reports(report: SuiteReport, out_dir: str | Path, save_predictions: bool = False) -> dict[str, Path]:
    """``<name>.csv``, ``<name>.json``, ``<name>.md`` (and predictions) in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {
        "csv": out_dir / f"{report.name}.csv",
        "json": out_dir / f"{report.name}.json",
        "markdown": out_dir / f"{report.name}.md",
    }
    atomic_write_text(written["csv"], _csv_text(report))
    atomic_write_text(written["json"], json.dumps(report_dict(report), indent=2) + "\n")
    atomic_write_text(written["markdown"], markdown_table(report))
    if save_predictions:
        for r in report.checkpoints:
            suffix = "" if len(report.checkpoints) == 1 else f"_{_safe(r.label)}"
            path = out_dir / f"{report.name}_predictions{suffix}.csv"
            atomic_write_text(path, _predictions_text(r))
            written[f"predictions:{r.label}"] = path
    return written


def log_tensorboard(report: SuiteReport, out_dir: str | Path) -> Path:
    """Scalars ``<report>/<set>/{ap,acc,real_acc,fake_acc}`` and ``<report>/mean/...``,
    one TensorBoard run per checkpoint under ``out_dir/tensorboard/<label>``."""
    from torch.utils.tensorboard import SummaryWriter

    base = Path(out_dir) / "tensorboard"
    for r in report.checkpoints:
        writer = SummaryWriter(log_dir=str(base / _safe(r.label)))
        try:
            for s in r.evaluated:
                for f in _METRIC_FIELDS:
                    writer.add_scalar(f"{report.name}/{s.name}/{f}", getattr(s.metrics, f), 0)
                if s.oracle_acc is not None:
                    writer.add_scalar(f"{report.name}/{s.name}/oracle_acc", s.oracle_acc, 0)
            if r.mean is not None:
                for f in _METRIC_FIELDS:
                    writer.add_scalar(f"{report.name}/mean/{f}", getattr(r.mean, f), 0)
            writer.add_text(f"{report.name}/table", markdown_table(report), 0)
        finally:
            writer.close()
    return base
