"""A step's log within a cap: its first half kept as it comes, then only its last half
(a bounded window in memory), and a line saying how much was dropped between the two.
Lines are stored several to a row: one row per tiny line cost ~200 bytes of row,
index and WAL per line (100 MB of output made 1.2 million rows and 660 MB of state)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from datetime import datetime
from typing import Generic, TypeVar

from branchline.config.sizes import human_bytes

Entry = TypeVar("Entry")
# (run id, job id, step id, stream, text, at): one line, or a row of several.
Line = tuple[int, int | None, int | None, str, str, datetime]
CHUNK_BYTES = 16 * 1024  # at most this much text in one row (an API page: 1000 rows)
DROPPED = "… {bytes} bytes dropped … ({lines} lines between the first and the last {half} of this step's output; the cap is {cap}: `[limits] step_log`)"  # noqa: E501


class StepLogCap(Generic[Entry]):
    """Decides, line by line, what of one step's output is stored."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.head_left = cap // 2
        self.tail_room = cap - cap // 2
        self.tail: deque[tuple[Entry, int]] = deque()
        self.tail_bytes = 0
        self.dropped_bytes = 0
        self.dropped_lines = 0
        self.overflowing = False

    def admit(self, entry: Entry, size: int) -> bool:
        """True: store `entry` now (the head). False: it is held in the tail window,
        from which older lines fall out, counted as dropped."""
        if not self.overflowing and size <= self.head_left:
            self.head_left -= size
            return True
        self.overflowing = True
        self.tail.append((entry, size))
        self.tail_bytes += size
        while self.tail_bytes > self.tail_room and self.tail:
            _, gone = self.tail.popleft()
            self.tail_bytes -= gone
            self.dropped_bytes += gone
            self.dropped_lines += 1
        return False

    def notice(self) -> str | None:
        """The line that stands for what was dropped (None: nothing was)."""
        if not self.dropped_bytes:
            return None
        return DROPPED.format(
            bytes=self.dropped_bytes, lines=self.dropped_lines,
            half=human_bytes(self.cap // 2), cap=human_bytes(self.cap),
        )  # fmt: skip

    def held(self) -> list[Entry]:
        """The tail window, oldest first (stored when the step ends)."""
        return [entry for entry, _ in self.tail]


def line_size(line: str) -> int:
    return len(line.encode("utf-8", "replace")) + 1  # with its newline


def chunked(
    entries: Iterable[Line],
) -> list[Line]:
    """Consecutive lines of one step and stream joined into rows of at most
    CHUNK_BYTES (a row's `content` is its lines joined by newlines)."""
    rows: list[Line] = []
    lines: list[str] = []
    size = 0
    key: tuple[int, int | None, int | None, str] | None = None
    at = datetime.min
    for run_id, job_id, step_id, stream, line, when in entries:
        this = (run_id, job_id, step_id, stream)
        if key is not None and (this != key or size + len(line) + 1 > CHUNK_BYTES):
            rows.append((*key, "\n".join(lines), at))
            lines, size = [], 0
        if not lines:
            key, at = this, when
        lines.append(line)
        size += len(line) + 1
    if key is not None and lines:
        rows.append((*key, "\n".join(lines), at))
    return rows
