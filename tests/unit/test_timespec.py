"""Moments and expiries typed by people."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from branchline.errors import UsageError
from branchline.timespec import parse_expiry, parse_moment

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "delta"),
    [
        ("30 minutes ago", timedelta(minutes=30)),
        ("1 hour ago", timedelta(hours=1)),
        ("2h ago", timedelta(hours=2)),
        ("90s ago", timedelta(seconds=90)),
        ("1h30m ago", timedelta(minutes=90)),
        ("3 days ago", timedelta(days=3)),
        ("now", timedelta(0)),
    ],
)
def test_relative_moments(text: str, delta: timedelta) -> None:
    assert parse_moment(text, now=NOW) == NOW - delta


def test_iso_moments_with_and_without_zone() -> None:
    assert parse_moment("2026-11-27T10:00:00Z", now=NOW) == datetime(2026, 11, 27, 10, tzinfo=UTC)
    assert parse_moment("2026-11-27T11:00:00+01:00", now=NOW) == datetime(
        2026, 11, 27, 10, tzinfo=UTC
    )
    naive = parse_moment("2026-11-27 10:00:00", now=NOW)
    assert naive.tzinfo is not None


@pytest.mark.parametrize("text", ["yesterday-ish", "5 fortnights ago", "", "ago"])
def test_unreadable_moments_explain_the_format(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_moment(text, now=NOW)
    assert "minutes ago" in info.value.hint


def test_expiry_from_duration_or_time() -> None:
    assert parse_expiry("2h", now=NOW) == NOW + timedelta(hours=2)
    assert parse_expiry("2026-12-01T00:00:00Z", now=NOW) == datetime(2026, 12, 1, tzinfo=UTC)
    with pytest.raises(UsageError, match="not in the future"):
        parse_expiry("2026-01-01T00:00:00Z", now=NOW)
    with pytest.raises(UsageError, match="cannot read"):
        parse_expiry("soonish", now=NOW)
    with pytest.raises(UsageError, match="cannot read"):
        parse_expiry("99999999999d", now=NOW)  # past the year 9999: an error, not a crash
