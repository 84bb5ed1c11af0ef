"""Advisory locks: one change of a named thing at a time, across processes and
machines sharing the state database; released by Postgres if the holder dies."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import psycopg

from branchline.store.queries import Conn
from branchline.store.state import Store


@contextlib.asynccontextmanager
async def held(store: Store, key: str) -> AsyncIterator[Conn]:
    """Wait for the lock `key`; yields the connection that holds it."""
    async with store.connect() as conn:
        await conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (key,))
        try:
            yield conn
        finally:
            with contextlib.suppress(psycopg.Error):
                await conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))


@contextlib.asynccontextmanager
async def if_free(store: Store, key: str) -> AsyncIterator[Conn | None]:
    """The lock `key` if nobody holds it, else None (someone is working on it)."""
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
