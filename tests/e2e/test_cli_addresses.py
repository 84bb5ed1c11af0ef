"""Stable addresses: a project's edge, DNS and API ports come from `[edge]` (or
BRANCHLINE_*_PORT, or a flag) on every path that starts serve, `serve --detach`
and a command that starts it on its own included; a port held by another program
is an error naming that program, never a silent move to another port."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from branchline import ports
from branchline.edge import daemon
from branchline.postgres.cluster import free_port
from tests.codex_project import cli_env, make_project, served
from tests.conftest import eventually, run_cli

# What the project's config says, not the tests' "any free port".
CONFIG_PORTS = {"BRANCHLINE_EDGE_PORT": "", "BRANCHLINE_DNS_PORT": "", "BRANCHLINE_API_PORT": ""}


@pytest.fixture
def project(tmp_path: Path, state_dir: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    root = make_project(tmp_path / "codex", quick_tests=True)
    with served(root, {**cli_env(state_dir), **CONFIG_PORTS}) as both:
        yield both


@pytest.fixture
def squatter() -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """Another program listening on a port (TCP)."""
    port = free_port()
    child = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        eventually(lambda: _listening(port), timeout=10)
        yield port, child
    finally:
        child.kill()
        child.wait()


def _listening(port: int) -> bool | None:
    with socket.socket() as sock:
        return True if sock.connect_ex(("127.0.0.1", port)) == 0 else None


def set_edge(root: Path, **ports: int) -> None:
    table = "\n".join(f"{key} = {value}" for key, value in ports.items())
    with (root / "branchline.toml").open("a") as config:
        config.write(f"\n[edge]\n{table}\n")


def test_a_taken_edge_port_stops_every_way_of_starting_serve_and_names_its_holder(
    project: tuple[Path, dict[str, str]], squatter: tuple[int, subprocess.Popen[bytes]]
) -> None:
    root, env = project
    port, holder = squatter
    set_edge(root, port=port, dns_port=0, api_port=0)
    assert run_cli("db", "init", cwd=root, env=env).returncode == 0
    state_dir = Path(env["BRANCHLINE_STATE_DIR"])
    attempts = {
        "a command that starts serve itself": ("deploy", "web", "--env", "production"),
        "serve --detach": ("serve", "--detach"),
        "serve": ("serve",),
    }
    for how, args in attempts.items():
        done = run_cli(*args, cwd=root, env=env)
        said = done.stderr
        assert done.returncode == 2, f"{how}: {done.stdout}{said}"
        assert f"port {port} (the edge, TCP) is in use by pid {holder.pid}" in said, how
        assert "http.server" in said and "[edge] port = " in said, how
        assert daemon.read_info(state_dir) is None, f"{how} started an edge elsewhere"

    holder.kill()
    holder.wait()
    deployed = run_cli("--json", "deploy", "web", "--env", "production", cwd=root, env=env)
    assert deployed.returncode == 0, deployed.stderr
    # The URL a preview comment would show carries the configured port.
    assert json.loads(deployed.stdout)["url"] == f"http://web.codex.localhost:{port}/"
    info = daemon.read_info(state_dir)
    assert info is not None and info.edge_port == port


def test_serve_detach_honours_its_ports_and_options(
    project: tuple[Path, dict[str, str]],
) -> None:
    root, env = project
    edge_port, dns_port, api_port = free_port(), free_port(), free_port()
    set_edge(root, port=edge_port, api_port=api_port)
    env = {**env, "BRANCHLINE_DNS_PORT": str(dns_port)}  # the variable beats the config
    assert run_cli("db", "init", cwd=root, env=env).returncode == 0
    started = run_cli("--json", "serve", "--detach", "--concurrency", "3",
                      "--reconcile-every", "7", cwd=root, env=env)  # fmt: skip
    assert started.returncode == 0, started.stderr
    data = json.loads(started.stdout)
    assert (data["edge_port"], data["dns_port"], data["api_port"]) == (
        edge_port, dns_port, api_port
    )  # fmt: skip
    command = Path(f"/proc/{data['pid']}/cmdline").read_bytes().split(b"\0")
    for flag, value in (("--port", edge_port), ("--dns-port", dns_port), ("--api-port", api_port),
                        ("--concurrency", 3), ("--reconcile-every", 7)):  # fmt: skip
        assert command[command.index(flag.encode()) + 1] == str(value).encode(), flag
    health = eventually(lambda: _get(f"http://127.0.0.1:{api_port}/healthz"), timeout=20)
    assert b"ok" in health

    moved = run_cli("serve", "--detach", "--port", str(free_port()), cwd=root, env=env)
    assert moved.returncode == 2
    assert f"already runs here with its edge on port {edge_port}" in moved.stderr
    assert "stop --all" in moved.stderr


def test_a_taken_dns_port_is_named_with_its_protocol(
    project: tuple[Path, dict[str, str]],
) -> None:
    root, env = project
    with _udp_only_taken() as (_udp, port):
        env = {**env, "BRANCHLINE_EDGE_PORT": "0", "BRANCHLINE_DNS_PORT": str(port)}
        assert run_cli("db", "init", cwd=root, env=env).returncode == 0
        done = run_cli("serve", "--detach", cwd=root, env=env)
    assert done.returncode == 2
    assert f"port {port} (the DNS server, UDP) is in use by pid " in done.stderr
    assert "[edge] dns_port = " in done.stderr and "BRANCHLINE_DNS_PORT=" in done.stderr


@contextlib.contextmanager
def _udp_only_taken() -> Iterator[tuple[socket.socket, int]]:
    """A UDP socket bound to a port whose TCP side is free (a client connection's
    local end may hold the same number for TCP)."""
    for _ in range(50):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        if ports.is_free(port):
            with udp:
                yield udp, port
            return
        udp.close()
    raise AssertionError("no port was free for TCP among 50 bound for UDP")


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            body: bytes = answer.read()
            return body
    except OSError:
        return None
