"""Reading a run's logs, and following them live (LISTEN/NOTIFY, not polling)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from branchline.store import Store
from branchline.store import runs as rows

FINISHED = ("success", "failure", "cancelled")


async def read(
    store: Store, run_id: int, *, job_id: int | None = None, follow: bool = False,
    after: int = 0,
) -> AsyncIterator[rows.LogRow]:  # fmt: skip
    """Every stored line of the run (or one job) after line id `after`, then, with
    `follow`, new lines as workers store them, until the run is over."""
    async with store.connect() as conn, store.connect(dedicated=True) as listener:
        if follow:
            await listener.execute("LISTEN branchline_logs")
        last = after
        while True:
            batch = await rows.logs_after(conn, run_id, last, job_id)
            for line in batch:
                last = line.id
                yield line
            if batch:
                continue
            run = await rows.get_run(conn, run_id)
            if not follow or run is None or run.status in FINISHED:
                # One more look: lines stored just before the run ended.
                for line in await rows.logs_after(conn, run_id, last, job_id):
                    yield line
                return
            # Wake on the next notification for any run, or after a second at most.
            async for _ in listener.notifies(timeout=1.0, stop_after=1):
                pass
