"""The one source of "now" for every decision the law ties to time.

Retention, purge, bundle expiry and audit timestamps all ask a `Clock`; `--now` and the tests fix
it, so that a test can move six months ahead and check exactly which records remain. Calendar
arithmetic lives here too: the law counts retention in months, and a month is not a fixed number
of seconds.
"""

from __future__ import annotations

import calendar
import time
from datetime import datetime, timezone

NANOSECONDS = 1_000_000_000


class Clock:
    """Wall time, or a fixed instant (nanoseconds since the epoch) when one is given."""

    def __init__(self, fixed: int | None = None) -> None:
        self.fixed = fixed

    def now(self) -> int:
        return time.time_ns() if self.fixed is None else self.fixed


def parse_instant(text: str) -> int:
    """An RFC 3339 time or a date (UTC) as nanoseconds since the epoch; ValueError names the
    expected forms."""
    candidate = text.strip()
    if candidate.endswith(("Z", "z")):
        candidate = candidate[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(candidate)
    except ValueError:
        raise ValueError(f"{text!r} is not a time: expected RFC 3339 (2026-05-01T12:00:00Z) or a date (2026-05-01)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp()) * NANOSECONDS + moment.microsecond * 1000


def add_months(timestamp: int, months: int) -> int:
    """The same day and time `months` calendar months later (UTC). When that month is too short
    for the day (31 August + 6 months), the end of that month: the first instant of the next
    (1 March 00:00), as French law ends a period in months without the same date on the last day
    of the month at midnight (Code de procédure civile, art. 641-642). This keeps the result
    monotonic: a later record never expires earlier."""
    seconds, rest = divmod(timestamp, NANOSECONDS)
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    month_index = moment.month - 1 + months
    year, month = moment.year + month_index // 12, month_index % 12 + 1
    if moment.day > calendar.monthrange(year, month)[1]:
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        return int(datetime(year, month, 1, tzinfo=timezone.utc).timestamp()) * NANOSECONDS
    later = moment.replace(year=year, month=month)
    return int(later.timestamp()) * NANOSECONDS + rest
