"""The one place that reads the wall clock and writes timestamps (runtime and builder).

``utc_now`` reads the clock once per operation, or checks a caller's time; ``format_time`` is the
timestamp form every file of the project uses (manifest, store, CLI output) and ``parse_time``
reads it back. The *trusted* time
of a device (the floor that never goes back) is ``edge.trust.DeviceState.trusted_time``, built
on these.

Example::

    now = utc_now(None)            # the clock, timezone-aware UTC
    format_time(now)               # "2026-12-03T10:40:00Z"
    parse_time("2026-12-03T10:40:00Z") == now.replace(microsecond=0)

Source: FORMAT.md §4 (timestamps: UTC, whole seconds, ``Z``).
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

__all__ = ["utc_now", "format_time", "parse_time"]

#: The one timestamp shape (FORMAT.md §4): ``datetime.fromisoformat`` alone also accepts
#: offsets, fractions, week dates and a space for ``T``, which a signed file must not vary in.
TIMESTAMP_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z", re.ASCII)


def utc_now(now: datetime | None = None) -> datetime:
    """Return ``now``, or the clock read once when ``None``.

    Raises:
        ValueError: ``now`` is naive (no tzinfo): a time without a zone cannot be judged.
    """
    if now is None:
        return datetime.now(timezone.utc)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now


def format_time(value: datetime) -> str:
    """Return ``value`` (timezone-aware) as ``YYYY-MM-DDTHH:MM:SSZ`` in UTC (sub-seconds dropped).

    Raises:
        ValueError: ``value`` is naive.
    """
    if value.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    v = value.astimezone(timezone.utc)
    # Not strftime("%Y"): glibc writes year 999 as "999", a shape parse_time rightly refuses.
    return f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}Z"


def parse_time(text: str) -> datetime:
    """Return the timezone-aware UTC time of ``YYYY-MM-DDTHH:MM:SSZ`` (what ``format_time`` writes).

    The shape is checked first (``TIMESTAMP_RE``: exactly 20 ASCII characters), then the value is
    read by ``datetime.fromisoformat`` (ISO 8601 / RFC 3339, Python >= 3.11 for ``Z``).

    Raises:
        ValueError: any other shape, or a date or time that does not exist (``2026-02-30``,
            ``25:00:00``).
    """
    if not isinstance(text, str) or not TIMESTAMP_RE.fullmatch(text):
        raise ValueError(f"not a YYYY-MM-DDTHH:MM:SSZ time: {text!r:.40}")
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"no such date or time: {text!r}") from None
