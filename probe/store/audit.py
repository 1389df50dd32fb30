"""Who read the store, when, with which filters, why, and how many records they were given.

The user is the person behind the command, not the account it runs as: the kernel's login uid
(kept through sudo and su), else sudo's SUDO_UID (`sudo -u probe probe store query ...`), else the
real uid. The
record is written and fsync'd before any result is shown, so nothing is read unaudited.
"""

from __future__ import annotations

import json
import os
import pwd

from probe.clock import Clock
from probe.errors import StoreError
from probe.record.events import rfc3339
from probe.store.records import AuditRecord
from probe.store.retention import AUDIT_CLASS
from probe.store.ring import RingStore

UNSET_LOGIN_UID = 4294967295


def invoking_user() -> tuple[str, int]:
    """(name, uid) of the person running the command."""
    uid = _login_uid()
    if uid is None:
        sudo_uid = os.environ.get("SUDO_UID", "")
        uid = int(sudo_uid) if sudo_uid.isdigit() else os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    return name, uid


def _login_uid() -> int | None:
    try:
        with open("/proc/self/loginuid", encoding="ascii") as stream:
            value = int(stream.read().strip())
    except (OSError, ValueError):
        return None
    return None if value == UNSET_LOGIN_UID else value


def require_purpose(purpose: str) -> None:
    """Before anything is read: the law allows use of the data only to characterise a threat."""
    if not purpose.strip():
        raise StoreError("--purpose must say why the data is read (the law allows its use only to characterise a threat)")


def audit(store: RingStore, command: str, filters: dict[str, object], purpose: str, returned: int) -> None:
    """Append the audit record of one query or export; StoreError when it cannot be written (the
    caller then shows nothing)."""
    require_purpose(purpose)
    name, uid = invoking_user()
    given = {key: str(value) for key, value in filters.items() if value not in (None, False, ())}
    store.append_audit(AuditRecord(Clock().now(), name, uid, command, given, purpose.strip(), returned))


def audit_records(store: RingStore, since: int | None = None, until: int | None = None) -> list[AuditRecord]:
    records = []
    for summary in store.segments(AUDIT_CLASS):
        for record in store.read(summary):
            if isinstance(record, AuditRecord) and (since is None or record.time >= since) and (until is None or record.time < until):
                records.append(record)
    return sorted(records, key=lambda record: record.time)


def format_audit(records: list[AuditRecord], output_format: str) -> str:
    if output_format == "jsonl":
        return "".join(json.dumps({"time": rfc3339(record.time), "user": record.user, "uid": record.uid, "command": record.command, "filters": record.filters, "purpose": record.purpose, "returned": record.returned}) + "\n" for record in records)
    return "".join(f"{rfc3339(record.time)}  {record.user} (uid {record.uid})  {record.command}  {' '.join(f'--{key} {value}' for key, value in sorted(record.filters.items()))}  purpose: {record.purpose!r}  returned: {record.returned}\n" for record in records)
