"""Build of the per-packet modules with mypyc; the project's metadata is in pyproject.toml.

The modules listed under [tool.probe] compiled are what every captured packet and inspected
segment runs through. Compiled from their own typed source they run about 1.4 times faster
(benchmarks/README.md); their source stays the only implementation, so the types they declare
must be true: a compiled function checks them. PROBE_PURE_PYTHON=1 installs without compiling
(a host without a C compiler), with the same results, slower.
"""

import hashlib
import json
import os
import tomllib
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
COMPILED = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["probe"]["compiled"]
SOURCES_STAMP = ROOT / "probe" / "compiled-sources.json"
"""The sources a build was compiled from, for tests/conftest.py: compiled code takes in the types
of every project module it imports, so a change to any of them calls for a new build."""


class BuildAndStamp(build_ext):
    """Compiles, then (for a build beside the source: an editable install) notes what from."""

    def run(self) -> None:
        if not self.inplace:
            super().run()
            return
        SOURCES_STAMP.unlink(missing_ok=True)
        super().run()
        sources = {str(path.relative_to(ROOT)): hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted((ROOT / "probe").rglob("*.py"))}
        SOURCES_STAMP.write_text(json.dumps(sources, indent=1) + "\n")


def compiled_modules() -> list:
    if os.environ.get("PROBE_PURE_PYTHON") == "1":
        return []
    from mypyc.build import mypycify

    # The build environment holds only the build requirements: imports from outside the project
    # (numpy, hyperscan...) are typed as Any, and the compiled code calls them as Python would.
    return mypycify(["--ignore-missing-imports", "--follow-imports=silent", *COMPILED], group_name="probe_compiled")


setup(ext_modules=compiled_modules(), cmdclass={"build_ext": BuildAndStamp})
