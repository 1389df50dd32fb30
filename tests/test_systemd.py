"""The systemd units: accepted by `systemd-analyze verify` as `probe install-service` installs them,
hardened as the issue and the law require (only the two capture capabilities, no core dumps, a
private state directory), and exposed no more than systemd's "OK" band."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = str(Path(sys.executable).with_name("probe"))
UNITS = ("probe.service", "probe-purge.service", "probe-purge.timer")

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (Debian package systemd)")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("root")
    result = subprocess.run([PROBE, "install-service", "--root", str(root)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return root


def _unit(root: Path, name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(root / "etc/systemd/system" / name)
    return parser


def test_units_verify(installed: Path) -> None:
    paths = [str(installed / "etc/systemd/system" / name) for name in UNITS]
    result = subprocess.run(["systemd-analyze", "verify", *paths], capture_output=True, text=True, env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"})
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    assert _unit(installed, "probe.service")["Service"]["ExecStart"] == f"{PROBE} run --config /etc/probe/probe.toml"


def test_service_runs_unprivileged_with_only_the_capture_capabilities(installed: Path) -> None:
    service = _unit(installed, "probe.service")["Service"]
    assert service["User"] == "probe" and service["Type"] == "notify"
    assert set(service["AmbientCapabilities"].split()) == {"CAP_NET_RAW", "CAP_NET_ADMIN"}
    assert set(service["CapabilityBoundingSet"].split()) == {"CAP_NET_RAW", "CAP_NET_ADMIN"}
    expected = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "StateDirectory": "probe", "StateDirectoryMode": "0700", "LimitCORE": "0", "PrivateTmp": "yes", "Restart": "on-failure", "ExecReload": "/bin/kill -HUP $MAINPID"}
    assert {key: service[key] for key in expected} == expected
    assert int(service["WatchdogSec"]) > 0 and service["MemoryMax"] and service["SystemCallFilter"] and service["RestrictAddressFamilies"]
    purge = _unit(installed, "probe-purge.service")["Service"]
    assert purge["CapabilityBoundingSet"] == "" and purge["ExecStart"].endswith("store purge --config /etc/probe/probe.toml")


@pytest.mark.parametrize(("unit", "worst"), [("probe.service", "OK"), ("probe-purge.service", "SAFE")])
def test_exposure_stays_in_its_band(installed: Path, unit: str, worst: str) -> None:
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", str(installed / "etc/systemd/system" / unit)], capture_output=True, text=True)
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", result.stdout)
    assert found, result.stdout + result.stderr
    bands = ["SAFE", "OK", "MEDIUM", "EXPOSED", "UNSAFE"]
    assert bands.index(found.group(2)) <= bands.index(worst), found.group(0)


def test_reinstalling_keeps_the_configuration(installed: Path) -> None:
    config = installed / "etc/probe/probe.toml"
    config.write_text(config.read_text() + "\n# the operator's own lines\n")
    result = subprocess.run([PROBE, "install-service", "--root", str(installed)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "kept" in result.stdout and config.read_text().endswith("# the operator's own lines\n")
    assert (installed / "etc/probe/trust").is_dir()
