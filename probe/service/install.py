"""`probe install-service`: the systemd units, the configuration and the service user in place.

The units in `systemd/` name `/usr/local/bin/probe`; the installed copies name the probe that runs
this command, so a virtual environment works as well as a system package. The configuration is
never overwritten: an operator's declaration and sinks survive a reinstall.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import click

UNITS = ("probe.service", "probe-purge.service", "probe-purge.timer")
SHIPPED = Path(__file__).resolve().parent / "units"
SHIPPED_EXECUTABLE = "/usr/local/bin/probe"
SERVICE_USER = "probe"
HIDDEN_BY_UNIT = ("/home/", "/root/", "/run/user/")
"""ProtectHome=yes hides these from the service: a probe installed there could not be started."""


def probe_executable() -> str:
    found = shutil.which("probe") if os.sep not in sys.argv[0] else sys.argv[0]
    if not found:
        raise click.ClickException("cannot find the probe executable: run this command as `probe install-service`")
    return os.path.abspath(found)


def _create_user() -> None:
    try:
        pwd.getpwnam(SERVICE_USER)
        return
    except KeyError:
        pass
    command = ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/var/lib/probe", "--shell", "/usr/sbin/nologin", SERVICE_USER]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise click.ClickException(f"cannot create the {SERVICE_USER} user: {result.stderr.strip() or result.returncode}")


@click.command("install-service")
@click.option("--root", "root", default="/", show_default=True, type=click.Path(file_okay=False), help="Install under this directory instead of / (packaging, tests): no user is created, nothing is chowned, systemd is not told.")
@click.option("--unit-directory", default="/etc/systemd/system", show_default=True, help="Where the unit files go (under --root).")
def install_service(root: str, unit_directory: str) -> None:
    """Install the systemd service: probe.service (probe run, hardened, only CAP_NET_RAW and
    CAP_NET_ADMIN), probe-purge.timer (daily purge of expired events while the probe is stopped),
    /etc/probe/probe.toml (the commented example, kept if present), /etc/probe/trust and the
    `probe` system user. Then: fill in [declaration], [capture], [markers] and [[sinks]] of
    /etc/probe/probe.toml and run `systemctl enable --now probe probe-purge.timer`."""
    executable = probe_executable()
    system = Path(root).resolve() == Path("/")
    if system and executable.startswith(HIDDEN_BY_UNIT):
        raise click.ClickException(f"{executable} is under /home, /root or /run/user, which the unit hides from the service (ProtectHome=yes): install the probe elsewhere, e.g. python3 -m venv /opt/probe && /opt/probe/bin/pip install .")
    if system and os.geteuid() != 0:
        raise click.ClickException("installing the service needs root (run it with sudo)")
    base = Path(root)
    if system:
        _create_user()
    units = base / unit_directory.lstrip("/")
    units.mkdir(parents=True, exist_ok=True)
    for name in UNITS:
        text = (SHIPPED / name).read_text(encoding="utf-8").replace(SHIPPED_EXECUTABLE, executable)
        (units / name).write_text(text, encoding="utf-8")
        (units / name).chmod(0o644)
        click.echo(f"installed {units / name}")
    configuration = base / "etc/probe"
    configuration.mkdir(parents=True, exist_ok=True)
    (configuration / "trust").mkdir(mode=0o750, exist_ok=True)
    config_file = configuration / "probe.toml"
    if config_file.exists():
        click.echo(f"kept {config_file} (never overwritten)")
    else:
        shutil.copyfile(SHIPPED / "probe.toml", config_file)
        config_file.chmod(0o640)
        click.echo(f"installed {config_file}: fill in [declaration], [capture], [markers] and [[sinks]]")
    if system:
        group = grp.getgrnam(SERVICE_USER).gr_gid
        for path in (configuration, configuration / "trust", config_file):
            os.chown(path, 0, group)
        configuration.chmod(0o750)
        if Path("/run/systemd/system").is_dir():
            subprocess.run(["systemctl", "daemon-reload"], check=True)
        else:
            click.echo("systemd is not running here (a container?): run `systemctl daemon-reload` on the host")
    click.echo("then: systemctl enable --now probe.service probe-purge.timer")
