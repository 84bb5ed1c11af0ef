"""Reachable from outside: `serve --bind ADDRESS` puts the HTTP server (webhooks,
API), the edge and the DNS server on that address, `--detach` passes it on to the
background serve, 0.0.0.0 is reached through loopback and the machine's own address,
IPv6 loopback works, and serve warns once when its HTTP server is reachable from
other machines without a metrics token (and not on loopback)."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from branchline.edge import daemon
from branchline.postgres.cluster import free_port
from branchline.server.webhooks import signature_of
from branchline.store import Store, locate_state
from branchline.store import routes as route_rows
from tests.addresses import can_bind, machine_address
from tests.codex_project import cli_env, make_project, served
from tests.conftest import ANY_FREE_PORT, REPO, eventually, run_cli

SECRET = "a webhook secret for this test"
EVERY_INTERFACE = "0.0.0.0"  # noqa: S104 (the point of these tests)
PING = REPO / "tests" / "fixtures" / "github-webhooks" / "octokit-examples" / "ping.payload.json"
FROM_UPSTREAM = b"answered by the upstream behind the edge"


@pytest.fixture
def project(tmp_path: Path, state_dir: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    root = make_project(tmp_path / "codex", quick_tests=True)
    env = {**cli_env(state_dir), "BRANCHLINE_WEBHOOK_SECRET": SECRET,
           "BRANCHLINE_API_PORT": str(free_port())}  # fmt: skip
    with served(root, env) as both:
        yield both


def init(root: Path, env: dict[str, str]) -> None:
    assert run_cli("db", "init", cwd=root, env=env).returncode == 0


@pytest.fixture
def upstream() -> Iterator[int]:
    """A service on loopback for the edge to proxy to; its port."""

    class Answer(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(FROM_UPSTREAM)))
            self.end_headers()
            self.wfile.write(FROM_UPSTREAM)

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def url(host: str, port: int, path: str = "/") -> str:
    return f"http://[{host}]:{port}{path}" if ":" in host else f"http://{host}:{port}{path}"


def fetch(address: str, headers: dict[str, str] | None = None) -> tuple[int, bytes] | None:
    """(status, body), or None when nothing answers there."""
    request = urllib.request.Request(address, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read()
    except (urllib.error.URLError, OSError):
        return None


def listening(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.settimeout(2)
        return sock.connect_ex((host, port)) == 0


def healthy(host: str, port: int) -> bool | None:
    answer = fetch(url(host, port, "/healthz"))
    return True if answer is not None and answer[0] == 200 and b"ok" in answer[1] else None


def deliver(host: str, port: int, body: bytes, secret: bytes) -> int:
    request = urllib.request.Request(
        url(host, port, "/webhooks/github"), data=body, method="POST",
        headers={"X-GitHub-Event": "ping", "X-GitHub-Delivery": str(uuid.uuid4()),
                 "X-Hub-Signature-256": signature_of(secret, body),
                 "Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as refused:
        return refused.code


def answers_webhooks(host: str, port: int) -> None:
    body = PING.read_bytes()
    assert deliver(host, port, body, b"not the secret") == 401
    assert deliver(host, port, body, SECRET.encode()) == 200  # pong


def zone_answers(host: str, port: int) -> None:
    query = dns.message.make_query("codex.localhost.", "SOA")
    response = dns.query.udp(query, host, port=port, timeout=5)
    assert dns.rcode.to_text(response.rcode()) == "NOERROR" and response.answer


def route_to(root: Path, env: dict[str, str], port: int) -> str:
    """Route a host to `port` (the edge learns it by NOTIFY). Another project's: the
    codex project's reconcile removes a route of its own with no deployment behind it."""
    host = "web.elsewhere.localhost"

    async def go() -> None:
        store = Store(locate_state(root, env))
        await store.start()
        async with store.connect() as conn:
            await route_rows.set_route(
                conn, host=host, project="elsewhere", environment="production",
                service="web", port=port,
            )  # fmt: skip

    asyncio.run(go())
    return host


def proxies(host: str, edge_port: int, name: str) -> None:
    """The edge forwards `name` to the upstream, and answers its own address (a
    reviewer opening it by IP) with its index of routes."""
    own = fetch(url(host, edge_port))
    assert own is not None and own[0] == 200, own
    seen: list[object] = []

    def through() -> bool | None:
        answer = fetch(url(host, edge_port), {"Host": name})
        seen[:] = [answer]
        return True if answer == (200, FROM_UPSTREAM) else None

    try:
        eventually(through, timeout=15)
    except AssertionError:
        raise AssertionError(f"the edge on {host}:{edge_port} answered {seen}") from None


def test_serve_on_an_address_of_this_machine_listens_there_and_detach_passes_it_on(
    project: tuple[Path, dict[str, str]], upstream: int
) -> None:
    address = machine_address()
    if address is None:
        pytest.skip("this machine has no address other than loopback")
    root, env = project
    init(root, env)
    started = run_cli("--json", "serve", "--detach", "--bind", address, cwd=root, env=env)
    assert started.returncode == 0, started.stderr
    data = json.loads(started.stdout)
    assert (data["edge_bind"], data["api_bind"]) == (address, address)
    # The webhook secret is set, the metrics token is not: said once, on stderr.
    assert started.stderr.count("warning:") == 1, started.stderr
    assert f"warning: the HTTP server listens on {address}" in started.stderr
    assert "metrics_token" in started.stderr and "webhook secret" not in started.stderr
    command = Path(f"/proc/{data['pid']}/cmdline").read_bytes().split(b"\0")
    for flag in ("--bind", "--api-bind"):
        assert command[command.index(flag.encode()) + 1] == address.encode(), flag
    info = daemon.read_info(Path(env["BRANCHLINE_STATE_DIR"]))
    assert info is not None and info.edge_bind == address

    api = data["api_port"]
    eventually(lambda: healthy(address, api), timeout=20)
    answers_webhooks(address, api)
    name = route_to(root, env, upstream)
    proxies(address, info.edge_port, name)
    zone_answers(address, info.dns_port)
    # That address only: loopback is another one.
    assert not listening("127.0.0.1", api) and not listening("127.0.0.1", info.edge_port)

    moved = run_cli("serve", "--detach", "--bind", "127.0.0.1", cwd=root, env=env)
    assert moved.returncode == 2
    assert f"already runs here with its edge on {address}, not 127.0.0.1" in moved.stderr


def test_serve_on_every_interface_is_reached_through_loopback_and_the_machine_address(
    project: tuple[Path, dict[str, str]], upstream: int
) -> None:
    root, env = project
    init(root, env)
    child = subprocess.Popen(
        [sys.executable, "-m", "branchline", "serve", "--bind", EVERY_INTERFACE],
        cwd=root, env=_cli_environment(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        state_dir = Path(env["BRANCHLINE_STATE_DIR"])
        info = eventually(lambda: daemon.read_info(state_dir), timeout=30)
        api = int(env["BRANCHLINE_API_PORT"])
        name = route_to(root, env, upstream)
        for host in ("127.0.0.1", *filter(None, [machine_address()])):
            eventually(functools.partial(healthy, host, api), timeout=20)
            answers_webhooks(host, api)
            proxies(host, info.edge_port, name)
            zone_answers(host, info.dns_port)
    finally:
        child.terminate()
        try:
            out, err = child.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            out, err = child.communicate()
    assert child.returncode == 0, err
    ready = next(line for line in out.splitlines() if line.startswith("serving:"))
    assert f"edge on http://127.0.0.1:{info.edge_port}/" in ready
    assert f"HTTP API on http://127.0.0.1:{api}/" in ready
    assert "bound to 0.0.0.0: every interface" in ready
    assert err.count("warning: the HTTP server listens on 0.0.0.0") == 1, err


def test_serve_on_ipv6_loopback(project: tuple[Path, dict[str, str]], upstream: int) -> None:
    if not can_bind("::1"):
        pytest.skip("this machine has no IPv6 loopback")
    root, env = project
    init(root, env)
    started = run_cli("--json", "serve", "--detach", "--bind", "::1", cwd=root, env=env)
    assert started.returncode == 0, started.stderr
    assert "warning" not in started.stderr  # loopback: nothing is exposed
    data = json.loads(started.stdout)
    assert (data["edge_bind"], data["api_bind"]) == ("::1", "::1")
    api = data["api_port"]
    eventually(lambda: healthy("::1", api), timeout=20)
    answers_webhooks("::1", api)
    info = daemon.read_info(Path(env["BRANCHLINE_STATE_DIR"]))
    assert info is not None and info.edge_host == "::1"
    proxies("::1", info.edge_port, route_to(root, env, upstream))
    zone_answers("::1", info.dns_port)
    assert not listening("127.0.0.1", api)
    # The commands that meet the running serve reach it where it listens.
    status = run_cli("--json", "status", cwd=root, env=env)
    assert status.returncode == 0, status.stderr


def test_serve_refuses_an_address_it_cannot_listen_on(
    project: tuple[Path, dict[str, str]],
) -> None:
    root, env = project
    bad = run_cli("serve", "--bind", "localhost", cwd=root, env=env)
    assert bad.returncode == 2
    assert "--bind: `localhost` is not an IP address" in bad.stderr
    assert "--bind 0.0.0.0" in bad.stderr
    edge = run_cli("edge", "--bind", "::1:", cwd=root, env=env)  # `branchline edge` too
    assert edge.returncode == 2 and "--bind: `::1:` is not an IP address" in edge.stderr
    # 203.0.113.0/24 is for documentation: no machine has it.
    absent = run_cli("serve", "--bind", "203.0.113.9", cwd=root, env=env)
    assert absent.returncode == 2
    assert "cannot listen on 203.0.113.9" in absent.stderr and "no such address" in absent.stderr
    with (root / "branchline.toml").open("a") as config:
        config.write('\n[server]\nbind = "my-host"\n')
    wrong = run_cli("serve", cwd=root, env=env)
    assert wrong.returncode == 2
    assert "server.bind: `my-host` is not an IP address" in wrong.stderr


def _cli_environment(env: dict[str, str]) -> dict[str, str]:
    """As run_cli sets it, for a serve this test starts and stops itself."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("BRANCHLINE_")}
    return {**full, **ANY_FREE_PORT, **env}
