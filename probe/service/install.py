"""`probe install-service`: the systemd units, the configuration and the service user in place.

The units in `systemd/` (shipped in the package as `probe/service/units`) name
`/usr/local/bin/probe`; the installed copies name the probe that runs this command, so a virtual
environment works as well as a system package. The configuration is never overwritten: an
operator's declaration and sinks survive a reinstall.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import click

UNITS = ("probe.service", "probe-purge.service", "probe-purge.timer")
EXAMPLE_CONFIGURATION = "probe.toml"
SHIPPED_EXECUTABLE = "/usr/local/bin/probe"
SERVICE_USER = "probe"
HIDDEN_BY_UNIT = ("/home/", "/root/", "/run/user/")
"""ProtectHome=yes hides these from the service: a probe installed there could not be started."""


def _shipped(name: str) -> bytes:
    """Read through importlib.resources so that an installed wheel finds the files as well as a
    checkout does (where `units` is a link to `systemd/`)."""
    return resources.files(__package__).joinpath("units", name).read_bytes()


def probe_executable() -> str:
    """The probe the units will run: the one running now, as systemd needs an absolute path."""
    found = sys.argv[0] if os.sep in sys.argv[0] else shutil.which(sys.argv[0])
    if not found or not os.access(found, os.X_OK) or os.path.basename(found) != "probe":
        raise click.ClickException("cannot find the probe executable: run this command as `probe install-service` (or with the probe's full path)")
    return os.path.abspath(found)


def _create_user() -> None:
    """A system user without a home or a shell: the service only needs an identity that owns its
    state directory and reads its configuration through the group."""
    try:
        pwd.getpwnam(SERVICE_USER)
        return
    except KeyError:
        pass
    try:
        grp.getgrnam(SERVICE_USER)
        group = ["--gid", SERVICE_USER]
    except KeyError:
        group = ["--user-group"]
    command = ["useradd", "--system", *group, "--no-create-home", "--home-dir", "/var/lib/probe", "--shell", "/usr/sbin/nologin", SERVICE_USER]
    try:
        result = subprocess.run(command, capture_output=True, text=True)
    except FileNotFoundError:
        raise click.ClickException(f"useradd not found: create the {SERVICE_USER} system user and group (e.g. with adduser --system --group {SERVICE_USER}), then run this again") from None
    if result.returncode != 0:
        raise click.ClickException(f"cannot create the {SERVICE_USER} user: {result.stderr.strip() or f'useradd exited with {result.returncode}'}")


def _write_new(path: Path, content: bytes, mode: int) -> bool:
    """Create `path` with exactly `mode` (whatever the umask) unless it exists: O_EXCL, so an
    operator's file is never replaced, even by a concurrent run."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "wb") as file:
        os.fchmod(file.fileno(), mode)
        file.write(content)
    return True


def _directory(path: Path, mode: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(mode)


@click.command("install-service")
@click.option("--root", "root", default="/", show_default=True, type=click.Path(file_okay=False), help="Install under this directory instead of / (packaging, tests): no user is created, nothing is chowned, systemd is not told.")
@click.option("--unit-directory", default="/etc/systemd/system", show_default=True, help="Where the unit files go (under --root).")
def install_service(root: str, unit_directory: str) -> None:
    """Install the systemd service: probe.service (probe run, hardened, only CAP_NET_RAW and
    CAP_NET_ADMIN), probe-purge.timer (daily purge of expired events while the probe is stopped),
    /etc/probe/probe.toml (the commented example, kept if present), /etc/probe/trust and the
    `probe` system user. Then: fill in [declaration], [capture], [store], [markers] and [[sinks]]
    of /etc/probe/probe.toml and run `systemctl enable --now probe probe-purge.timer`."""
    executable = probe_executable()
    system = Path(root).resolve() == Path("/")
    if system and executable.startswith(HIDDEN_BY_UNIT):
        raise click.ClickException(f"{executable} is under /home, /root or /run/user, which the unit hides from the service (ProtectHome=yes): install the probe elsewhere, e.g. python3 -m venv /opt/probe && /opt/probe/bin/pip install .")
    if system and os.geteuid() != 0:
        raise click.ClickException("installing the service needs root (run it with sudo)")
    base = Path(root)
    try:
        if system:
            _create_user()
        units = base / unit_directory.lstrip("/")
        units.mkdir(parents=True, exist_ok=True)
        for name in UNITS:
            text = _shipped(name).decode().replace(SHIPPED_EXECUTABLE, executable)
            (units / name).write_text(text, encoding="utf-8")
            (units / name).chmod(0o644)
        configuration = base / "etc/probe"
        _directory(configuration, 0o750)
        _directory(configuration / "trust", 0o750)
        config_file = configuration / EXAMPLE_CONFIGURATION
        created = _write_new(config_file, _shipped(EXAMPLE_CONFIGURATION), 0o640)
        if system:
            try:
                group = grp.getgrnam(SERVICE_USER).gr_gid
            except KeyError:
                raise click.ClickException(f"the {SERVICE_USER} user exists but no {SERVICE_USER} group: create it (groupadd --system {SERVICE_USER}), then run this again") from None
            for path in (configuration, configuration / "trust", *([config_file] if created else [])):
                os.chown(path, 0, group)
    except OSError as error:
        raise click.ClickException(f"{error.filename or root}: {error.strerror}: check that --root and --unit-directory are writable") from None
    for name in UNITS:
        click.echo(f"installed {units / name}")
    if created:
        click.echo(f"installed {config_file}: fill in [declaration], [capture], [store], [markers] and [[sinks]]")
    else:
        click.echo(f"kept {config_file} (never overwritten)")
    if system:
        if Path("/run/systemd/system").is_dir():
            result = subprocess.run(["systemctl", "daemon-reload"], capture_output=True, text=True)
            if result.returncode != 0:
                raise click.ClickException(f"systemctl daemon-reload failed: {result.stderr.strip()}: run it by hand before enabling the service")
        else:
            click.echo("systemd is not running here (a container?): run `systemctl daemon-reload` where it runs")
    click.echo("then: systemctl enable --now probe.service probe-purge.timer")
