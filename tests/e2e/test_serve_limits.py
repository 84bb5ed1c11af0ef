"""A real `branchline serve` under hostile bodies: three unsigned 200 MB webhook
bodies, streamed (chunked, so no Content-Length gives them away), leave its memory
where it was (they once took it from 204 MB to 1.12 GB); `state stop` then leaves
no socket directory behind."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from branchline.postgres.cluster import SOCKET_FILE, free_port
from branchline.store.state import cluster_home
from tests.conftest import eventually, run_cli

MB = 1024 * 1024
# Generous: the cap is 25 MB a body, and a body is freed once refused. Before the
# cap, three such bodies grew serve by about 900 MB.
MAX_GROWTH_MB = 120


def rss_mb(pid: int) -> float:
    """Resident memory of `pid`, in MB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def stream_unsigned(port: int, total: int) -> tuple[int, int]:
    """POST `total` bytes chunked to the webhook with a well-formed, wrong signature;
    (the status answered, bytes sent before the server closed)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /webhooks/github HTTP/1.1\r\nHost: test\r\nX-GitHub-Event: push\r\n"
            b"X-GitHub-Delivery: 1\r\nX-Hub-Signature-256: sha256=" + b"0" * 64 + b"\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        piece = b"%x\r\n%b\r\n" % (MB, b"x" * MB)
        try:
            while sent < total:
                sock.sendall(piece)
                sent += MB
        except OSError:
            pass  # refused: the server closed
        sock.settimeout(10)
        try:
            status = int(sock.recv(64).split(b" ", 2)[1])
        except (OSError, IndexError, ValueError):
            status = 0  # closed without an answer we could read
    return status, sent


def test_three_oversized_bodies_leave_serve_as_it_was_and_state_stop_cleans_up(
    tmp_path: Path, state_dir: Path
) -> None:
    root = tmp_path / "project"
    root.mkdir()
    api_port = free_port()
    (root / "branchline.toml").write_text(
        '[project]\nname = "limits"\nzone = "limits.localhost"\n[database]\nmigrate = "true"\n'
    )
    env = {
        "BRANCHLINE_STATE_DIR": str(state_dir),
        "BRANCHLINE_WEBHOOK_SECRET": "a secret the sender does not know",
        "BRANCHLINE_API_PORT": str(api_port),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }

    def cli(*args: str) -> Any:
        done = run_cli("--json", *args, cwd=root, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout)

    try:
        pid = cli("serve", "--detach")["pid"]
        eventually(lambda: _healthy(api_port), timeout=30)
        before = rss_mb(pid)
        peak = before
        sampling = True

        def sample() -> None:
            nonlocal peak
            while sampling:
                peak = max(peak, rss_mb(pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            answers = [stream_unsigned(api_port, 200 * MB) for _ in range(3)]
        finally:
            sampling = False
            sampler.join()
        after = rss_mb(pid)
        print(f"\nserve's RSS: {before:.0f} MB before, {peak:.0f} MB at most, {after:.0f} MB "
              f"after three unsigned 200 MB bodies; sent before each refusal: "
              f"{', '.join(f'{sent / MB:.0f} MB' for _, sent in answers)}")  # fmt: skip
        assert all(status == 413 for status, _ in answers), answers
        assert all(sent < 100 * MB for _, sent in answers), answers  # cut, not read through
        assert peak - before < MAX_GROWTH_MB and after - before < MAX_GROWTH_MB
        assert _healthy(api_port)  # and it still answers
    finally:
        run_cli("stop", "--all", cwd=root, env=env)

    # `state stop`: the state database down, and its socket directory gone with it.
    socket_dir = Path((cluster_home(state_dir) / SOCKET_FILE).read_text().strip())
    assert socket_dir.is_dir() and any(socket_dir.iterdir())
    assert cli("state", "stop") == {"stopped": True}
    assert not socket_dir.exists()
    assert cli("state", "stop") == {"stopped": False}


def _healthy(port: int) -> bool | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            return True if sock.recv(64).startswith(b"HTTP/1.1 200") else None
    except OSError:
        return None
