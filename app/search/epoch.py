"""Times as the search engines compare them: whole microseconds since the Unix epoch, UTC.

The one conversion both ways, so a ``date:`` or ``age:`` bound, the ``indexed_us`` column
of the posting engines and the SQL engine's datetimes agree to the microsecond (integer
arithmetic: no float rounding, and a naive datetime, which SQLite hands back, read as UTC
rather than as local time).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros(moment: datetime) -> int:
    """Microseconds since the epoch."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def moment_of(value: int) -> datetime:
    """The UTC datetime ``value`` microseconds after the epoch."""
    return EPOCH + timedelta(microseconds=value)
