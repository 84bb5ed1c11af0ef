"""What is Linux-only says so on other systems (a developer's Mac), and what has a
portable way takes it: the platform check is monkeypatched, so these run anywhere."""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from branchline import keeper, ports
from branchline.edge import process as edge_process
from branchline.processes import KEEPER
from branchline.sandbox import Box, Sandbox, SandboxUnavailableError


@pytest.fixture
def on_macos(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")


def test_the_sandbox_refuses_to_run_untrusted_code_off_linux(
    on_macos: None, tmp_path: Path
) -> None:
    sandbox = Sandbox.configure(enabled=True, protected=[tmp_path / "state"], path=["/usr/bin"])
    with pytest.raises(SandboxUnavailableError) as raised:
        sandbox.wrap(["pytest"], Box(writable=(tmp_path,)), cwd=tmp_path)
    error = raised.value
    assert "needs Linux" in error.message and "macOS" in error.message
    assert "does not run that code unboxed" in error.message
    assert "Linux virtual machine" in error.hint and 'sandbox = "off"' in error.hint
    assert "unavailable on macOS" in sandbox.describe()


def test_the_sandbox_switched_off_runs_code_as_asked_off_linux(
    on_macos: None, tmp_path: Path
) -> None:
    sandbox = Sandbox.configure(enabled=False, protected=[tmp_path / "state"], path=[])
    sandbox.check()
    assert sandbox.wrap(["pytest"], Box(), cwd=tmp_path) == ["pytest"]
    assert "OFF" in sandbox.describe()


def test_the_edge_process_skips_prctl_off_linux(
    on_macos: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_prctl(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("prctl is Linux-only")

    monkeypatch.setattr(ctypes, "CDLL", no_prctl)
    edge_process._die_with(os.getppid())  # serve's end closes stdin: that is enough


def test_the_edge_process_ends_at_once_when_serve_is_gone_already(
    on_macos: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SystemExit):
        edge_process._die_with(os.getppid() + 1)


def test_the_keeper_finds_its_tree_through_ps_off_linux(on_macos: None) -> None:
    assert sys.platform == "darwin"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in keeper.descendants(os.getpid())
        assert (child.pid, os.getpid()) in keeper._parents()
    finally:
        child.kill()
        child.wait()


def test_the_keeper_skips_the_subreaper_off_linux() -> None:
    # In a process of its own: the keeper waits for every child of the process it runs in.
    code = (
        "import ctypes, sys; sys.platform = 'darwin'; ctypes.CDLL = None; "  # no prctl call
        f"sys.path.insert(0, {str(KEEPER.parent)!r}); import keeper; "
        "sys.exit(keeper.main(['--', sys.executable, '-c', 'raise SystemExit(3)']))"
    )
    done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, timeout=30)
    assert done.returncode == 3, done.stderr.decode()


def test_a_ports_holder_is_found_where_only_root_may_list_sockets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # macOS: net_connections() is root's only; each process of ours is looked into.
    def denied(kind: str = "inet") -> list[object]:
        raise psutil.AccessDenied()

    monkeypatch.setattr(psutil, "net_connections", denied)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        held = ports.holder(port)
        assert held is not None and held.pid == os.getpid() and not held.connection
        with socket.socket() as client:
            client.connect(("127.0.0.1", port))
            local = client.getsockname()[1]
            held = ports.holder(local)
            assert held is not None and held.connection and held.pid == os.getpid()
    deadline = time.monotonic() + 5
    while not ports.is_free(port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ports.holder(port) is None


def test_a_port_held_by_what_cannot_be_looked_into_is_only_said_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def denied(kind: str = "inet") -> list[object]:
        raise psutil.AccessDenied()

    monkeypatch.setattr(psutil, "net_connections", denied)
    monkeypatch.setattr(ports, "_sockets_of_each_process", lambda kind: iter(()))
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        held = ports.holder(server.getsockname()[1])
    assert held == ports.Holder(None, None)
    assert held.describe() == "another program (one this user cannot look into)"
