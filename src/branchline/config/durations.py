"""Durations as written in branchline.toml: `parse_duration` reads a number of seconds
or text like "500ms", "30s" or "1h30m" into a `timedelta`, and `format_duration` writes
one back the same way (in hours at most).
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

from branchline.config.problems import _describe

_DURATION_TEXT = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> timedelta:
    """Parse seconds (a number) or a string like "500ms", "30s", "5m", "1h30m", "2d".

    Raises ValueError with a readable message for anything else or a negative value.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _duration_text_seconds(value)
    else:
        raise ValueError(f"expected a duration, got {_describe(value)}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"expected a duration of zero or more, got {_describe(value)}")
    return timedelta(seconds=seconds)


def _duration_text_seconds(text: str) -> float:
    stripped = text.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", stripped):  # "30" from ${VAR} interpolation
        return float(stripped)
    if not _DURATION_TEXT.fullmatch(stripped):
        raise ValueError(f"expected a duration, got {_describe(text)}")
    return sum(
        float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION_PART.findall(stripped)
    )


def format_duration(value: timedelta) -> str:
    """The inverse of parse_duration, in hours at most: 72h, 1h30m, 30s, 500ms, 0s."""
    millis = round(value.total_seconds() * 1000)
    if millis == 0:
        return "0s"
    parts = []
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        count, millis = divmod(millis, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
