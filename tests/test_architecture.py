"""The package layering of docs/architecture.md, checked on the source: which may import which."""

import ast
import collections
from pathlib import Path

import qmdd

PACKAGE = Path(qmdd.__file__).parent

#: Each unit (a subpackage or a top-level module of qmdd) and the other units it may import.
#: Lower layers never import higher ones, so there is no import circle and a factory that
#: everything uses (qmdd.detector) sits below everything that uses it.
ALLOWED = {
    "utils": set(),
    "run_folder": set(),
    "metrics": set(),
    "config": {"utils"},
    "models": set(),
    "quant": {"config"},
    "checkpoint": {"config", "metrics", "utils"},
    "detector": {"checkpoint", "config", "models", "quant"},
    "data": {"config", "utils"},
    "cost": {"config", "models", "quant"},
    "gradcam": {"data"},
    "training": {"checkpoint", "config", "cost", "data", "detector", "metrics", "quant", "run_folder", "utils"},
    "evaluation": {"config", "data", "detector", "metrics", "training", "utils"},
    "deploy": {"config", "data", "detector", "metrics", "models", "quant", "utils"},
    "prune": {"checkpoint", "config", "cost", "data", "detector", "models", "quant", "run_folder", "training", "utils"},
    "video": {"checkpoint", "config", "data", "deploy", "detector", "utils"},
    "demo": {"utils", "video"},
}
ENTRY_POINTS = {"train", "eval", "report", "export", "predict", "lth", "explain", "slim"}


def _imports() -> dict[str, set[str]]:
    found: dict[str, set[str]] = collections.defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts == ("__init__",):
            continue
        unit = parts[0]
        for node in ast.walk(ast.parse(path.read_text())):
            modules = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            for module in modules:
                names = module.split(".")
                if names[0] == "qmdd" and len(names) > 1 and names[1] != unit:
                    found[unit].add(names[1])
    return found


def test_every_unit_imports_only_what_its_layer_allows():
    imports = _imports()
    units = set(imports) | {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists())}
    units.discard("__init__")
    unknown = units - set(ALLOWED) - ENTRY_POINTS
    assert not unknown, f"units without a layer in docs/architecture.md: {sorted(unknown)}"
    violations = {unit: sorted(imports[unit] - ALLOWED[unit]) for unit in ALLOWED if imports[unit] - ALLOWED[unit]}
    assert not violations, f"imports against the layering: {violations}"


def test_no_library_unit_imports_an_entry_point():
    imports = _imports()
    assert all(not (imports[unit] & ENTRY_POINTS) for unit in ALLOWED)
