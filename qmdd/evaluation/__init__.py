"""Cross-generator evaluation suites: the per-generator tables of the papers.

A suite (:class:`Suite`) is data in a registry: its sets, where each set's reals and fakes
live, and its protocol (centre crop or resize, a per-class cap with a seeded shuffle,
shared or per-set real pools). :func:`evaluate` scores one or more checkpoints on it;
:func:`write_reports` writes CSV, JSON and Markdown. Entry point: ``python -m qmdd.eval``.
"""

from qmdd.evaluation._report import PREDICTION_COLUMNS, format_table, log_tensorboard, markdown_table, report_dict, write_reports
from qmdd.evaluation._resolve import ResolvedSet, ResolvedSuite, find_child, resolve_suite
from qmdd.evaluation._runner import (
    CheckpointResult,
    EvalError,
    EvalOptions,
    EvalTransform,
    SetResult,
    SuiteReport,
    best_threshold_accuracy,
    checkpoint_labels,
    default_data_root,
    evaluate,
)
from qmdd.evaluation._suites import (
    EMBEDDED_ROOT,
    Protocol,
    SetSpec,
    Suite,
    SuiteError,
    get_suite,
    list_suites,
    load_suite_file,
    register_suite,
    resolve_suite_name,
)

__all__ = [
    "EMBEDDED_ROOT",
    "PREDICTION_COLUMNS",
    "CheckpointResult",
    "EvalError",
    "EvalOptions",
    "EvalTransform",
    "Protocol",
    "ResolvedSet",
    "ResolvedSuite",
    "SetResult",
    "SetSpec",
    "Suite",
    "SuiteError",
    "SuiteReport",
    "best_threshold_accuracy",
    "checkpoint_labels",
    "default_data_root",
    "evaluate",
    "find_child",
    "format_table",
    "get_suite",
    "list_suites",
    "load_suite_file",
    "log_tensorboard",
    "markdown_table",
    "register_suite",
    "report_dict",
    "resolve_suite",
    "resolve_suite_name",
    "write_reports",
]
