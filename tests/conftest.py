"""Before any test: the per-packet modules run compiled, from the current source.

An editable install compiles them next to their source (setup.py), and Python imports the compiled
file first: a source edited since would be silently ignored by every test, a type changed in a
module they import would fail far from its cause, and a module taken off the list would still be
imported from its old compiled file. With PROBE_PURE_PYTHON=1 (an install that compiles nothing)
the tests run on the source alone.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REBUILD = "run sh .ci/setup again (an editable install: .venv/bin/pip install -e .)"


def pytest_sessionstart(session: pytest.Session) -> None:
    compiled = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["probe"]["compiled"]
    pure = os.environ.get("PROBE_PURE_PYTHON") == "1"
    for found in sorted((ROOT / "probe").rglob("*.so")):
        if pure or str(found.relative_to(ROOT)).split(".")[0] + ".py" not in compiled:
            pytest.exit(f"{found.relative_to(ROOT)} would be imported instead of its source: delete the compiled files (git clean -fdX probe), then {REBUILD}", returncode=2)
    if pure:
        return
    for source in compiled:
        module = importlib.import_module(source.removesuffix(".py").replace("/", "."))
        if not (module.__file__ or "").endswith(".so"):
            pytest.exit(f"{source} is not compiled here: {REBUILD}", returncode=2)
    stamp = ROOT / "probe" / "compiled-sources.json"
    built = json.loads(stamp.read_text()) if stamp.exists() else {}
    current = {str(path.relative_to(ROOT)): hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted((ROOT / "probe").rglob("*.py"))}
    changed = sorted(set(built.items()) ^ set(current.items()))
    if changed:
        pytest.exit(f"{changed[0][0]} differs from what the compiled modules were built from: {REBUILD}", returncode=2)
