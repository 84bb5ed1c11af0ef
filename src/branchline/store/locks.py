"""Advisory locks: one change of a named thing at a time, across processes and
machines sharing the state database; released by Postgres if the holder dies.

Postgres also releases one when the state database dies or cuts the holder's
connection, while the holder's work goes on. A lock that guards things on this
machine (a cluster's files, a service's processes) is therefore also taken as a
file lock in `here`, which only the holder's own end lets go."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg

from branchline.locking import disk_lock
from branchline.store.queries import Conn
from branchline.store.state import Store


@contextlib.asynccontextmanager
async def held(store: Store, key: str, *, here: Path | None = None) -> AsyncIterator[Conn]:
    """Wait for the lock `key`; yields the connection that holds it."""
    async with _on_disk(key, here, wait=True), store.connect() as conn:
        await conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (key,))
        try:
            yield conn
        finally:
            with contextlib.suppress(psycopg.Error):
                await conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))


@contextlib.asynccontextmanager
async def if_free(
    store: Store, key: str, *, here: Path | None = None
) -> AsyncIterator[Conn | None]:
    """The lock `key` if nobody holds it, else None (someone is working on it)."""
    async with _on_disk(key, here, wait=False) as free:
        if not free:
            yield None
            return
        async with store.connect() as conn:
            cur = await conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (key,))
            row = await cur.fetchone()
            if row is None or row[0] is not True:
                yield None
                return
            try:
                yield conn
            finally:
                with contextlib.suppress(psycopg.Error):
                    await conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))


@contextlib.asynccontextmanager
async def _on_disk(key: str, here: Path | None, *, wait: bool) -> AsyncIterator[bool]:
    if here is None:
        yield True
        return
    name = hashlib.sha256(key.encode()).hexdigest()[:24]  # a key may hold any character
    async with disk_lock(here / f"{name}.lock", wait=wait) as free:
        yield free
