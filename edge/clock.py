"""The one place that reads the wall clock and writes timestamps (runtime and builder).

``utc_now`` reads the clock once per operation, or checks a caller's time; ``format_time`` is the
timestamp form every file of the project uses (manifest, store, CLI output). The *trusted* time
of a device (the floor that never goes back) is ``edge.trust.DeviceState.trusted_time``, built
on these.

Example::

    now = utc_now(None)            # the clock, timezone-aware UTC
    format_time(now)               # "2026-12-03T10:40:00Z"

Source: FORMAT.md §4 (timestamps: UTC, whole seconds, ``Z``).
"""

from __future__ import annotations

from datetime import datetime, timezone

__all__ = ["utc_now", "format_time"]


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
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
