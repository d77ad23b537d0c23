"""The layers of docs/ARCHITECTURE.md hold: import-linter's contracts in pyproject.toml.

They replace hand-written "no Django in the core" checks: the apps import only downward
(radtrack <- patients <- imaging <- analytics), sub-packages keep their own order, and
the cores import no Django, directly or through anything they import.
"""

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_every_core_is_under_the_django_free_contract():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    forbidden = next(c for c in config["contracts"] if c["type"] == "forbidden")
    cores = {
        ".".join(p.relative_to(ROOT).parts)
        for app in ("radtrack", "patients", "imaging", "analytics")
        for p in (ROOT / app).glob("**/core")
        if (p / "__init__.py").exists()
    }
    assert cores and cores <= set(forbidden["source_modules"])
    assert "django" in forbidden["forbidden_modules"]
