"""A local branch's lock on this machine's disk, and threads that finish before it
is let go.

The advisory lock in the state database guards a branch's row, but Postgres drops
it when that database dies, while a copy or a server start already under way goes
on in its thread. A retry could then take the lock and remove a cluster that is
starting, leaving its postmaster running with no files behind it. A cluster's files
are therefore also guarded by a file lock, which nothing but the holder's end
releases, and the work done under it runs to its end before the lock is let go,
also when the caller is cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")
_POLL_LONGEST = 0.2  # seconds between tries while another holder works


@contextlib.asynccontextmanager
async def disk_lock(path: Path, *, wait: bool = True) -> AsyncIterator[bool]:
    """Hold the file lock `path` (made if missing); yields False at once when `wait`
    is off and someone else holds it. Polled, so it never blocks the event loop and
    a waiter can be cancelled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        delay = 0.01
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait:
                    yield False
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, _POLL_LONGEST)
        yield True
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


async def finish_in_thread(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """`asyncio.to_thread`, except that a cancelled caller still waits for the thread
    to end before the cancellation goes on: the locks it holds are let go only after
    the disk work they guard is over."""
    work = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        while not work.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({work})
        if not work.cancelled():
            work.exception()  # the caller is gone; its failure is not worth a warning
        raise
