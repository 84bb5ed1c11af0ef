"""Health checks against a real HTTP server on 127.0.0.1, with the real clock."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from branchline.health import HealthPolicy, HealthResult, RealClock, check_health

pytestmark = pytest.mark.integration

COMMIT = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
FAST = HealthPolicy(retries=3, backoff_base=0.01, timeout_per_attempt=2, deadline=20, jitter=0)


@dataclass
class Behaviour:
    """What the test server does; changed by the tests, read by the handler thread."""

    commit: str = COMMIT
    failures: int = 0  # answer 503 to this many requests first
    delay: float = 0.0  # seconds to wait before answering
    only_host: str | None = None  # answer 404 unless the Host header is this
    hosts: list[str] = field(default_factory=list)
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        behaviour = self.server.behaviour
        with behaviour.lock:
            behaviour.requests += 1
            count = behaviour.requests
            behaviour.hosts.append(self.headers.get("Host", ""))
        if behaviour.delay:
            time.sleep(behaviour.delay)
        if self.path != "/health":
            self._send(404, {"error": "not found"})
        elif behaviour.only_host and self.headers.get("Host") != behaviour.only_host:
            self._send(404, {"error": "unknown host"})
        elif count <= behaviour.failures:
            self._send(503, {"status": "starting"})
        else:
            self._send(200, {"status": "ok", "commit": behaviour.commit})

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.behaviour = Behaviour()


@pytest.fixture
def server() -> Iterator[_Server]:
    httpd = _Server()
    thread = threading.Thread(
        target=httpd.serve_forever, args=(0.02,), name="health-test-server", daemon=True
    )
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def url_of(httpd: _Server, path: str = "/health") -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}{path}"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def check(url: str, policy: HealthPolicy = FAST, **kwargs: Any) -> HealthResult:
    return asyncio.run(check_health(url, policy=policy, clock=RealClock(), **kwargs))


def timed(call: Callable[[], HealthResult]) -> tuple[HealthResult, float]:
    began = time.monotonic()
    result = call()
    return result, time.monotonic() - began


def test_healthy_server_with_the_expected_commit(server: _Server) -> None:
    result = check(url_of(server), expect_commit=COMMIT[:7])
    assert result.healthy, result.verdict
    assert len(result.attempts) == 1
    attempt = result.attempts[0]
    assert (attempt.status, attempt.display, attempt.ok) == (200, "HTTP 200", True)
    assert attempt.reported_commit == COMMIT
    assert result.verdict.startswith("healthy after 1 attempt in ")


def test_old_commit_does_not_pass(server: _Server) -> None:
    server.behaviour.commit = "0" * 40
    result = check(url_of(server), expect_commit=COMMIT)
    assert not result.healthy
    assert len(result.attempts) == FAST.max_attempts
    assert result.verdict.startswith(f"unhealthy: answered commit {'0' * 40} but {COMMIT}")


def test_closed_port_is_http_000_quickly() -> None:
    policy = HealthPolicy(retries=1, backoff_base=0.01, deadline=20, jitter=0)
    result, seconds = timed(lambda: check(f"http://127.0.0.1:{closed_port()}/health", policy))
    assert not result.healthy
    assert [a.display for a in result.attempts] == ["HTTP 000 (connection refused)"] * 2
    assert result.verdict.startswith("unhealthy: 2 attempts failed in ")
    assert result.verdict.endswith("; last: HTTP 000 (connection refused)")
    assert seconds < 2


def test_passes_on_the_third_attempt_after_two_503s(server: _Server) -> None:
    server.behaviour.failures = 2
    seen: list[str] = []
    result = check(url_of(server), on_attempt=lambda a: seen.append(a.display))
    assert result.healthy, result.verdict
    assert seen == ["HTTP 503", "HTTP 503", "HTTP 200"]
    assert server.behaviour.requests == 3
    assert [a.at for a in result.attempts] == sorted(a.at for a in result.attempts)
    assert result.attempts[2].at >= 0.01 + 0.02  # both backoff waits happened


def test_wrong_path_is_unhealthy(server: _Server) -> None:
    result = check(url_of(server, "/nope"), HealthPolicy(retries=0))
    assert not result.healthy
    assert result.attempts[0].display == "HTTP 404"


def test_host_header_reaches_the_server(server: _Server) -> None:
    server.behaviour.only_host = "api-preview-8.codex.localhost"
    url = url_of(server)
    assert not check(url, HealthPolicy(retries=0)).healthy
    result = check(url, HealthPolicy(retries=0), host_header="api-preview-8.codex.localhost")
    assert result.healthy, result.verdict
    assert server.behaviour.hosts[-1] == "api-preview-8.codex.localhost"


def test_slow_answer_times_out_as_http_000(server: _Server) -> None:
    server.behaviour.delay = 1.0
    policy = HealthPolicy(retries=0, timeout_per_attempt=0.2, deadline=20)
    result, seconds = timed(lambda: check(url_of(server), policy))
    assert result.attempts[0].display == "HTTP 000 (timed out after 0.2s)"
    assert seconds < 1.0


def test_deadline_bounds_the_whole_check() -> None:
    policy = HealthPolicy(retries=50, backoff_base=0.05, timeout_per_attempt=0.1, deadline=0.6)
    result, seconds = timed(lambda: check(f"http://127.0.0.1:{closed_port()}/health", policy))
    assert not result.healthy
    assert "deadline of 600ms reached" in result.verdict
    assert 1 < len(result.attempts) < 51
    assert seconds < 0.6 + 0.3  # a little slack for the event loop
