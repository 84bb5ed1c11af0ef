"""A branch's disk lock outlives the state database, and work under it ends before
it is let go; a cluster is never removed while a start of it is under way."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from pathlib import Path

from branchline.locking import disk_lock, finish_in_thread
from branchline.postgres import Cluster


def _hold_in_another_process(path: str, held: threading.Event, release: float) -> None:
    async def hold() -> None:
        async with disk_lock(Path(path)) as got:
            assert got
            held.set()
            await asyncio.sleep(release)

    asyncio.run(hold())


def test_a_held_lock_is_busy_for_another_process(tmp_path: Path) -> None:
    path = tmp_path / "locks" / "branch-pr-1.lock"
    held = multiprocessing.get_context("fork").Event()
    other = multiprocessing.get_context("fork").Process(
        target=_hold_in_another_process, args=(str(path), held, 0.6)
    )
    other.start()
    try:
        assert held.wait(10)

        async def try_and_wait() -> tuple[bool, float]:
            async with disk_lock(path, wait=False) as free:
                busy = not free
            began = time.monotonic()
            async with disk_lock(path) as got:
                assert got
            return busy, time.monotonic() - began

        busy, waited = asyncio.run(try_and_wait())
        assert busy, "the lock another process holds was taken"
        assert waited > 0.2, "waiting for the lock returned before its holder let it go"
    finally:
        other.join(10)


def test_a_cancelled_caller_waits_for_its_thread_before_letting_go(tmp_path: Path) -> None:
    path = tmp_path / "branch-pr-2.lock"
    finished: list[float] = []

    def disk_work() -> None:
        time.sleep(0.4)
        finished.append(time.monotonic())

    async def scenario() -> float:
        async def holder() -> None:
            async with disk_lock(path):
                await finish_in_thread(disk_work)

        task = asyncio.create_task(holder())
        await asyncio.sleep(0.1)
        task.cancel()
        async with disk_lock(path):  # the next holder: only once the work is over
            return time.monotonic()

    next_holder_began = asyncio.run(scenario())
    assert finished, "the cancelled work never finished"
    assert next_holder_began >= finished[0], "the lock was let go while its work still ran"


def test_finish_in_thread_returns_and_raises_like_to_thread() -> None:
    assert asyncio.run(finish_in_thread(sum, [1, 2, 3])) == 6

    def fails() -> None:
        raise ValueError("no")

    try:
        asyncio.run(finish_in_thread(fails))
    except ValueError as exc:
        assert str(exc) == "no"
    else:
        raise AssertionError("the thread's error was lost")


def test_destroy_waits_for_a_start_under_way(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "branch")
    cluster.home.mkdir()
    done = threading.Event()
    with cluster._start_lock():  # a start of this cluster, in progress
        destroyer = threading.Thread(target=lambda: (cluster.destroy(), done.set()))
        destroyer.start()
        assert not done.wait(0.3), "the cluster was removed while it was starting"
        assert cluster.home.exists()
    destroyer.join(10)
    assert done.is_set() and not cluster.home.exists()
