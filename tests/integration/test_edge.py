"""The edge proxy on real sockets (127.0.0.1 only) and real Postgres: routing by
Host to in-process HTTP servers that say which instance answered, forwarded
headers, streamed bodies both ways, keep-alive to upstreams, the 404 index, 502 and
504, WebSocket upgrades, route switches under steady load without a failed request,
refresh on NOTIFY (and without), and a clean stop."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import httpx
import psycopg
import pytest

from branchline.edge import EdgeProxy
from branchline.errors import UsageError
from branchline.postgres import Cluster
from branchline.store import Store
from branchline.store import routes as route_rows
from tests.conftest import eventually
from tests.integration.conftest import store_in

pytestmark = pytest.mark.integration
T = TypeVar("T")
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# -- the state database --------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_store(pg_cluster: Cluster) -> Store:
    """One state database for the module (each test routes its own project's hosts)."""
    return store_in(pg_cluster, "bl_edge")


def run(work: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(work)


def sql(store: Store, query: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with psycopg.connect(store.url, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


class Project:
    """A project's hosts (under `<project>.localhost`) and its routes."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.name = f"p{os.urandom(4).hex()}"
        self.zone = f"{self.name}.localhost"

    def host(self, label: str = "api") -> str:
        return f"{label}.{self.zone}"

    def route(
        self,
        label: str,
        port: int,
        *,
        environment: str = "production",
        service: str = "api",
        deployment_id: int | None = None,
    ) -> route_rows.RouteRow:
        async def go() -> route_rows.RouteRow:
            async with self.store.connect() as conn:
                return await route_rows.set_route(
                    conn,
                    host=self.host(label),
                    project=self.name,
                    environment=environment,
                    service=service,
                    port=port,
                    deployment_id=deployment_id,
                )

        return run(go())

    def clear(self) -> int:
        async def go() -> int:
            async with self.store.connect() as conn:
                return await route_rows.delete_routes(conn, project=self.name)

        return run(go())


@pytest.fixture
def project(shared_store: Store) -> Iterator[Project]:
    proj = Project(shared_store)
    try:
        yield proj
    finally:
        proj.clear()


# -- upstream services ----------------------------------------------------------------


class _UpstreamServer(ThreadingHTTPServer):
    daemon_threads = True
    name = "?"

    def __init__(self) -> None:
        self.connections = 0
        self.requests = 0
        self.gate = threading.Event()
        self.gate_timed_out = False
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        with self._lock:
            self.connections += 1
            self._open.add(conn)
        return conn, addr

    def forget(self, conn: socket.socket) -> None:
        with self._lock:
            self._open.discard(conn)

    def cut_connections(self) -> None:
        """What a process exit does to its connections."""
        with self._lock:
            for conn in self._open:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            self._open.clear()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # connections cut by the tests


class _Handler(BaseHTTPRequestHandler):
    server: _UpstreamServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # head and body are separate writes

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.forget(self.connection)

    # -- helpers

    def _json(self, body: dict[str, Any], status: int = 200, **headers: str) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Upstream", self.server.name)
        for key, value in headers.items():
            self.send_header(key.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(data)

    def _body_pieces(self) -> Iterator[bytes]:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    return
                yield self.rfile.read(size)
                assert self.rfile.read(2) == b"\r\n"
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left:
                data = self.rfile.read(min(left, 65536))
                if not data:
                    raise ConnectionError("short body")
                left -= len(data)
                yield data

    # -- endpoints

    def do_GET(self) -> None:
        with self.server._lock:
            self.server.requests += 1
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/big":
            self._big(int(query.get("mb", "20")), query.get("mode", "length"))
        elif url.path == "/gate":
            self._gate()
        elif url.path == "/slow":
            time.sleep(float(query.get("s", "1")))
            self._json({"name": self.server.name, "slept": True})
        elif url.path == "/ws":
            self._websocket()
        elif url.path == "/hop":
            self.send_response(200)
            self.send_header("Connection", "X-Hop")
            self.send_header("X-Hop", "secret")
            self.send_header("Keep-Alive", "timeout=99")
            self.send_header("X-Kept", "yes")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
        else:
            self._json(
                {
                    "name": self.server.name,
                    "path": self.path,
                    "headers": [[k, v] for k, v in self.headers.items()],
                }
            )

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "12345")
        self.send_header("X-Upstream", self.server.name)
        self.end_headers()

    def do_POST(self) -> None:
        digest = hashlib.sha256()
        length = 0
        for piece in self._body_pieces():
            digest.update(piece)
            length += len(piece)
        self._json(
            {
                "name": self.server.name,
                "sha256": digest.hexdigest(),
                "length": length,
                "te": self.headers.get("Transfer-Encoding"),
                "cl": self.headers.get("Content-Length"),
            }
        )

    def _big(self, mb: int, mode: str) -> None:
        piece = bytes(range(256)) * 256  # 64 KiB
        count = mb * 16
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if mode == "length":
            self.send_header("Content-Length", str(len(piece) * count))
        elif mode == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
        else:  # the end of the body is the end of the connection
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        for i in range(count):
            data = piece[i % 256 :] + piece[: i % 256]
            if mode == "chunked":
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            else:
                self.wfile.write(data)
        if mode == "chunked":
            self.wfile.write(b"0\r\n\r\n")

    def _gate(self) -> None:
        """First bytes, then the rest only once the client has seen them: a proxy that
        buffered the whole body would hold the first bytes back until the gate times out."""
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.write(b"6\r\nfirst.\r\n")
        self.wfile.flush()
        if not self.server.gate.wait(5.0):
            self.server.gate_timed_out = True
        self.wfile.write(b"5\r\nrest.\r\n0\r\n\r\n")

    def _websocket(self) -> None:
        key = self.headers["Sec-WebSocket-Key"]
        if self.headers.get("Upgrade", "").lower() != "websocket" or not key:
            self._json({"error": "not an upgrade"}, 400)
            return
        accept = ws_accept(key)
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.send_header("X-Upstream", self.server.name)
        self.end_headers()
        # Sent at once after the 101: it reaches the edge in the same read as the head.
        self.wfile.write(ws_frame(1, b"hello from " + self.server.name.encode()))
        self.wfile.flush()
        self.close_connection = True
        while True:
            opcode, payload = read_ws_frame(self.rfile.read)
            if opcode == 8:
                self.wfile.write(ws_frame(8, payload))
                return
            self.wfile.write(ws_frame(opcode, payload))
            self.wfile.flush()


class Upstream:
    """An HTTP service on 127.0.0.1 in threads; `name` says which one answered."""

    def __init__(self, name: str) -> None:
        self.server = _UpstreamServer()
        self.server.name = name
        self.name = name
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def connections(self) -> int:
        return self.server.connections

    def stop(self) -> None:
        """Like a process that exits: no more accepts, every connection cut."""
        if self._thread.is_alive():
            self.server.shutdown()
            self._thread.join()
        self.server.server_close()
        self.server.cut_connections()


@pytest.fixture
def upstreams() -> Iterator[Callable[[str], Upstream]]:
    started: list[Upstream] = []

    def make(name: str) -> Upstream:
        upstream = Upstream(name)
        started.append(upstream)
        return upstream

    try:
        yield make
    finally:
        for upstream in started:
            upstream.stop()


# -- the edge, in a thread of its own ------------------------------------------------------


class EdgeThread:
    """An EdgeProxy on an event loop in a background thread; tests talk to it over
    sockets like any client would."""

    def __init__(self, store: Store, **kw: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.edge = EdgeProxy(store, **kw)
        self.call(self.edge.start())

    @property
    def port(self) -> int:
        return self.edge.port

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(self, work: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout)

    def client(self, host: str, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers={"Host": host}, timeout=10.0, **kw)

    def wait_route(self, host: str, port: int | None) -> None:
        """Until the edge routes `host` to `port` (None: not at all)."""

        def check() -> bool | None:
            route = self.edge.routes.get(host)
            found = None if route is None else route.upstream_port
            return True if found == port else None

        eventually(check)

    def leftover_tasks(self) -> set[asyncio.Task[Any]]:
        async def tasks() -> set[asyncio.Task[Any]]:
            await asyncio.sleep(0.05)  # let cancelled helpers unwind
            current = asyncio.current_task()
            return {task for task in asyncio.all_tasks() if task is not current}

        return self.call(tasks())

    def close(self) -> None:
        try:
            if self.loop.is_running():
                self.call(self.edge.stop(grace=2.0))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture
def edge(shared_store: Store) -> Iterator[EdgeThread]:
    # No periodic refresh to speak of: route changes seen here came by NOTIFY.
    runner = EdgeThread(shared_store, refresh_interval=3600)
    try:
        yield runner
    finally:
        runner.close()


def get_json(client: httpx.Client, path: str = "/", **kw: Any) -> dict[str, Any]:
    response = client.get(path, **kw)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# -- the route store ----------------------------------------------------------------------


def test_route_rows_crud_and_validation(shared_store: Store, project: Project) -> None:
    async def go() -> None:
        async with shared_store.connect() as conn:
            row = await route_rows.set_route(
                conn,
                host=f"API.{project.zone}.",
                project=project.name,
                environment="preview-8",
                service="api",
                port=4001,
                deployment_id=7,
            )
            assert row.host == f"api.{project.zone}" and row.upstream == ("127.0.0.1", 4001)
            assert row.deployment_id == 7
            moved = await route_rows.set_route(
                conn,
                host=f"api.{project.zone}",
                project=project.name,
                environment="preview-8",
                service="api",
                port=4002,
            )
            assert moved.upstream_port == 4002 and moved.deployment_id is None
            assert moved.updated_at >= row.updated_at
            got = await route_rows.get_route(conn, f"Api.{project.zone}:8080")
            assert got == moved
            for label, env, service in [
                ("web", "preview-8", "web"),
                ("api-p", "production", "api"),
            ]:
                await route_rows.set_route(
                    conn,
                    host=project.host(label),
                    project=project.name,
                    environment=env,
                    service=service,
                    port=4100,
                )
            listed = await route_rows.list_routes(conn, project.name)
            assert [(r.environment, r.service, r.host) for r in listed] == [
                ("preview-8", "api", project.host("api")),
                ("preview-8", "web", project.host("web")),
                ("production", "api", project.host("api-p")),
            ]
            assert len(await route_rows.list_routes(conn)) >= 3
            assert route_rows.list_all_sync(shared_store.url)[0] in await route_rows.list_routes(
                conn
            )

            # Another project cannot take a host over.
            with pytest.raises(UsageError, match="another project"):
                await route_rows.set_route(
                    conn,
                    host=project.host("api"),
                    project="someone-else",
                    environment="production",
                    service="api",
                    port=1,
                )
            for host in [
                "",
                "a b.localhost",
                "http://x.localhost",
                "x.localhost/p",
                "1.2.3.4",
                "x" * 300,
                "ünï.localhost",
                "a;b.localhost",
                "$(id).localhost",
            ]:
                with pytest.raises(UsageError):
                    await route_rows.set_route(
                        conn,
                        host=host,
                        project=project.name,
                        environment="production",
                        service="api",
                        port=4000,
                    )
            for port in [0, 65536, -1]:
                with pytest.raises(UsageError):
                    await route_rows.set_route(
                        conn,
                        host=project.host("p"),
                        project=project.name,
                        environment="production",
                        service="api",
                        port=port,
                    )
            with pytest.raises(UsageError):
                await route_rows.set_route(
                    conn,
                    host=project.host("e"),
                    project=project.name,
                    environment="staging",
                    service="api",
                    port=4000,
                )

            assert (
                await route_rows.delete_routes(
                    conn, project=project.name, environment="preview-8", service="web"
                )
                == 1
            )
            assert await route_rows.delete_route(conn, f"API-P.{project.zone}.")
            assert not await route_rows.delete_route(conn, project.host("api-p"))
            assert await route_rows.delete_routes(conn, project=project.name) == 1
            assert await route_rows.delete_routes(conn, project=project.name) == 0
            assert await route_rows.list_routes(conn, project.name) == []

    run(go())


# -- routing and headers ------------------------------------------------------------------


def test_routes_by_host(
    edge: EdgeThread, project: Project, upstreams: Callable[[str], Upstream]
) -> None:
    a, b = upstreams("a"), upstreams("b")
    project.route("api", a.port)
    project.route("api-preview-8", b.port, environment="preview-8")
    edge.wait_route(project.host("api"), a.port)
    edge.wait_route(project.host("api-preview-8"), b.port)

    with edge.client(project.host("api")) as client:
        assert get_json(client, "/x?y=1")["name"] == "a"
    with edge.client(project.host("api-preview-8")) as client:
        body = get_json(client, "/deep/path?q=%20")
        assert body["name"] == "b" and body["path"] == "/deep/path?q=%20"
    # Case, a port and a trailing dot in Host do not matter.
    for host in [f"API.{project.zone.upper()}", f"api.{project.zone}.:{edge.port}"]:
        with edge.client(host) as client:
            assert get_json(client)["name"] == "a"
    # HEAD: the length is passed on, no body follows, and the connection stays usable.
    with edge.client(project.host("api")) as client:
        head = client.head("/")
        assert head.status_code == 200 and head.headers["content-length"] == "12345"
        assert head.content == b""
        assert get_json(client)["name"] == "a"


def test_forwarded_headers_and_hop_by_hop(
    edge: EdgeThread, project: Project, upstreams: Callable[[str], Upstream]
) -> None:
    a = upstreams("a")
    host = project.host("api")
    project.route("api", a.port)
    edge.wait_route(host, a.port)
    with edge.client(f"{host}:{edge.port}") as client:
        body = get_json(
            client,
            headers={
                "X-Forwarded-For": "203.0.113.9",
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "evil.example",
                "Connection": "keep-alive, X-Private",
                "X-Private": "hop",
                "Keep-Alive": "timeout=5",
                "Proxy-Authorization": "Basic Zm9vOmJhcg==",
                "TE": "trailers",
                "X-End-To-End": "kept",
            },
        )
    seen = {k.lower(): v for k, v in body["headers"]}
    assert seen["host"] == f"{host}:{edge.port}"  # the original Host, port included
    assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == f"{host}:{edge.port}"
    assert seen["x-end-to-end"] == "kept"
    for hop in ["connection", "x-private", "keep-alive", "proxy-authorization", "te"]:
        assert hop not in seen, hop
    assert [k.lower() for k, _ in body["headers"]].count("host") == 1

    with edge.client(host) as client:
        response = client.get("/hop")
    assert response.text == "ok" and response.headers["x-kept"] == "yes"
    assert "x-hop" not in response.headers and "keep-alive" not in response.headers


# -- bodies ----------------------------------------------------------------------------------


def _expected_big(mb: int) -> str:
    piece = bytes(range(256)) * 256
    digest = hashlib.sha256()
    for i in range(mb * 16):
        digest.update(piece[i % 256 :] + piece[: i % 256])
    return digest.hexdigest()


@pytest.mark.parametrize("mode", ["length", "chunked", "close"])
def test_large_response_streams_intact(
    edge: EdgeThread, project: Project, upstreams: Callable[[str], Upstream], mode: str
) -> None:
    a = upstreams("a")
    project.route("api", a.port)
    edge.wait_route(project.host("api"), a.port)
    mb = 20
    digest = hashlib.sha256()
    size = 0
    with edge.client(project.host("api")) as client:
        with client.stream("GET", f"/big?mb={mb}&mode={mode}") as response:
            assert response.status_code == 200
            if mode == "length":
                assert response.headers["content-length"] == str(mb * 1024 * 1024)
            else:  # re-framed for an HTTP/1.1 client, whatever the upstream did
                assert response.headers["transfer-encoding"] == "chunked"
            for data in response.iter_raw():
                digest.update(data)
                size += len(data)
        assert size == mb * 1024 * 1024
        assert digest.hexdigest() == _expected_big(mb)
        # The client connection is still good for the next request.
        assert get_json(client)["name"] == "a"


def test_response_is_streamed_not_buffered(
    edge: EdgeThread, project: Project, upstreams: Callable[[str], Upstream]
) -> None:
    a = upstreams("a")
    project.route("api", a.port)
    edge.wait_route(project.host("api"), a.port)
    with edge.client(project.host("api")) as client, client.stream("GET", "/gate") as response:
        chunks = response.iter_raw()
        first = next(chunks)
        assert first.startswith(b"first.")
        a.server.gate.set()  # only now does the upstream send the rest
        rest = first + b"".join(chunks)
    assert rest == b"first.rest."
    assert not a.server.gate_timed_out


def test_request_bodies_stream_intact(
    edge: EdgeThread, project: Project, upstreams: Callable[[str], Upstream]
) -> None:
    a = upstreams("a")
    project.route("api", a.port)
    edge.wait_route(project.host("api"), a.port)
    blob = os.urandom(5 * 1024 * 1024 + 17)

    def pieces() -> Iterator[bytes]:
        for i in range(0, len(blob), 100_000):
            yield blob[i : i + 100_000]

    with edge.client(project.host("api")) as client:
        chunked = client.post("/upload", content=pieces())  # no length: chunked
        assert chunked.status_code == 200, chunked.text
        answer = chunked.json()
        assert answer["te"] == "chunked" and answer["length"] == len(blob)
        assert answer["sha256"] == hashlib.sha256(blob).hexdigest()

        sized = client.post("/upload", content=blob)  # Content-Length, streamed
        assert sized.json()["length"] == len(blob) and sized.json()["cl"] == str(len(blob))
        assert sized.json()["sha256"] == hashlib.sha256(blob).hexdigest()

        small = client.post("/upload", content=b"tiny")
        assert small.json()["sha256"] == hashlib.sha256(b"tiny").hexdigest()
        empty = client.post("/upload", content=b"")
        assert empty.json()["length"] == 0
        expect = client.post("/upload", content=b"x" * 1000, headers={"Expect": "100-continue"})
        assert expect.json()["length"] == 1000


def test_keep_alive_reuses_one_upstream_connection(
    edge: EdgeThread, project: Project, upstreams: Callable[[str], Upstream]
) -> None:
    a = upstreams("a")
    project.route("api", a.port)
    edge.wait_route(project.host("api"), a.port)
    opened = edge.edge.pool.opened
    with edge.client(project.host("api")) as client:
        for i in range(100):
            assert get_json(client, f"/n/{i}")["path"] == f"/n/{i}"
            if i % 10 == 0:
                client.post("/upload", content=b"x" * 100)
    assert a.connections == 1
    assert a.server.requests == 100
    assert edge.edge.pool.opened == opened + 1


# -- the edge's own pages ---------------------------------------------------------------------


def test_unknown_host_gets_the_index_of_live_routes(
    edge: EdgeThread, project: Project, upstreams: Callable[[str], Upstream]
) -> None:
    a = upstreams("a")
    project.route("api", a.port)
    project.route("api-preview-8", a.port, environment="preview-8")
    project.route("web-preview-8", a.port, environment="preview-8", service="web")
    edge.wait_route(project.host("web-preview-8"), a.port)

    hostile = f"<script>alert(1)</script>.{project.zone}"
    with httpx.Client(base_url=edge.base, timeout=10.0) as client:
        response = client.get("/anything", headers={"Host": hostile})
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("text/html")
        page = response.text
        assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        for label in ["api", "api-preview-8", "web-preview-8"]:
            link = f'href="http://{project.host(label)}:{edge.port}/"'
            assert link in page
        section = page[page.index(f"<h2>{project.name}</h2>") :]
        assert section.index("<h3>preview-8</h3>") < section.index("<h3>production</h3>")
        assert a.server.requests == 0  # nothing was forwarded

        # The edge's own address: the same index, 200.
        for own in [f"127.0.0.1:{edge.port}", f"localhost:{edge.port}"]:
            index = client.get("/", headers={"Host": own})
            assert index.status_code == 200 and project.host("api-preview-8") in index.text
        # A host in no project's zone learns of no route; a 404 keeps the connection usable.
        stranger = client.get("/", headers={"Host": "nope.localhost"})
        assert stranger.status_code == 404 and "None in its zone." in stranger.text
        assert project.name not in stranger.text and "api-preview-8" not in stranger.text
        assert client.get("/", headers={"Host": f"localhost:{edge.port}"}).status_code == 200


def test_upstream_down_is_502_and_slow_is_504(
    shared_store: Store, edge: EdgeThread, project: Project, upstreams: Callable[[str], Upstream]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    project.route("api-preview-8", dead, environment="preview-8", service="api")
    edge.wait_route(project.host("api-preview-8"), dead)
    with edge.client(project.host("api-preview-8")) as client:
        response = client.get("/")
        assert response.status_code == 502
        assert "No process answers" in response.text
        assert "api" in response.text and "preview-8" in response.text
        assert str(dead) not in response.text  # no upstream port for a visitor
        assert client.post("/upload", content=b"x" * 200_000).status_code == 502

    slow_edge = EdgeThread(shared_store, refresh_interval=3600, upstream_timeout=0.3)
    try:
        a = upstreams("a")
        project.route("api", a.port)
        slow_edge.wait_route(project.host("api"), a.port)
        with slow_edge.client(project.host("api")) as client:
            began = time.monotonic()
            response = client.get("/slow?s=1.5")
            assert response.status_code == 504
            assert time.monotonic() - began < 1.4
            assert "did not answer within 0.3 s" in response.text
            assert get_json(client)["name"] == "a"  # the next request is fine
    finally:
        slow_edge.close()


def test_malformed_requests_are_refused(
    edge: EdgeThread, project: Project, upstreams: Callable[[str], Upstream]
) -> None:
    a = upstreams("a")
    project.route("api", a.port)
    edge.wait_route(project.host("api"), a.port)
    host = project.host("api").encode()
    cases = [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET / HTTP/2.0\r\nHost: %s\r\n\r\n" % host, 505),
        (b"GET / HTTP/1.1\r\nHost: %s\r\nBad Header: x\r\n\r\n" % host, 400),
        (b"GET / HTTP/1.1\r\nHost: %s\r\n folded\r\n\r\n" % host, 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (
            b"POST / HTTP/1.1\r\nHost: %s\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" % host,
            400,
        ),
        (b"POST / HTTP/1.1\r\nHost: %s\r\nContent-Length: 3, 4\r\n\r\nabc" % host, 400),
        (b"POST / HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: gzip\r\n\r\n" % host, 501),
        (b"GET / HTTP/1.1\r\nHost: %s\r\nX: " % host + b"a" * 70_000 + b"\r\n\r\n", 431),
    ]
    for raw, status in cases:
        with socket.create_connection(("127.0.0.1", edge.port), timeout=5) as sock:
            sock.sendall(raw)
            answer = _recv_all(sock)
        assert answer.startswith(b"HTTP/1.1 %d " % status), (raw[:60], answer[:100])
    assert a.server.requests == 0

    # HTTP/1.0 without keep-alive: answered, then closed; absolute-form targets work.
    with socket.create_connection(("127.0.0.1", edge.port), timeout=5) as sock:
        sock.sendall(b"GET http://%s/abs HTTP/1.0\r\n\r\n" % host)
        answer = _recv_all(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and json.loads(body)["path"] == "/abs"
    assert b"\r\nconnection: close\r\n" in head.lower() + b"\r\n"


def _recv_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


# -- route switches ---------------------------------------------------------------------------


def test_route_switch_under_steady_load_fails_nothing(
    edge: EdgeThread, project: Project, upstreams: Callable[[str], Upstream]
) -> None:
    a, b = upstreams("a"), upstreams("b")
    host = project.host("api")
    project.route("api", a.port)
    edge.wait_route(host, a.port)
    stop = threading.Event()
    seen: dict[str, int] = {}
    failures: list[str] = []
    lock = threading.Lock()

    def load() -> None:
        with edge.client(host) as client:
            while not stop.is_set():
                try:
                    response = client.get("/")
                    name = response.json()["name"] if response.status_code == 200 else None
                except Exception as exc:  # a failed request, whatever the reason
                    failures.append(repr(exc))
                    continue
                with lock:
                    if name is None:
                        failures.append(f"{response.status_code}: {response.text[:200]}")
                    else:
                        seen[name] = seen.get(name, 0) + 1

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        # An in-flight request that starts on A finishes on A after the switch.
        slow: dict[str, Any] = {}

        def slow_request() -> None:
            with edge.client(host) as client:
                slow["body"] = get_json(client, "/slow?s=0.5")

        slow_thread = threading.Thread(target=slow_request)
        slow_thread.start()
        eventually(lambda: a.server.requests or None)
        for target in [b, a, b, a, b, a, b]:
            time.sleep(0.15)
            project.route("api", target.port)
            edge.wait_route(host, target.port)
        slow_thread.join(5)
        assert slow["body"]["name"] == "a"
        time.sleep(0.2)
    finally:
        stop.set()
        for worker in workers:
            worker.join(10)
    assert failures == []
    assert seen.get("a", 0) > 20 and seen.get("b", 0) > 20, seen
    with edge.client(host) as client:
        assert get_json(client)["name"] == "b"  # the last switch holds


def test_deploy_like_switches_with_old_process_stopped(
    edge: EdgeThread, project: Project, upstreams: Callable[[str], Upstream]
) -> None:
    """What a deploy does: start the new process, switch the route, drain, stop the
    old one, under load: not one request fails, and none reaches a stopped process."""
    host = project.host("api")
    current = upstreams("v0")
    project.route("api", current.port)
    edge.wait_route(host, current.port)
    stop = threading.Event()
    failures: list[str] = []
    seen: dict[str, int] = {}
    lock = threading.Lock()

    def load() -> None:
        with edge.client(host) as client:
            while not stop.is_set():
                try:
                    response = client.get("/")
                    ok = response.status_code == 200
                    name = response.json()["name"] if ok else response.text[:200]
                except Exception as exc:
                    failures.append(repr(exc))
                    continue
                with lock:
                    if not ok:
                        failures.append(name)
                    seen[name] = seen.get(name, 0) + 1

    def answered(name: str) -> None:
        eventually(lambda: True if seen.get(name) else None)

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        for version in range(1, 6):
            # Switch only once the current version has answered: on a loaded machine a
            # fixed pause can pass before the first request gets through.
            answered(current.name)
            new = upstreams(f"v{version}")
            project.route("api", new.port)
            edge.wait_route(host, new.port)
            time.sleep(0.1)  # the drain period
            current.stop()
            current = new
        answered(current.name)
    finally:
        stop.set()
        for worker in workers:
            worker.join(10)
    assert failures == []
    assert set(seen) == {f"v{i}" for i in range(6)}, seen


# -- WebSocket ------------------------------------------------------------------------------------


def ws_accept(key: str) -> str:
    digest = hashlib.sha1((key + WS_GUID).encode()).digest()  # noqa: S324 - RFC 6455
    return base64.b64encode(digest).decode()


def ws_frame(opcode: int, payload: bytes, *, mask: bool = False) -> bytes:
    head = bytes([0x80 | opcode])
    bit = 0x80 if mask else 0
    n = len(payload)
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def read_ws_frame(read: Callable[[int], bytes]) -> tuple[int, bytes]:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            more = read(n - len(data))
            if not more:
                raise ConnectionError("closed inside a frame")
            data += more
        return data

    first, second = exactly(2)
    n = second & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", exactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", exactly(8))
    key = exactly(4) if second & 0x80 else None
    payload = exactly(n)
    if key:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return first & 0x0F, payload


def test_websocket_echo_through_the_edge(
    edge: EdgeThread, project: Project, upstreams: Callable[[str], Upstream]
) -> None:
    a = upstreams("a")
    project.route("api", a.port)
    edge.wait_route(project.host("api"), a.port)
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", edge.port), timeout=5) as sock:
        sock.sendall(
            (
                f"GET /ws HTTP/1.1\r\nHost: {project.host('api')}\r\nUpgrade: websocket\r\n"
                f"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        buffered = b""
        while b"\r\n\r\n" not in buffered:
            buffered += sock.recv(4096)
        head, _, rest = buffered.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        assert lines[0].startswith("HTTP/1.1 101")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        expected = ws_accept(key)
        assert headers["sec-websocket-accept"] == expected
        assert headers["upgrade"].lower() == "websocket" and headers["x-upstream"] == "a"

        pending = bytearray(rest)

        def read(n: int) -> bytes:
            if pending:
                data = bytes(pending[:n])
                del pending[:n]
                return data
            return sock.recv(n)

        assert read_ws_frame(read) == (1, b"hello from a")
        sock.sendall(ws_frame(1, b"ping through the edge", mask=True))
        assert read_ws_frame(read) == (1, b"ping through the edge")
        big = os.urandom(300_000)
        sock.sendall(ws_frame(2, big, mask=True))
        assert read_ws_frame(read) == (2, big)
        sock.sendall(ws_frame(8, b"\x03\xe8", mask=True))
        assert read_ws_frame(read) == (8, b"\x03\xe8")
        assert sock.recv(10) == b""  # the upstream closed, and so did the edge

    # An upgrade the upstream refuses is an ordinary answer.
    with edge.client(project.host("api")) as client:
        refused = client.get("/", headers={"Upgrade": "websocket", "Connection": "Upgrade"})
        assert refused.status_code == 200 and refused.json()["name"] == "a"


# -- refresh, reconnect, stop ------------------------------------------------------------


def test_periodic_refresh_catches_changes_without_notify(
    shared_store: Store, project: Project, upstreams: Callable[[str], Upstream]
) -> None:
    a = upstreams("a")
    runner = EdgeThread(shared_store, refresh_interval=0.1)
    try:
        sql(
            shared_store,
            "INSERT INTO branchline.routes (host, project, environment, service, upstream_port) "
            "VALUES (%s, %s, 'production', 'api', %s)",
            (project.host("quiet"), project.name, a.port),
        )
        runner.wait_route(project.host("quiet"), a.port)
        with runner.client(project.host("quiet")) as client:
            assert get_json(client)["name"] == "a"
        # refresh() on demand
        sql(shared_store, "DELETE FROM branchline.routes WHERE host = %s", (project.host("quiet"),))
        runner.call(runner.edge.refresh())
        assert project.host("quiet") not in runner.edge.routes
    finally:
        runner.close()


def test_edge_survives_losing_its_database_connection(
    shared_store: Store, edge: EdgeThread, project: Project, upstreams: Callable[[str], Upstream]
) -> None:
    a, b = upstreams("a"), upstreams("b")
    host = project.host("api")
    project.route("api", a.port)
    edge.wait_route(host, a.port)
    listening = (
        "SELECT pid FROM pg_stat_activity "
        "WHERE application_name = 'branchline-edge' AND datname = current_database()"
    )
    old = {row[0] for row in sql(shared_store, listening)}
    assert len(old) == 1
    sql(
        shared_store, "SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (list(old),)
    )
    with edge.client(host) as client:
        assert get_json(client)["name"] == "a"  # still serving the last table
    eventually(lambda: ({row[0] for row in sql(shared_store, listening)} - old) or None, 10.0)
    project.route("api", b.port)
    edge.wait_route(host, b.port)
    with edge.client(host) as client:
        assert get_json(client)["name"] == "b"


def test_stop_is_clean(
    shared_store: Store, project: Project, upstreams: Callable[[str], Upstream]
) -> None:
    a = upstreams("a")
    host = project.host("api")
    project.route("api", a.port)
    runner = EdgeThread(shared_store, refresh_interval=3600)
    try:
        runner.wait_route(host, a.port)
        port = runner.port
        assert runner.call(runner.edge.start()) is runner.edge  # idempotent
        idle = runner.client(host)
        assert get_json(idle)["name"] == "a"  # a kept-alive connection, now idle
        in_flight: dict[str, Any] = {}

        def slow_request() -> None:
            with runner.client(host) as client:
                in_flight["response"] = client.get("/slow?s=0.5")

        thread = threading.Thread(target=slow_request)
        thread.start()
        eventually(lambda: a.server.requests >= 2 or None)
        began = time.monotonic()
        runner.call(runner.edge.stop(grace=5.0))
        assert time.monotonic() - began < 2.0  # the idle connection held nothing up
        thread.join(5)
        response = in_flight["response"]
        assert response.status_code == 200 and response.json()["slept"]
        assert response.headers["connection"] == "close"
        idle.close()
        runner.call(runner.edge.stop())  # idempotent
        assert runner.leftover_tasks() == set()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        listeners = sql(
            shared_store,
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE application_name = 'branchline-edge' AND datname = current_database()",
        )
        assert listeners == [(0,)]
        assert runner.edge.pool.idle_count() == 0

        # And it starts again.
        runner.call(runner.edge.start())
        with runner.client(host) as client:
            assert get_json(client)["name"] == "a"
    finally:
        runner.close()
    assert runner.loop.is_closed()


def test_idle_clients_are_closed_and_ports_are_never_shared(
    shared_store: Store, project: Project, upstreams: Callable[[str], Upstream]
) -> None:
    a = upstreams("a")
    host = project.host("api")
    project.route("api", a.port)
    runner = EdgeThread(shared_store, refresh_interval=3600, client_timeout=0.3)
    try:
        runner.wait_route(host, a.port)
        with socket.create_connection(("127.0.0.1", runner.port), timeout=5) as sock:
            sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            began = time.monotonic()
            answer = _recv_all(sock)  # the answer, then EOF once the connection idles
            assert answer.startswith(b"HTTP/1.1 200") and b'"name": "a"' in answer
            assert 0.2 < time.monotonic() - began < 3.0

        taken = EdgeProxy(shared_store, port=runner.port)
        with pytest.raises(OSError):
            runner.call(taken.start())
        assert not taken.running
        listeners = sql(
            shared_store,
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE application_name = 'branchline-edge' AND datname = current_database()",
        )
        assert listeners == [(1,)]  # the running edge's only
        with runner.client(host) as client:
            assert get_json(client)["name"] == "a"
    finally:
        runner.close()


def test_stop_cuts_websocket_tunnels_at_once(
    shared_store: Store, project: Project, upstreams: Callable[[str], Upstream]
) -> None:
    a = upstreams("a")
    host = project.host("api")
    project.route("api", a.port)
    runner = EdgeThread(shared_store, refresh_interval=3600)
    try:
        runner.wait_route(host, a.port)
        with socket.create_connection(("127.0.0.1", runner.port), timeout=5) as sock:
            sock.sendall(
                (
                    f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    "Sec-WebSocket-Version: 13\r\n\r\n"
                ).encode()
            )
            assert sock.recv(4096).startswith(b"HTTP/1.1 101")
            began = time.monotonic()
            runner.call(runner.edge.stop(grace=10.0))
            assert time.monotonic() - began < 2.0
            with contextlib.suppress(ConnectionResetError):
                _recv_all(sock)  # the tunnel is closed
        assert runner.leftover_tasks() == set()
    finally:
        runner.close()
