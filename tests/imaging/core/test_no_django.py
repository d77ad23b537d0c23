"""imaging/core must stay free of Django (STYLE.md rule 1)."""

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[3] / "imaging" / "core"


def test_core_modules_exist():
    assert list(CORE.glob("*.py")), f"no modules found under {CORE}"


def test_no_module_under_imaging_core_imports_django():
    offenders = []
    for path in CORE.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{path.name}:{node.lineno} imports {n}"
                for n in names
                if n.split(".")[0]
                in {"django", "rest_framework", "patients", "imaging", "analytics", "radtrack"}
            ]
    assert not offenders, offenders
