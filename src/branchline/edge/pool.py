"""Keep-alive connections to upstream processes, pooled per (host, port).

A route switch changes the key a request looks up, so a new request never takes a
connection to the previous process; idle connections to upstreams no route points
at any more are closed when the route table changes (`retain`), and every idle
connection is closed after `idle_timeout` (shorter than the keep-alive timeouts of
common servers, so the edge seldom sends on a connection the other side is closing).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection

from branchline.edge.http import MAX_HEAD

Key = tuple[str, int]


class Upstream:
    """One connection to an upstream process."""

    __slots__ = ("key", "last_used", "reader", "retryable", "reused", "writer")

    def __init__(self, key: Key, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.key = key
        self.reader = reader
        self.writer = writer
        self.last_used = 0.0
        self.reused = False  # taken from the pool rather than just opened
        self.retryable = False  # failed before the upstream could have seen the request

    def usable(self) -> bool:
        return not (self.writer.is_closing() or self.reader.at_eof() or self.reader.exception())

    def close(self) -> None:
        self.writer.close()


class Pool:
    def __init__(
        self,
        *,
        connect_timeout: float = 5.0,
        idle_timeout: float = 4.0,
        max_idle: int = 64,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle  # per upstream
        self.opened = 0  # connections opened so far (for tests and stats)
        self._idle: dict[Key, list[Upstream]] = {}
        self._open: set[Upstream] = set()
        self._live: frozenset[Key] | None = None  # None: keep every upstream
        self._closed = False

    async def acquire(self, key: Key, *, max_idle_age: float | None = None) -> Upstream:
        """An idle connection to `key` (one used within `max_idle_age` seconds, when
        given), else a new one. OSError when it cannot connect, TimeoutError when the
        connection takes longer than `connect_timeout`."""
        idle = self._idle.get(key)
        if idle:
            loop = asyncio.get_running_loop()
            age = (
                self.idle_timeout if max_idle_age is None else min(self.idle_timeout, max_idle_age)
            )
            oldest = loop.time() - age
            while idle:
                conn = idle.pop()
                if conn.last_used >= oldest and conn.usable():
                    conn.reused = True
                    return conn
                self._discard(conn)
        return await self.connect(key)

    async def connect(self, key: Key) -> Upstream:
        """A new connection to `key`, never pooled before."""
        async with asyncio.timeout(self.connect_timeout):
            reader, writer = await asyncio.open_connection(key[0], key[1], limit=MAX_HEAD)
        conn = Upstream(key, reader, writer)
        self.opened += 1
        self._open.add(conn)
        return conn

    def release(self, conn: Upstream, *, reusable: bool) -> None:
        """Give `conn` back after a complete exchange (`reusable`), else close it."""
        key = conn.key
        if (
            not reusable
            or self._closed
            or (self._live is not None and key not in self._live)
            or not conn.usable()
        ):
            self._discard(conn)
            return
        idle = self._idle.setdefault(key, [])
        if len(idle) >= self.max_idle:
            self._discard(conn)
            return
        conn.last_used = asyncio.get_running_loop().time()
        idle.append(conn)

    def _discard(self, conn: Upstream) -> None:
        self._open.discard(conn)
        conn.close()

    def retain(self, keys: Collection[Key]) -> None:
        """Only these upstreams are routed to now: close idle connections to others,
        and close connections to others when they come back."""
        self._live = frozenset(keys)
        for key in list(self._idle):
            if key not in self._live:
                for conn in self._idle.pop(key):
                    self._discard(conn)

    def sweep(self) -> None:
        """Close connections idle for longer than `idle_timeout`."""
        oldest = asyncio.get_running_loop().time() - self.idle_timeout
        for key in list(self._idle):
            idle = self._idle[key]
            keep = [c for c in idle if c.last_used >= oldest and c.usable()]
            for conn in idle:
                if conn not in keep:
                    self._discard(conn)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]

    def idle_count(self, key: Key | None = None) -> int:
        if key is not None:
            return len(self._idle.get(key, ()))
        return sum(len(v) for v in self._idle.values())

    async def close(self) -> None:
        """Close every connection, idle or not (in-flight exchanges are over by now)."""
        self._closed = True
        self._idle.clear()
        conns = list(self._open)
        self._open.clear()
        for conn in conns:
            conn.close()
        for conn in conns:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.writer.wait_closed(), 1.0)

    def reopen(self) -> None:
        self._closed = False
        self._live = None
