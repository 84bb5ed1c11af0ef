"""A step's log cap and the packing of lines into rows, without a database."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from branchline.engine.logcap import CHUNK_BYTES, StepLogCap, chunked, line_size

AT = datetime(2026, 1, 1, tzinfo=UTC)


def test_under_the_cap_everything_is_stored_at_once() -> None:
    cap: StepLogCap[str] = StepLogCap(1024)
    assert all(cap.admit(f"line {i}", line_size(f"line {i}")) for i in range(10))
    assert cap.notice() is None and cap.held() == []


@given(st.lists(st.text(max_size=300), max_size=400), st.integers(1024, 8192))
def test_head_and_tail_stay_within_the_cap_and_the_drop_is_counted(
    lines: list[str], size: int
) -> None:
    cap: StepLogCap[str] = StepLogCap(size)
    stored = [line for line in lines if cap.admit(line, line_size(line))]
    held = cap.held()
    kept = stored + held
    assert sum(map(line_size, kept)) <= size
    assert sum(map(line_size, kept)) + cap.dropped_bytes == sum(map(line_size, lines))
    assert kept == lines[: len(stored)] + lines[len(lines) - len(held) :]  # head, then tail
    if cap.dropped_bytes:
        assert f"… {cap.dropped_bytes} bytes dropped …" in (cap.notice() or "")


def test_rows_hold_consecutive_lines_of_one_step_and_stream() -> None:
    lines = [(1, 2, 3, "stdout", f"o{i}", AT) for i in range(3)]
    lines += [(1, 2, 3, "stderr", "e", AT), (1, 2, 4, "stdout", "next", AT)]
    rows = chunked(lines)
    assert [(r[2], r[3], r[4]) for r in rows] == [
        (3, "stdout", "o0\no1\no2"), (3, "stderr", "e"), (4, "stdout", "next"),
    ]  # fmt: skip


def test_a_row_holds_at_most_chunk_bytes() -> None:
    line = "x" * 1000
    rows = chunked([(1, 1, 1, "stdout", line, AT)] * 200)
    assert all(len(r[4]) <= CHUNK_BYTES for r in rows)
    assert sum(r[4].count("x") for r in rows) == 200_000
    assert len(rows) == -(-200 // (CHUNK_BYTES // 1001))  # full rows, then the rest
