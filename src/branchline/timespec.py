"""Moments and expiries as people type them: "30 minutes ago", "2h", ISO 8601."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from branchline.config import parse_duration
from branchline.errors import UsageError

_UNITS = {
    "s": 1, "sec": 1, "second": 1,
    "m": 60, "min": 60, "minute": 60,
    "h": 3600, "hr": 3600, "hour": 3600,
    "d": 86400, "day": 86400,
    "w": 604800, "week": 604800,
}  # fmt: skip
_AGO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]+?)s?\s+ago\s*$")
_FORMATS = '"30 minutes ago", "2h ago", or an ISO time such as 2026-11-27T14:30:00Z'


def _absolute(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    # A time without a zone means local time, as a person would mean it.
    return moment if moment.tzinfo else moment.astimezone()


def parse_moment(text: str, *, now: datetime | None = None) -> datetime:
    """A past or present moment: "now", "<n> <unit>s ago", "<duration> ago" or ISO 8601."""
    now = now or datetime.now(UTC)
    lowered = text.strip().lower()
    if lowered == "now":
        return now
    absolute = _absolute(text)
    if absolute is not None:
        return absolute.astimezone(UTC)
    match = _AGO.match(lowered)
    if match and match.group(2) in _UNITS:
        return now - timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    if lowered.endswith(" ago"):
        try:
            return now - parse_duration(lowered.removesuffix(" ago").strip())
        except ValueError:
            pass
    raise UsageError(f"cannot read {text!r} as a moment", hint=f"Write {_FORMATS}.")


def parse_expiry(text: str, *, now: datetime | None = None) -> datetime:
    """When something expires: a duration from now ("2h", "3d") or an ISO time."""
    now = now or datetime.now(UTC)
    absolute = _absolute(text)
    if absolute is not None:
        moment = absolute.astimezone(UTC)
    else:
        try:
            moment = now + parse_duration(text.strip())
        except (ValueError, OverflowError):  # OverflowError: past the year 9999
            raise UsageError(
                f"cannot read {text!r} as an expiry",
                hint='Write a duration from now such as "2h" or "3d", or an ISO time.',
            ) from None
    if moment <= now:
        raise UsageError(f"expiry {text!r} is not in the future", hint="Give a later time.")
    return moment
