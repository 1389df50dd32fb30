"""Before any test: the per-packet modules run compiled, and from their current source.

An editable install compiles them next to their source (setup.py), and Python imports the compiled
file first: a source edited since would be silently ignored by every test, and a module taken off
the list would still be imported from its old compiled file.
"""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_sessionstart(session: pytest.Session) -> None:
    compiled = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["probe"]["compiled"]
    for stray in sorted((ROOT / "probe").rglob("*.so")):
        if str(stray.relative_to(ROOT)).split(".")[0] + ".py" not in compiled:
            pytest.exit(f"{stray.relative_to(ROOT)} is compiled from a module no longer in [tool.probe] compiled: delete it", returncode=2)
    for source in compiled:
        module = importlib.import_module(source.removesuffix(".py").replace("/", "."))
        loaded = Path(module.__file__ or "")
        if loaded.suffix != ".so":
            pytest.exit(f"{source} is not compiled: install the probe (sh .ci/setup) before testing it", returncode=2)
        if loaded.stat().st_mtime < (ROOT / source).stat().st_mtime:
            pytest.exit(f"{source} changed after it was compiled: run sh .ci/setup (or .venv/bin/pip install -e .) again", returncode=2)
