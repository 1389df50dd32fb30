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
BANDS = {"PERFECT": 0.0, "SAFE": 0.1, "OK": 1.0, "MEDIUM": 5.0, "EXPOSED": 7.5, "UNSAFE": 9.0, "DANGEROUS": 10.0}
"""systemd-analyze security's bands (src/analyze/analyze-security.c): each starts at its score."""

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (Debian package systemd, installed by .ci/setup)")


def _install(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROBE, "install-service", "--root", str(root)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("root")
    result = _install(root)
    assert result.returncode == 0, result.stderr
    return root


def _unit(root: Path, name: str) -> configparser.ConfigParser:
    """Units repeat keys (SystemCallFilter=): strict=False keeps the last, enough for single-valued
    settings; interpolation off for `$MAINPID`, case kept for key names."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(root / "etc/systemd/system" / name)
    return parser


def test_units_verify(installed: Path) -> None:
    """verify fails on a missing or non-executable ExecStart and warns (exit 0) on unknown or
    invalid settings: both count, hence the empty stderr at notice level."""
    paths = [str(installed / "etc/systemd/system" / name) for name in UNITS]
    result = subprocess.run(["systemd-analyze", "verify", *paths], capture_output=True, text=True, env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"})
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    assert _unit(installed, "probe.service")["Service"]["ExecStart"] == f"{PROBE} run --config /etc/probe/probe.toml"
    assert _unit(installed, "probe-purge.service")["Service"]["ExecStart"] == f"{PROBE} store purge --config /etc/probe/probe.toml"


def test_service_runs_unprivileged_with_only_the_capture_capabilities(installed: Path) -> None:
    service = _unit(installed, "probe.service")["Service"]
    assert set(service["AmbientCapabilities"].split()) == {"CAP_NET_RAW", "CAP_NET_ADMIN"}
    assert set(service["CapabilityBoundingSet"].split()) == {"CAP_NET_RAW", "CAP_NET_ADMIN"}
    expected = {
        "Type": "notify", "NotifyAccess": "main", "ExecReload": "/bin/kill -HUP $MAINPID", "Restart": "on-failure",
        "User": "probe", "Group": "probe", "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "StateDirectory": "probe", "StateDirectoryMode": "0700", "RuntimeDirectory": "probe", "LimitCORE": "0", "UMask": "0077",
    }
    assert {key: service.get(key) for key in expected} == expected
    assert int(service["WatchdogSec"]) > 0 and int(service["TimeoutStopSec"]) > 30  # the probe's own stop bound
    assert service["MemoryMax"] and service["SystemCallFilter"]
    assert set(service["RestrictAddressFamilies"].split()) <= {"AF_UNIX", "AF_INET", "AF_INET6", "AF_PACKET", "AF_NETLINK"}


def test_purge_runs_without_any_capability_on_a_timer(installed: Path) -> None:
    purge = _unit(installed, "probe-purge.service")["Service"]
    assert purge["CapabilityBoundingSet"] == "" and purge["AmbientCapabilities"] == ""
    assert (purge["User"], purge["NoNewPrivileges"], purge["ProtectSystem"], purge["StateDirectoryMode"], purge["LimitCORE"]) == ("probe", "yes", "strict", "0700", "0")
    timer = _unit(installed, "probe-purge.timer")["Timer"]
    assert timer["OnCalendar"] == "daily" and timer["Persistent"] == "true" and timer["OnBootSec"]


@pytest.mark.parametrize(("unit", "worst"), [("probe.service", "OK"), ("probe-purge.service", "SAFE")])
def test_exposure_stays_in_its_band(installed: Path, unit: str, worst: str) -> None:
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", str(installed / "etc/systemd/system" / unit)], capture_output=True, text=True)
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+) ([A-Z]+)", result.stdout)
    assert found, result.stdout + result.stderr
    score, band = float(found.group(1)), found.group(2)
    ceiling = min(start for start in BANDS.values() if start > BANDS[worst])
    assert band in BANDS and BANDS[band] <= BANDS[worst] and score < ceiling, found.group(0)


def test_reinstalling_keeps_the_configuration(installed: Path) -> None:
    config = installed / "etc/probe/probe.toml"
    units = {name: (installed / "etc/systemd/system" / name).read_text() for name in UNITS}
    config.write_text(config.read_text() + "\n# the operator's own lines\n")
    result = _install(installed)
    assert result.returncode == 0, result.stderr
    assert "kept" in result.stdout and config.read_text().endswith("# the operator's own lines\n")
    assert {name: (installed / "etc/systemd/system" / name).read_text() for name in UNITS} == units
    assert (config.stat().st_mode & 0o777, (installed / "etc/probe/trust").stat().st_mode & 0o777) == (0o640, 0o750)


def test_a_fresh_configuration_is_the_shipped_example(tmp_path: Path) -> None:
    """Reading the units and the example through the package (as a wheel install does) gives the
    files of systemd/."""
    result = _install(tmp_path)
    assert result.returncode == 0, result.stderr
    shipped = Path(__file__).resolve().parent.parent / "systemd"
    assert (tmp_path / "etc/probe/probe.toml").read_bytes() == (shipped / "probe.toml").read_bytes()
    installed_unit = (tmp_path / "etc/systemd/system/probe.service").read_text()
    assert installed_unit == (shipped / "probe.service").read_text().replace("/usr/local/bin/probe", PROBE)
