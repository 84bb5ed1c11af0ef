"""Sizes in branchline.toml: `"500MB"`, `"1.5 GB"`, `1048576` (bytes) or a share of
something, `"10%"`. Units are binary (1 KB = 1024 bytes), as `df -h` shows them."""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%")


@dataclass(frozen=True)
class SizeSpec:
    """A number of bytes, or a fraction (0..1) of a whole that is known later."""

    bytes: int | None = None
    fraction: float | None = None

    def of(self, whole: int) -> int:
        if self.fraction is not None:
            return int(whole * self.fraction)
        return self.bytes or 0

    def __str__(self) -> str:
        if self.fraction is not None:
            return f"{self.fraction * 100:g}%"
        return human_bytes(self.bytes or 0)


def parse_size(value: object, *, percent: bool = True) -> SizeSpec:
    """Parse a size; ValueError (with what was wrong) for anything else."""
    if isinstance(value, bool):
        raise ValueError(f'expected a size such as "500MB", got {value!r}')
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative ({value})")
        return SizeSpec(bytes=value)
    if not isinstance(value, str):
        raise ValueError(f'expected a size such as "500MB", got {value!r}')
    text = value.strip()
    if percent and (match := _PERCENT.fullmatch(text)):
        share = float(match.group(1))
        if share > 100:
            raise ValueError(f"{text!r} is more than the whole disk")
        return SizeSpec(fraction=share / 100)
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"{value!r} is not a size")
    return SizeSpec(bytes=int(float(match.group(1)) * _UNITS[match.group(2).lower()]))


def human_bytes(size: int) -> str:
    """`1.5 GB`, `220 MB`, `12 KB`: for messages people read."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1024 or unit == "TB":
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.1f} {unit}" if abs(value) < 10 else f"{value:.0f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
