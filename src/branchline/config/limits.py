"""`[limits]` (how much one step may print and how long it may run) and `[retention]`
(how long finished runs, their logs and their artifacts are kept)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from pydantic import BeforeValidator, field_validator

from branchline.config import sizes
from branchline.config.base import _Model
from branchline.config.fields import Duration
from branchline.config.problems import _describe, _invalid

_SIZE_HINT = 'write a number of bytes or a string such as `{key} = "5MB"` (units B, KB, MB, GB)'


def parse_size(value: object) -> int:
    """Bytes from a number or text like "512KB", "5MB", "1GB" (powers of 1024), as
    every size in branchline.toml is read (`sizes.parse_size`), at least 1 KB."""
    try:
        size = sizes.parse_size(value, percent=False).bytes or 0
    except ValueError:
        raise _invalid(f"expected a size, got {_describe(value)}", _SIZE_HINT) from None
    if size < 1024:
        raise _invalid(f"a size of at least 1KB is needed, got {_describe(value)}", _SIZE_HINT)
    return size


Size = Annotated[int, BeforeValidator(parse_size)]


class LimitsConfig(_Model):
    """`[limits]`: a step's log keeps its first and last `step_log / 2` bytes (the rest
    is dropped, and a line says how much); a step with no deadline of its own ends
    after `step_timeout`."""

    step_log: Size = 5 * 1024**2
    step_timeout: Duration = timedelta(hours=1)

    @field_validator("step_timeout")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise _invalid("must be longer than zero", 'write for example `{key} = "1h"`')
        return value


class RetentionConfig(_Model):
    """`[retention]`: finished runs older than `runs` are deleted with everything they
    hold; their logs may go sooner (`logs`), their artifacts sooner still (`artifacts`).
    A running run and the runs of production's live release are always kept."""

    runs: Duration = timedelta(days=30)
    logs: Duration = timedelta(days=30)
    artifacts: Duration = timedelta(days=30)


def human_duration(seconds: float) -> str:
    """A deadline as people read it in a message: 10m0s, 1h0m0s, 2.5s."""
    if seconds < 60:
        return f"{seconds:g}s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes}m{secs}s" if hours else f"{minutes}m{secs}s"
