"""The one clock helper: ``format_time`` and ``parse_time`` are inverses on whole UTC seconds,
``parse_time`` takes only the one shape a signed file may hold, and the builder's ``parse_when``
reads its documented forms (FORMAT.md §4, timestamps)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.clock import format_time, parse_time
from firmware_tools.cli import parse_when

UTC = timezone.utc


@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30, 23, 59, 59),
                    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)),
                                               timezone(-timedelta(hours=8))])))
def test_format_then_parse_is_the_time_to_the_second(value: datetime) -> None:
    text = format_time(value)
    assert len(text) == 20 and text.endswith("Z")
    parsed = parse_time(text)
    assert parsed.tzinfo is not None and parsed.utcoffset() == timedelta(0)
    assert parsed == value.astimezone(UTC).replace(microsecond=0)
    assert format_time(parsed) == text


@pytest.mark.parametrize("text", [
    "2026-12-03T10:40:00+00:00",   # an offset, even a zero one
    "2026-12-03T10:40:00.5Z",      # fractions
    "2026-12-03 10:40:00Z",        # a space for T
    "2026-12-03T10:40:00z",        # lower-case z
    "2026-12-03",                  # a date alone
    "2026-W49-4T10:40:00Z",        # an ISO week date
    "\u0662\u0660\u0662\u0666-12-03T10:40:00Z",  # non-ASCII digits that \d would match
    " 2026-12-03T10:40:00Z",
    "",
])
def test_parse_time_rejects_every_other_shape(text: str) -> None:
    with pytest.raises(ValueError, match="not a YYYY-MM-DDTHH:MM:SSZ time"):
        parse_time(text)


@pytest.mark.parametrize("text", ["2026-02-30T00:00:00Z", "2026-12-03T24:00:00Z", "2026-13-01T00:00:00Z"])
def test_parse_time_rejects_times_that_do_not_exist(text: str) -> None:
    with pytest.raises(ValueError, match="no such date or time"):
        parse_time(text)


def test_parse_time_rejects_non_strings() -> None:
    with pytest.raises(ValueError):
        parse_time(None)  # type: ignore[arg-type]


NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("text", "expected"), [
    ("2027-01-31", datetime(2027, 1, 31, tzinfo=UTC)),
    ("2027-01-31T12:00:00Z", datetime(2027, 1, 31, 12, tzinfo=UTC)),
    ("2027-01-31T12:00:00+01:00", datetime(2027, 1, 31, 11, tzinfo=UTC)),
    ("2027-01-31T12:00:00+0100", datetime(2027, 1, 31, 11, tzinfo=UTC)),
    (" 2027-01-31 ", datetime(2027, 1, 31, tzinfo=UTC)),
    ("+90d", NOW + timedelta(days=90)),
    ("12h", NOW + timedelta(hours=12)),
])
def test_parse_when_reads_its_documented_forms(text: str, expected: datetime) -> None:
    assert parse_when(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["2027-02-30", "2027-1-31", "2027-01-31 12:00:00", "31/01/2027", "+90m",
                                  "2027-01-31T12:00:00.5Z", "tomorrow"])
def test_parse_when_rejects_other_forms_with_a_message(text: str) -> None:
    with pytest.raises(ValueError, match="date"):
        parse_when(text, now=NOW)
