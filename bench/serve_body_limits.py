"""Memory and refusal time of a real `branchline serve` under hostile request bodies.

Starts `branchline serve --detach` for a throw-away project and state directory,
then sends its HTTP server:

- three unsigned 200 MB webhook bodies one after another, streamed chunked (no
  Content-Length gives them away: the server must count), then three at once;
- a 200 MB webhook body announced by Content-Length (refused from the head);
- a 24 MB body to `POST /api/branches` without a token (refused from the head: 413
  for its announced size before the token is even looked up), and the same chunked
  (no size announced: 401 for the missing token, before a byte of it is read).

Reads serve's resident memory (VmRSS) before, at its peak (sampled every 20 ms)
and after each phase. The raw reference is the webhook cap itself (25 MB): what one
refused body may cost at most.

Targets: peak growth within 2 caps for bodies one at a time and 5 caps for three at
once (each holds up to one cap until refused, plus transient copies), growth left
afterwards within 1 cap, every oversized body answered 413 after at most 2 caps
were sent, and the head-only refusals within 200 ms. Exits 1 on a miss.

    .venv/bin/python bench/serve_body_limits.py [--size-mb 200]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from branchline.postgres.cluster import free_port

MB = 1024 * 1024
CAP = 25 * MB
HEAD_ONLY_MS = 200.0
SENDER_DOES_NOT_KNOW = "the webhook secret: the bodies sent here are signed with another"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Peak:
    """Samples a process's RSS in a thread while a phase runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = self.peak = rss_mb(pid)
        self.after = 0.0
        self._on = True
        self._thread = threading.Thread(target=self._sample)

    def _sample(self) -> None:
        while self._on:
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.02)

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._on = False
        self._thread.join()
        self.after = rss_mb(self.pid)


def _status(sock: socket.socket) -> int:
    sock.settimeout(10)
    try:
        return int(sock.recv(64).split(b" ", 2)[1])
    except (OSError, IndexError, ValueError):
        return 0


WEBHOOK_HEAD = (
    b"POST /webhooks/github HTTP/1.1\r\nHost: bench\r\nX-GitHub-Event: push\r\n"
    b"X-GitHub-Delivery: 1\r\nX-Hub-Signature-256: sha256=" + b"0" * 64 + b"\r\n"
)


def streamed(port: int, size: int) -> tuple[int, int, float]:
    """(status, bytes sent before the refusal, seconds) for a chunked unsigned body."""
    began = time.perf_counter()
    sent = 0
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(WEBHOOK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
        piece = b"%x\r\n%b\r\n" % (MB, b"x" * MB)
        try:
            while sent < size:
                sock.sendall(piece)
                sent += MB
        except OSError:
            pass
        status = _status(sock)
    return status, sent, time.perf_counter() - began


def head_only(port: int, head: bytes) -> tuple[int, float]:
    """(status, ms) for a head announcing a body that is never sent."""
    began = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head)
        status = _status(sock)
    return status, (time.perf_counter() - began) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=200)
    size = parser.parse_args().size_mb * MB

    work = Path(tempfile.mkdtemp(prefix="bench-limits-"))
    work.chmod(0o755)
    api_port = free_port()
    (work / "branchline.toml").write_text(
        '[project]\nname = "limits"\nzone = "limits.localhost"\n[database]\nmigrate = "true"\n'
        "[edge]\nport = 0\ndns_port = 0\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRANCHLINE_")}
    env["BRANCHLINE_STATE_DIR"] = str(work / "state")
    env["BRANCHLINE_API_PORT"] = str(api_port)
    env["BRANCHLINE_WEBHOOK_SECRET"] = SENDER_DOES_NOT_KNOW

    def cli(*args: str) -> Any:
        command = [sys.executable, "-m", "branchline", "--json", *args]
        done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True,
                              timeout=120, check=False)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(done.stdout + done.stderr)
        return json.loads(done.stdout) if done.stdout.strip() else None

    try:
        pid = int(cli("serve", "--detach")["pid"])
        deadline = time.monotonic() + 30
        while head_only(api_port, b"GET /healthz HTTP/1.1\r\nHost: b\r\n\r\n")[0] != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("serve's HTTP server did not come up")
            time.sleep(0.1)
        return measure(pid, api_port, size)
    finally:
        subprocess.run([sys.executable, "-m", "branchline", "stop", "--all"], cwd=work, env=env,
                       capture_output=True, timeout=120, check=False)  # fmt: skip
        subprocess.run([sys.executable, "-m", "branchline", "state", "stop"], cwd=work, env=env,
                       capture_output=True, timeout=120, check=False)  # fmt: skip
        shutil.rmtree(work, ignore_errors=True)


def measure(pid: int, port: int, size: int) -> int:
    with Peak(pid) as one_by_one:
        serial = [streamed(port, size) for _ in range(3)]
    with Peak(pid) as together, ThreadPoolExecutor(3) as pool:
        parallel = list(pool.map(lambda _: streamed(port, size), range(3)))
    announced = head_only(port, WEBHOOK_HEAD + b"Content-Length: %d\r\n\r\n" % size)
    api_head = b"POST /api/branches HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
    no_token = head_only(port, api_head + b"Content-Length: %d\r\n\r\n" % (24 * MB))
    no_token_chunked = head_only(port, api_head + b"Transfer-Encoding: chunked\r\n\r\n")

    cap_mb = CAP / MB
    rows: list[tuple[str, str]] = []

    def phase(name: str, peak: Peak, bodies: list[tuple[int, int, float]]) -> None:
        sent = ", ".join(f"{s / MB:.0f}" for _, s, _ in bodies)
        codes = ",".join(str(c) for c, _, _ in bodies)
        rows.append((f"{name}: RSS before / peak / after",
                     f"{peak.before:.0f} / {peak.peak:.0f} / {peak.after:.0f} MB"))  # fmt: skip
        rows.append((f"{name}: answers; MB sent before each", f"{codes}; {sent}"))

    phase("3 x 200 MB one at a time", one_by_one, serial)
    phase("3 x 200 MB at once", together, parallel)
    rows.append(("200 MB by Content-Length: answer", f"{announced[0]} in {announced[1]:.1f} ms"))
    rows.append(("24 MB to /api/branches, no token", f"{no_token[0]} in {no_token[1]:.1f} ms"))
    rows.append(("chunked to /api/branches, no token",
                 f"{no_token_chunked[0]} in {no_token_chunked[1]:.1f} ms"))  # fmt: skip
    width = max(len(k) for k, _ in rows)
    print(f"serve (pid {pid}), body cap {cap_mb:.0f} MB, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}")  # fmt: skip
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")

    misses: list[str] = []
    check: Callable[[bool, str], None] = lambda ok, what: None if ok else misses.append(what)  # noqa: E731
    serial_growth = one_by_one.peak - one_by_one.before
    parallel_growth = together.peak - together.before
    left = together.after - one_by_one.before
    check(serial_growth <= 2 * cap_mb, f"one at a time grew {serial_growth:.0f} MB")
    check(parallel_growth <= 5 * cap_mb, f"three at once grew {parallel_growth:.0f} MB")
    check(left <= cap_mb, f"{left:.0f} MB stayed")
    for code, sent, _ in serial + parallel:
        check(code == 413 and sent <= 2 * CAP, f"a body answered {code} after {sent / MB:.0f} MB")
    check(announced[0] == 413 and announced[1] < HEAD_ONLY_MS, f"announced: {announced}")
    check(no_token[0] == 413 and no_token[1] < HEAD_ONLY_MS, f"no token: {no_token}")
    check(no_token_chunked[0] == 401 and no_token_chunked[1] < HEAD_ONLY_MS,
          f"no token, chunked: {no_token_chunked}")  # fmt: skip
    for miss in misses:
        print(f"MISS: {miss}")
    print(
        f"summary: rss_before_mb={one_by_one.before:.0f} serial_peak_mb={one_by_one.peak:.0f} "
        f"parallel_peak_mb={together.peak:.0f} after_mb={together.after:.0f} "
        f"serial_growth_caps={serial_growth / cap_mb:.2f} "
        f"parallel_growth_caps={parallel_growth / cap_mb:.2f} "
        f"announced_413_ms={announced[1]:.1f} no_token_413_ms={no_token[1]:.1f} "
        f"no_token_chunked_401_ms={no_token_chunked[1]:.1f} "
        f"target_met={'yes' if not misses else 'no'}"
    )
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
