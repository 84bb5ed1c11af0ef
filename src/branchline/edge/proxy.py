"""The edge: one listening port that routes HTTP by Host to local service processes.

`api-preview-8.<zone>` goes to the process that currently serves `api` in
`preview-8`, `api.<zone>` to production's. The route table lives in the store
(`branchline.routes`); the edge keeps it in memory and never reads the database per
request: a task holds a dedicated connection that LISTENs on `branchline_routes`
and reloads the table when a change is notified (the store sends one in the same
transaction as every change), and at least every `refresh_interval` seconds as a
safety net. When that connection drops, the edge keeps serving the last table and
reconnects with backoff.

A request reads the table once, when its head has arrived: it finishes on the
upstream it started with even when the route moves meanwhile, and the next request
on the same client connection follows the new route. Upstream connections are
pooled per (host, port), so a request never rides a kept-alive connection to the
process a route just left (see `pool.py`). That is what lets a deploy switch
routes under load without a failed request: start the new process, wait until it
is healthy, `set_route`, wait a drain period, stop the old one.

HTTP/1.1 on both sides (`http.py`): bodies streamed both ways in pieces (small ones
in one write), keep-alive to clients and to upstreams, `X-Forwarded-For` appended,
`X-Forwarded-Proto` and `X-Forwarded-Host` set, the client's Host kept,
hop-by-hop headers dropped, WebSocket upgrades spliced byte for byte. The edge
answers itself with a 404 page listing the live environments for an unknown host
(a 200 index for its own address), 502 when no process answers, 504 when the
service is too slow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import psycopg

from branchline import ports
from branchline.edge import pages
from branchline.edge.http import (
    HOP_BY_HOP,
    LAST_CHUNK,
    MAX_HEAD,
    PIECE,
    Head,
    IncompleteBodyError,
    ProtocolError,
    Request,
    Response,
    body_pieces,
    chunk,
    forwarded_headers,
    parse_request,
    parse_response,
    read_head,
)
from branchline.edge.pool import Pool, Upstream
from branchline.errors import StoreError
from branchline.masking import mask_url
from branchline.store import Store
from branchline.store import routes as route_rows
from branchline.store.routes import RouteRow, normalize_host

log = logging.getLogger(__name__)

APPLICATION_NAME = "branchline-edge"
"""The listen connection's application_name (what pg_stat_activity shows)."""
MAX_RECONNECT_DELAY = 5.0
HOUSEKEEPING_INTERVAL = 1.0
SMALL_BODY = PIECE
"""Bodies up to this size are read whole and sent with their head in one write."""
FRESH_FOR_STREAMS = 1.0
"""A streamed request body (which cannot be replayed) only rides a pooled connection
used within this many seconds; older ones may be closing at the other end."""

_OWN_NAMES = frozenset({"", "localhost", "127.0.0.1", "[::1]", "::1"})
_HTML = b"text/html; charset=utf-8"


class _Client:
    """One client connection: its task, and whether stop() may cut it at once."""

    __slots__ = ("idle", "idle_since", "task", "tunnel", "writer")

    def __init__(self, task: asyncio.Task[Any], writer: asyncio.StreamWriter) -> None:
        self.task = task
        self.writer = writer
        self.idle = True
        self.idle_since = 0.0
        self.tunnel = False


class _FailedError(Exception):
    """The exchange failed before a response head reached the client: answer this."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


class EdgeProxy:
    """Routes HTTP by Host on `host:port` (port 0 picks a free one: see `.port` after
    `start`). Construction does no I/O; `start`/`stop` or `async with`."""

    def __init__(
        self,
        store: Store,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        refresh_interval: float = 5.0,
        connect_timeout: float = 5.0,
        upstream_timeout: float = 60.0,
        client_timeout: float = 60.0,
        upstream_idle_timeout: float = 4.0,
        grace: float = 10.0,
    ) -> None:
        self.store = store
        self.host = host
        self.requested_port = port
        self.refresh_interval = refresh_interval
        self.upstream_timeout = upstream_timeout  # to the response head; and body silence
        self.client_timeout = client_timeout  # idle keep-alive; and request body silence
        self.grace = grace  # how long stop() lets in-flight requests finish
        self.routes: Mapping[str, RouteRow] = {}
        self.route_list: tuple[RouteRow, ...] = ()
        self.refreshes = 0  # how many times the route table was loaded
        self.requests = 0  # request heads received
        self.pool = Pool(connect_timeout=connect_timeout, idle_timeout=upstream_idle_timeout)
        # The edge's own address (an IPv6 one as a Host header spells it, in brackets);
        # bound to every interface, any address of the machine is its own.
        self._own_names = _OWN_NAMES | {normalize_host(host), f"[{host}]" if ":" in host else host}
        self._any_address_is_own = ports.is_every_interface(host)
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._stopping = False
        self._clients: set[_Client] = set()
        self._closing: set[asyncio.StreamWriter] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._listen_conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        self._lock = asyncio.Lock()

    # -- lifecycle ----------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the edge proxy is not started")
        return self._port

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def url(self) -> str:
        return pages.route_url(self.host, self.port)

    def url_for(self, host: str) -> str:
        """Where a browser reaches `host` through this edge."""
        return pages.route_url(host, self.port)

    async def start(self) -> EdgeProxy:
        """Load the routes, bind, and serve. Idempotent. StoreError when the state
        database cannot be reached, OSError when the port is taken."""
        async with self._lock:
            if self._server is not None:
                return self
            self._stopping = False
            self.pool.reopen()
            conn = await self._connect_listener()
            try:
                await self._load(conn)
                self._server = await asyncio.start_server(
                    self._serve_client,
                    self.host,
                    self.requested_port,
                    limit=MAX_HEAD,
                    backlog=1024,
                    reuse_address=True,
                )
            except BaseException:
                await conn.close()
                raise
            self._port = int(self._server.sockets[0].getsockname()[1])
            self._listen_conn = conn
            self._tasks = [
                asyncio.create_task(self._listen(), name=f"branchline-edge-listen-{self._port}"),
                asyncio.create_task(self._housekeep(), name=f"branchline-edge-sweep-{self._port}"),
            ]
            return self

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, cut idle and WebSocket connections, let in-flight requests
        finish (at most `grace` seconds, then cut them), close every upstream
        connection and the listen connection. Idempotent."""
        async with self._lock:
            server = self._server
            if server is None:
                return
            self._server = None
            self._stopping = True
            grace = self.grace if grace is None else grace
            loop = asyncio.get_running_loop()
            deadline = loop.time() + grace
            server.close()
            for task in self._tasks:
                task.cancel()
            for client in list(self._clients):
                if client.idle or client.tunnel:
                    client.task.cancel()
            busy = [client.task for client in self._clients]
            if busy:
                _, pending = await asyncio.wait(busy, timeout=grace)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*busy, return_exceptions=True)
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks = []
            await server.wait_closed()
            for writer in list(self._closing):  # let the last responses flush
                try:
                    async with asyncio.timeout(max(0.05, deadline - loop.time())):
                        await writer.wait_closed()
                except (TimeoutError, OSError):
                    writer.transport.abort()
            self._closing.clear()
            await self.pool.close()
            if self._listen_conn is not None:
                with contextlib.suppress(psycopg.Error):
                    await self._listen_conn.close()
                self._listen_conn = None

    async def __aenter__(self) -> EdgeProxy:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- the route table --------------------------------------------------------------

    async def refresh(self) -> None:
        """Reload the routes now (the listener does this by itself on NOTIFY)."""
        async with self.store.connect() as conn:
            await self._load(conn)

    async def _load(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        rows = await route_rows.list_routes(conn)
        # One assignment: a request sees the old table or the new one, never a mix.
        self.routes = {normalize_host(row.host): row for row in rows}
        self.route_list = tuple(rows)
        self.pool.retain({row.upstream for row in rows})
        self.refreshes += 1

    async def _connect_listener(self) -> psycopg.AsyncConnection[tuple[object, ...]]:
        url = self.store.url
        try:
            conn = await psycopg.AsyncConnection.connect(
                url, autocommit=True, application_name=APPLICATION_NAME, connect_timeout=10
            )
        except psycopg.OperationalError as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise StoreError(
                f"the edge cannot reach the state database at {mask_url(url)}: {first}"
            ) from exc
        try:
            # LISTEN before the first read: no change between the two slips by.
            await conn.execute(f"LISTEN {route_rows.CHANNEL}")
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _listen(self) -> None:
        """Reload on NOTIFY and every `refresh_interval` seconds; reconnect (serving
        the last table meanwhile) when the connection drops."""
        delay = 0.1
        while True:
            conn = self._listen_conn
            try:
                if conn is None or conn.closed:
                    conn = await self._connect_listener()
                    self._listen_conn = conn
                    await self._load(conn)
                    delay = 0.1
                async for _ in conn.notifies(timeout=self.refresh_interval, stop_after=1):
                    pass
                await self._load(conn)
            except (psycopg.Error, StoreError, OSError) as exc:
                log.warning("edge: lost the state database (%s); retrying", exc)
                if conn is not None:
                    with contextlib.suppress(psycopg.Error, OSError):
                        await conn.close()
                self._listen_conn = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RECONNECT_DELAY)

    async def _housekeep(self) -> None:
        """Close idle upstream connections, and client connections idle for longer
        than `client_timeout` (cheaper than a timer per request)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(HOUSEKEEPING_INTERVAL, self.client_timeout / 2))
            self.pool.sweep()
            cutoff = loop.time() - self.client_timeout
            for client in list(self._clients):
                if client.idle and client.idle_since < cutoff:
                    client.writer.close()  # the head read ends: the connection is done

    # -- client connections ---------------------------------------------------------

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        client = _Client(task, writer)
        self._clients.add(client)
        peer = writer.get_extra_info("peername")
        ip = (str(peer[0]) if isinstance(peer, tuple) else "unknown").encode()
        clock = asyncio.get_running_loop().time
        try:
            while not self._stopping:
                client.idle = True
                client.idle_since = clock()
                try:
                    raw = await read_head(reader)  # `_housekeep` enforces client_timeout
                except ProtocolError as exc:
                    await self._answer(writer, exc.status, pages.error(exc.status, str(exc)))
                    return
                client.idle = False
                if not await self._exchange(client, reader, writer, raw, ip):
                    return
        except (asyncio.IncompleteReadError, TimeoutError, OSError):
            pass  # the client left, or stayed silent too long
        except Exception:
            log.exception("edge: a client connection failed")
        finally:
            self._clients.discard(client)
            if self._stopping:
                self._closing.add(writer)
            writer.close()

    async def _exchange(
        self,
        client: _Client,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        raw: bytes,
        ip: bytes,
    ) -> bool:
        """Serve one request; whether the client connection stays open."""
        self.requests += 1
        try:
            request = parse_request(raw)
        except ProtocolError as exc:
            await self._answer(writer, exc.status, pages.error(exc.status, str(exc)))
            return False
        host = normalize_host(request.authority.decode("latin-1")) if request.authority else ""
        route = self.routes.get(host)  # read once: this request stays on this upstream
        if route is None:
            return await self._local(request, writer, host)
        if request.websocket:
            return await self._tunnel(client, request, route, reader, writer, ip)
        return await self._forward(request, route, reader, writer, ip)

    async def _local(self, request: Request, writer: asyncio.StreamWriter, host: str) -> bool:
        own = host in self._own_names or (
            self._any_address_is_own and ports.is_ip_address(host.strip("[]"))
        )
        body = pages.index(self.route_list, port=self.port or 0, unknown_host=None if own else host)
        keep = request.head.keep_alive and not request.has_body
        await self._answer(
            writer,
            200 if own else 404,
            body,
            keep=keep,
            http11=request.head.http11,
            head_only=request.method == b"HEAD",
        )
        return keep

    async def _answer(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        *,
        keep: bool = False,
        http11: bool = True,
        head_only: bool = False,
    ) -> None:
        keep = keep and not self._stopping
        lines = [
            b"HTTP/1.1 %d %s\r\n" % (status, pages.REASONS.get(status, "Error").encode()),
            b"Content-Type: %s\r\nContent-Length: %d\r\n" % (_HTML, len(body)),
            b"Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n",
        ]
        if not keep:
            lines.append(b"Connection: close\r\n")
        elif not http11:
            lines.append(b"Connection: keep-alive\r\n")
        lines.append(b"\r\n")
        if not head_only:
            lines.append(body)
        writer.write(b"".join(lines))
        await writer.drain()

    def _upstream_head(self, request: Request, ip: bytes, *, upgrade: bool = False) -> bytes:
        head = request.head
        drop = _DROP | head.connection if head.connection else _DROP
        lines = [
            b"%s %s HTTP/1.1\r\nHost: %s\r\n"
            % (request.method, request.target, request.authority or b"")
        ]
        forwarded_for: list[bytes] = []
        for name, lname, value in head.headers:
            if lname in drop:
                if lname == b"x-forwarded-for":
                    forwarded_for.append(value)
                continue
            lines.append(b"%s: %s\r\n" % (name, value))
        forwarded_for.append(ip)
        lines.append(
            b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: %s\r\n"
            % (b", ".join(forwarded_for), request.authority or b"")
        )
        if head.chunked:
            lines.append(b"Transfer-Encoding: chunked\r\n")
        elif head.content_length is not None:
            lines.append(b"Content-Length: %d\r\n" % head.content_length)
        if upgrade:
            lines.append(b"Connection: Upgrade\r\nUpgrade: %s\r\n" % head.noted[b"upgrade"])
        lines.append(b"\r\n")
        return b"".join(lines)

    # -- proxying ------------------------------------------------------------------

    async def _forward(
        self,
        request: Request,
        route: RouteRow,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        ip: bytes,
    ) -> bool:
        head = request.head
        body = b""
        length = head.content_length or 0
        # A body that is large, chunked or waits for 100 Continue is streamed (and
        # cannot be sent twice); a small one is read whole and sent with the head.
        streamed = head.chunked or length > SMALL_BODY or (length > 0 and b"expect" in head.noted)
        if length and not streamed:
            try:
                async with asyncio.timeout(self.client_timeout):
                    body = await reader.readexactly(length)
            except (asyncio.IncompleteReadError, TimeoutError):
                return False
        out = self._upstream_head(request, ip) + body
        pump: asyncio.Task[None] | None = None
        attempts = 1 if streamed or request.method not in _IDEMPOTENT else 2
        for attempt in range(attempts):
            up: Upstream | None = None
            try:
                up = await self._acquire(route, fresh=attempt > 0, streamed=streamed)
                up.writer.write(out)
                if streamed:
                    pump = asyncio.create_task(self._pump(reader, up, head))
                response, small = await self._response_head(request, route, up, writer)
            except _FailedError as failed:
                if up is not None:
                    self.pool.release(up, reusable=False)
                    if up.reused and up.retryable and attempt + 1 < attempts:
                        # A kept-alive connection the upstream closed as the request
                        # went out: it never arrived, so it is safe to send it again.
                        continue
                # The connection may stay open only if the request body was consumed.
                keep = head.keep_alive and (not streamed or _finish(pump))
                await self._answer(
                    writer,
                    failed.status,
                    failed.body,
                    keep=keep,
                    http11=head.http11,
                    head_only=request.method == b"HEAD",
                )
                return keep and not self._stopping
            except BaseException:  # cancelled by stop(), or a client gone mid-way
                if up is not None:
                    self.pool.release(up, reusable=False)
                _finish(pump)
                raise
            return await self._relay(request, route, response, small, up, writer, pump)
        raise AssertionError("unreachable: the last attempt returns")

    async def _acquire(self, route: RouteRow, *, fresh: bool, streamed: bool) -> Upstream:
        try:
            if fresh:
                return await self.pool.connect(route.upstream)
            return await self.pool.acquire(
                route.upstream, max_idle_age=FRESH_FOR_STREAMS if streamed else None
            )
        except TimeoutError:
            raise _FailedError(504, pages.timeout(route, self.pool.connect_timeout)) from None
        except OSError:
            raise _FailedError(502, pages.no_process(route)) from None

    async def _pump(self, reader: asyncio.StreamReader, up: Upstream, head: Head) -> None:
        """Stream the request body to the upstream. When the client's body breaks off,
        the upstream connection is cut, so that the response read ends too."""
        writer = up.writer
        try:
            async for piece in body_pieces(
                reader,
                length=head.content_length,
                chunked=head.chunked,
                timeout=self.client_timeout,
            ):
                writer.write(chunk(piece) if head.chunked else piece)
                await writer.drain()
            if head.chunked:
                writer.write(LAST_CHUNK)
                await writer.drain()
        except (IncompleteBodyError, ProtocolError, OSError):
            writer.transport.abort()
            raise

    async def _response_head(
        self,
        request: Request,
        route: RouteRow,
        up: Upstream,
        writer: asyncio.StreamWriter,
    ) -> tuple[Response, bytes | None]:
        """The final response head from `up` and, when it is small and framed by a
        length, its body; interim (1xx) heads are passed on to HTTP/1.1 clients.
        _FailedError when there is nothing to relay."""
        up.retryable = True
        try:
            while True:
                async with asyncio.timeout(self.upstream_timeout):
                    raw = await read_head(up.reader)
                    response = parse_response(raw)
                    length = response.head.content_length
                    if response.status >= 200:
                        small = (
                            length is not None
                            and length <= SMALL_BODY
                            and not response.head.chunked
                            and not response.head.other_coding
                            and response.has_body(request.method)
                        )
                        if not small:
                            return response, None
                        up.retryable = False
                        return response, await up.reader.readexactly(length or 0)
                if response.status == 101 and request.websocket:
                    return response, None
                up.retryable = False
                if response.status == 101:
                    raise ProtocolError("an upgrade nobody asked for", 502)
                if request.head.http11:
                    writer.write(
                        b"HTTP/1.1 %d %s\r\n%s\r\n"
                        % (
                            response.status,
                            response.reason,
                            b"".join(forwarded_headers(response.head)),
                        )
                    )
                    await writer.drain()
        except TimeoutError:
            raise _FailedError(504, pages.timeout(route, self.upstream_timeout)) from None
        except asyncio.IncompleteReadError as exc:
            up.retryable = up.retryable and not exc.partial
            what = "closed the connection without an answer" if up.retryable else "broke off"
            raise _FailedError(502, pages.bad_upstream(route, f"The process {what}.")) from None
        except ProtocolError as exc:
            up.retryable = False
            raise _FailedError(
                502, pages.bad_upstream(route, f"Its answer was malformed: {exc}.")
            ) from None
        except OSError:
            raise _FailedError(
                502, pages.bad_upstream(route, "The connection to the process broke.")
            ) from None

    async def _relay(
        self,
        request: Request,
        route: RouteRow,
        response: Response,
        small: bytes | None,
        up: Upstream,
        writer: asyncio.StreamWriter,
        pump: asyncio.Task[None] | None,
    ) -> bool:
        """Send the response head and stream its body; whether the client connection
        stays open. The upstream connection goes back to the pool when it can."""
        head = response.head
        client11 = request.head.http11
        keep = request.head.keep_alive and not self._stopping
        if pump is not None and not pump.done():
            keep = False  # the upstream answered before it had the whole body
        length = head.content_length
        if not response.has_body(request.method):
            mode = "none"
        elif head.chunked:
            mode = "chunked"
        elif length is not None and not head.other_coding:
            mode = "length"
        else:
            mode = "eof"
        reusable = head.keep_alive and mode != "eof"
        lines = [b"HTTP/1.1 %d %s\r\n" % (response.status, response.reason)]
        lines.extend(forwarded_headers(head))
        if length is not None and mode in ("length", "none") and not head.chunked:
            lines.append(b"Content-Length: %d\r\n" % length)
        rechunk = False
        if mode in ("chunked", "eof"):
            if client11:
                lines.append(b"Transfer-Encoding: chunked\r\n")
                rechunk = True
            else:
                keep = False  # HTTP/1.0: the end of the body is the end of the connection
        if not keep:
            lines.append(b"Connection: close\r\n")
        elif not client11:
            lines.append(b"Connection: keep-alive\r\n")
        lines.append(b"\r\n")
        out = b"".join(lines)
        try:
            if mode == "none":
                writer.write(out)
            elif small is not None:
                writer.write(out + small)
            else:
                writer.write(out)
                async for piece in body_pieces(
                    up.reader,
                    length=length if mode == "length" else None,
                    chunked=mode == "chunked",
                    timeout=self.upstream_timeout,
                ):
                    writer.write(chunk(piece) if rechunk else piece)
                    await writer.drain()
                if rechunk:
                    writer.write(LAST_CHUNK)
            await writer.drain()
        except (IncompleteBodyError, ProtocolError):
            # The head is out: all the client can be told is a connection cut short.
            self.pool.release(up, reusable=False)
            _finish(pump)
            writer.transport.abort()
            return False
        except BaseException:
            self.pool.release(up, reusable=False)
            _finish(pump)
            raise
        if pump is not None:
            if not pump.done():
                await asyncio.sleep(0)
            if not _finish(pump):
                reusable = keep = False
        self.pool.release(up, reusable=reusable)
        return keep and not self._stopping

    # -- WebSocket -------------------------------------------------------------------

    async def _tunnel(
        self,
        client: _Client,
        request: Request,
        route: RouteRow,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        ip: bytes,
    ) -> bool:
        """Pass the upgrade to the upstream on a connection of its own; on 101, splice
        bytes both ways until either side closes."""
        try:
            up = await self._acquire(route, fresh=True, streamed=True)
        except _FailedError as failed:
            await self._answer(writer, failed.status, failed.body, keep=False)
            return False
        try:
            up.writer.write(self._upstream_head(request, ip, upgrade=True))
            response, small = await self._response_head(request, route, up, writer)
        except _FailedError as failed:
            self.pool.release(up, reusable=False)
            await self._answer(writer, failed.status, failed.body, keep=False)
            return False
        except BaseException:
            self.pool.release(up, reusable=False)
            raise
        if response.status != 101:  # refused: an ordinary answer
            await self._relay(request, route, response, small, up, writer, None)
            return False
        head = response.head
        writer.write(
            b"HTTP/1.1 101 %s\r\n%sConnection: Upgrade\r\nUpgrade: %s\r\n\r\n"
            % (
                response.reason,
                b"".join(forwarded_headers(head)),
                head.noted.get(b"upgrade", b"websocket"),
            )
        )
        client.tunnel = True
        try:
            await writer.drain()
            await _splice(reader, writer, up)
        finally:
            self.pool.release(up, reusable=False)
        return False


_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
_DROP = HOP_BY_HOP | {b"host", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}
"""Request headers not passed upstream as received (the edge writes its own)."""


def _finish(pump: asyncio.Task[None] | None) -> bool:
    """Whether the request body pump (if any) completed; cancelled when it has not."""
    if pump is None:
        return True
    if not pump.done():
        pump.cancel()
        return False
    return not pump.cancelled() and pump.exception() is None


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    while True:
        data = await src.read(PIECE)
        if not data:
            return
        dst.write(data)
        await dst.drain()


async def _splice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Upstream) -> None:
    tasks = [
        asyncio.create_task(_pipe(reader, up.writer)),
        asyncio.create_task(_pipe(up.reader, writer)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
