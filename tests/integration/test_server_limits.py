"""Hostile sizes and speeds against the real HTTP server (uvicorn on a socket):
bodies over the cap refused by their Content-Length before a byte is read, and
while they stream (chunked too); a stranger's body (no signature, no token, no
session) refused before it is read; slow bodies cut at the deadline; dashboard
sessions that end the moment their token is deleted, replaced or re-scoped; and
/metrics behind `[server] metrics_token`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from branchline.config import load_config
from branchline.postgres import Cluster
from branchline.server import limits
from branchline.server.app import create_app
from branchline.server.limits import Refusal
from branchline.server.webhooks import signature_of
from branchline.store import Store, locate_state
from branchline.store import tokens as token_rows
from tests import raw_http
from tests.integration.conftest import store_in
from tests.integration.test_api import Called, Recording
from tests.raw_http import MB, answer_of, head

pytestmark = pytest.mark.integration
SECRET = b"the webhook secret of these tests"
METRICS_TOKEN = "a-metrics-token-of-32-characters"
DEADLINE = 1.0


@pytest.fixture(scope="module")
def store(pg_cluster: Cluster) -> Store:
    return store_in(pg_cluster, "bl_limits")


@dataclass
class Server:
    port: int
    project: str
    store: Store
    tokens: dict[str, str]
    called: Called

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def sql(self, work: Any) -> Any:
        async def go() -> Any:
            async with self.store.connect() as conn:
                return await work(conn, self.project)

        return asyncio.run(go())


@pytest.fixture
def server(tmp_path: Path, store: Store) -> Iterator[Server]:
    """The whole app (webhooks, API, dashboard, /metrics) behind a real uvicorn, with
    a body deadline of DEADLINE seconds."""
    project = f"lim{uuid.uuid4().hex[:6]}"
    (tmp_path / "branchline.toml").write_text(
        f'[project]\nname = "{project}"\nzone = "{project}.localhost"\n'
        '[database]\nmigrate = "true"\n'
        '[server]\nmetrics_token = "${BRANCHLINE_METRICS_TOKEN}"\n'
    )
    env = {"BRANCHLINE_METRICS_TOKEN": METRICS_TOKEN}
    config = load_config(tmp_path / "branchline.toml", env=env)
    called: Called = []

    async def make_tokens() -> dict[str, str]:
        async with store.connect() as conn:
            _r, read = await token_rows.create(conn, project, "reader", "read")
            _w, write = await token_rows.create(conn, project, "ci", "write")
        return {"read": read, "write": write}

    tokens = asyncio.run(make_tokens())
    app = create_app(config, store, secret=SECRET, actions=Recording(called),
                     body_deadline=DEADLINE)  # fmt: skip
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    running = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not running.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield Server(port, project, store, tokens, called)
    finally:
        running.should_exit = True
        thread.join(timeout=10)


def refused_before_the_body(
    server: Server, path: str, headers: dict[str, str], length: int | None
) -> tuple[int, dict[str, str], bytes, float]:
    """Send only a head announcing a body; the answer must come without any of it."""
    began = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head(path, headers, length=length))
        status, answer_headers, body = answer_of(sock)
    return status, answer_headers, body, time.monotonic() - began


def webhook_headers(signature: str | None) -> dict[str, str]:
    headers = {"X-GitHub-Event": "push", "X-GitHub-Delivery": str(uuid.uuid4()),
               "Content-Type": "application/json"}  # fmt: skip
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    return headers


def test_webhook_bodies_over_25_mb_or_unsigned_are_refused_before_they_are_read(
    server: Server,
) -> None:
    looks_signed = webhook_headers("sha256=" + "0" * 64)
    status, headers, body, took = refused_before_the_body(
        server, "/webhooks/github", looks_signed, 200 * MB
    )
    assert status == 413 and headers["connection"] == "close", body
    assert "26,214,400 bytes" in json.loads(body)["message"] and took < DEADLINE
    # Within the cap but unsigned, or signed in another scheme: 401 from the head alone.
    for signature in (None, "sha1=" + "0" * 40, "sha256=short"):
        status, _h, body, took = refused_before_the_body(
            server, "/webhooks/github", webhook_headers(signature), 20 * MB
        )
        assert status == 401 and "X-Hub-Signature-256" in json.loads(body)["message"]
        assert took < DEADLINE  # not a deadline's 408: it never waited for the body
    # A delivery signed right, within the cap, goes through (chunked or not).
    ping = json.dumps({"zen": "Keep it logically awesome.", "pad": "x" * 2_000_000}).encode()
    for chunked in (False, True):
        body: Any = iter([ping[:1000], ping[1000:]]) if chunked else ping
        answer = httpx.post(f"{server.url}/webhooks/github", content=body, timeout=10,
                            headers={**webhook_headers(signature_of(SECRET, ping)),
                                     "X-GitHub-Event": "ping"})  # fmt: skip
        assert answer.status_code == 200 and answer.json()["message"] == "pong", answer.text


def stream(
    server: Server, path: str, headers: dict[str, str], total: int, *, chunked: bool
) -> tuple[int, str, int]:
    """(status, message, bytes sent before it) for `total` bytes sent to `path`."""
    status, body, sent = raw_http.stream(server.port, path, headers, total, chunked=chunked)
    said = json.loads(body)
    return status, str(said.get("message", said.get("detail"))), sent


def test_a_streamed_oversized_body_is_cut_at_the_cap(server: Server) -> None:
    looks_signed = webhook_headers("sha256=" + "1" * 64)
    status, message, sent = stream(server, "/webhooks/github", looks_signed, 200 * MB, chunked=True)
    assert status == 413 and "larger than the 26,214,400 bytes" in message
    # The socket buffers on both sides hold a few MB more than the server read.
    assert sent < 60 * MB, f"{sent / MB:.0f} MB went in before the refusal"
    # Within the cap, a wrong signature is still read, verified and refused.
    status, message, _ = stream(server, "/webhooks/github", looks_signed, 20 * MB, chunked=False)
    assert status == 401 and "X-Hub-Signature-256" in message
    # A write token's JSON over 1 MB, streamed or announced: 413; nothing acted.
    auth = {"Authorization": f"Bearer {server.tokens['write']}"}
    status, message, _ = stream(server, "/api/branches", auth, 30 * MB, chunked=True)
    assert status == 413 and "1,048,576 bytes" in message
    status, _h, _b, _t = refused_before_the_body(server, "/api/branches", auth, 2 * MB)
    assert status == 413
    assert server.called == []


def test_the_token_or_session_is_checked_before_a_body_is_read(server: Server) -> None:
    for headers in ({}, {"Authorization": "Bearer blt_forged"}, {"Authorization": "Basic eDp5"}):
        for length in (900_000, None):  # within the cap, and chunked (size unknown)
            status, answer_headers, body, took = refused_before_the_body(
                server, "/api/branches", headers, length
            )
            assert status == 401 and answer_headers["www-authenticate"] == "Bearer", body
            assert took < DEADLINE
    # The dashboard's forms: without a live session, to the log-in page, unread.
    for path in ("/dashboard/branches/create", "/dashboard/rollback", "/dashboard/logout"):
        status, answer_headers, _b, took = refused_before_the_body(server, path, {}, 500_000)
        assert status == 303 and answer_headers["location"] == "/dashboard/login"
        assert took < DEADLINE
    assert server.called == []
    # With a good token the same small body is read and acted on.
    made = httpx.post(f"{server.url}/api/branches", json={"name": "dev-ok"}, timeout=10,
                      headers={"Authorization": f"Bearer {server.tokens['write']}"})  # fmt: skip
    assert made.status_code == 200 and server.called == [
        ("create_branch", {"name": "dev-ok", "parent": None, "expires": None})
    ]


def test_slow_bodies_are_cut_at_the_deadline(server: Server) -> None:
    """200 clients sending a byte every 0.2 s: each is answered 408 and closed by the
    deadline (plus scheduling slack), none stays open."""
    auth = {"Authorization": f"Bearer {server.tokens['write']}"}
    signed = webhook_headers("sha256=" + "2" * 64)

    async def slow(i: int) -> tuple[int, float]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        began = time.monotonic()
        path, headers = ("/webhooks/github", signed) if i % 2 else ("/api/branches", auth)
        writer.write(head(path, headers, length=None if i % 4 == 0 else 1000))
        # The answer's first bytes, then EOF or a reset (bytes still coming in when the
        # server closes make its kernel reset): either way, closed.
        answered = asyncio.ensure_future(reader.read(65536))

        async def trickle() -> None:
            for _ in range(100):
                if i % 4 == 0:
                    writer.write(b"1\r\nx\r\n")
                else:
                    writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.2)

        dripping = asyncio.ensure_future(trickle())
        try:
            data = await asyncio.wait_for(answered, timeout=DEADLINE + 10)
            with contextlib.suppress(ConnectionResetError):
                while await asyncio.wait_for(reader.read(65536), timeout=5):
                    pass  # the rest of the answer, up to the close
        finally:
            dripping.cancel()
            writer.close()
        return int(data.split(b" ", 2)[1]), time.monotonic() - began

    async def all_of_them() -> list[tuple[int, float]]:
        return await asyncio.gather(*(slow(i) for i in range(200)))

    results = asyncio.run(all_of_them())
    assert {status for status, _ in results} == {408}
    slowest = max(took for _, took in results)
    assert slowest < DEADLINE + 5, f"the last slow body was cut after {slowest:.1f} s"
    assert server.called == []


def dashboard_login(client: httpx.Client, token: str) -> str:
    """Log in; the CSRF token of the session."""
    client.post("/dashboard/login", data={"token": token})
    page = client.get("/dashboard/branches")
    assert page.status_code == 200
    return page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]


def test_a_session_ends_when_its_token_is_deleted_replaced_or_rescoped(server: Server) -> None:
    form = {"name": "dev-x", "parent": "", "expires": ""}

    def create(client: httpx.Client, csrf: str) -> httpx.Response:
        return client.post("/dashboard/branches/create", data={**form, "csrf": csrf})

    def ended(client: httpx.Client, csrf: str) -> None:
        for page in ("/dashboard/", "/dashboard/branches", "/dashboard/runs"):
            answer = client.get(page)
            assert answer.status_code == 303 and answer.headers["location"] == "/dashboard/login"
        answer = create(client, csrf)
        assert answer.status_code == 303 and answer.headers["location"] == "/dashboard/login"
        # The log-in page it lands on offers no log-out of the dead session.
        assert "Log out" not in client.get("/dashboard/login").text

    def token(name: str, scope: str) -> str:
        _row, value = server.sql(lambda c, p: token_rows.create(c, p, name, scope))
        return str(value)

    with httpx.Client(base_url=server.url, timeout=10, follow_redirects=False) as client:
        # Deleted: the very next page and button are refused, the button does nothing.
        csrf = dashboard_login(client, token("ann", "write"))
        assert create(client, csrf).status_code == 303 and len(server.called) == 1
        assert server.sql(lambda c, p: token_rows.delete(c, p, "ann"))
        ended(client, csrf)
        assert len(server.called) == 1

        # Scope lowered in place: the write session ends; a new one may only read.
        value = token("bob", "write")
        csrf = dashboard_login(client, value)
        assert server.sql(lambda c, p: token_rows.set_scope(c, p, "bob", "read"))
        ended(client, csrf)
        csrf = dashboard_login(client, value)
        assert create(client, csrf).status_code == 403
        assert len(server.called) == 1

        # Replaced under the same name and scope: the old token's session ends.
        csrf = dashboard_login(client, token("cy", "write"))
        token("cy", "write")
        ended(client, csrf)
        assert len(server.called) == 1


def test_metrics_answer_only_with_the_metrics_token(server: Server) -> None:
    url = f"{server.url}/metrics"
    for headers in ({}, {"Authorization": "Bearer wrong"},
                    {"Authorization": f"Bearer {METRICS_TOKEN[:-1]}"},
                    {"Authorization": f"Basic {METRICS_TOKEN}"},
                    {"Authorization": f"Bearer {server.tokens['write']}"}):  # fmt: skip
        refused = httpx.get(url, headers=headers, timeout=10)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert "branchline_runs" not in refused.text and METRICS_TOKEN not in refused.text
    good = httpx.get(url, headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10)
    assert good.status_code == 200 and "# TYPE branchline_runs gauge" in good.text


def test_a_body_is_not_read_while_its_sender_cannot_be_checked(tmp_path: Path) -> None:
    """The state database gone: the token cannot be checked, so the body is refused
    (503, retry later) unread, not read blind nor answered 500."""
    (tmp_path / "branchline.toml").write_text(
        '[project]\nname = "gone"\nzone = "gone.localhost"\n[database]\nmigrate = "true"\n'
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        nothing = probe.getsockname()[1]  # nothing listens here once the probe closes
    url = f"postgresql://u:secret-password@127.0.0.1:{nothing}/none"
    store = Store(locate_state(tmp_path, {"BRANCHLINE_DATABASE_URL": url}))
    app = create_app(load_config(tmp_path / "branchline.toml", env={}), store, secret=SECRET)

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/api/branches", json={"name": "dev-x"},
                                     headers={"Authorization": "Bearer blt_any"})  # fmt: skip

    answer = asyncio.run(go())
    assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
    assert "state database" in answer.json()["detail"] and "secret-password" not in answer.text


def test_a_state_database_dying_under_the_gate_is_a_503_not_a_500() -> None:
    """The gate's own query fails (the state database died between the keep-alive's
    checks): the same retryable 503, the body unread, the application never called."""
    called: list[Scope] = []

    async def application(scope: Scope, receive: Receive, send: Send) -> None:
        called.append(scope)

    async def dying_gate(_scope: Scope) -> Refusal | None:
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    app = limits.BodyLimits(application, [limits.Rule("/api/", 1024, 5.0, dying_gate)],
                            default=limits.Rule("/", 1024))  # fmt: skip

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/api/branches", content=b"{}")

    answer = asyncio.run(go())
    assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
    assert not called
