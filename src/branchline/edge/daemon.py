"""The long-running local parts: the edge proxy, the zone's DNS server and the
service supervisor, in one process; with `workers`, the pipelines' workers too
(`branchline serve`).

`run_foreground` is `branchline edge` (or `serve`). Commands that need them call
`ensure_running`, which starts `branchline serve` in the background when nothing
runs and says so; `stop` ends it. Its address is kept in `edge.json` in the state
directory, next to the process id and start time that identify it and whether
it runs workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from branchline.edge.dns_server import ZoneServer
from branchline.edge.proxy import EdgeProxy
from branchline.errors import BranchlineError
from branchline.masking import mask_url
from branchline.postgres.cluster import port_is_free
from branchline.processes import ProcessId, private_log, start_time_of
from branchline.store import Store

logger = logging.getLogger(__name__)
Background = Callable[[int, int], Coroutine[Any, Any, None]]
# One supervision pass, given the edge's and DNS's ports (services started again are
# told their siblings' URLs through the edge).
Supervise = Callable[[int, int], Awaitable[list[str]]]

DEFAULT_EDGE_PORT = 8080
DEFAULT_DNS_PORT = 8053
STATE_FILE = "edge.json"


@dataclass(frozen=True)
class EdgeInfo:
    pid: int
    start_time: int
    edge_port: int
    dns_port: int
    workers: bool = False  # `branchline serve`: it runs the pipelines too

    @property
    def alive(self) -> bool:
        return ProcessId(self.pid, self.start_time).alive()


def read_info(state_dir: Path) -> EdgeInfo | None:
    """The running edge's facts, or None when it is not running."""
    try:
        raw = json.loads((state_dir / STATE_FILE).read_text())
        info = EdgeInfo(int(raw["pid"]), int(raw["start_time"]), int(raw["edge_port"]),
                        int(raw["dns_port"]), bool(raw.get("workers", False)))  # fmt: skip
    except (OSError, ValueError, KeyError):
        return None
    return info if info.alive else None


def _write_info(state_dir: Path, edge_port: int, dns_port: int, workers: bool) -> None:
    pid = os.getpid()
    info = {"pid": pid, "start_time": start_time_of(pid), "edge_port": edge_port,
            "dns_port": dns_port, "workers": workers}  # fmt: skip
    tmp = state_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(info))
    tmp.replace(state_dir / STATE_FILE)


def _port(wanted: int) -> int:
    """The wanted port if free, else 0 (any free port)."""
    return wanted if wanted and port_is_free(wanted) else 0


async def run_foreground(
    store: Store,
    *,
    project: str,
    zone: str,
    state_dir: Path,
    supervise: Supervise | None,
    edge_port: int = DEFAULT_EDGE_PORT,
    dns_port: int = DEFAULT_DNS_PORT,
    on_ready: Callable[[int, int], None] | None = None,
    background: Background | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM. One edge per state directory: a lock held for
    the process's lifetime (released by the kernel if it dies) says so. `background`
    (the pipelines' workers) runs beside, given the edge's and DNS's ports."""
    lock = (state_dir / "edge.lock").open("a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise BranchlineError(
            "the edge is already running for this state directory",
            hint="Stop it with `branchline stop`, or use the one that runs.",
        ) from None
    try:
        await _serve(
            store, project, zone, state_dir, supervise, edge_port, dns_port, on_ready, background
        )
    finally:
        lock.close()


async def _serve(
    store: Store,
    project: str,
    zone: str,
    state_dir: Path,
    supervise: Supervise | None,
    edge_port: int,
    dns_port: int,
    on_ready: Callable[[int, int], None] | None,
    background: Background | None = None,
) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    async with store.pooled():
        edge = EdgeProxy(store, port=_port(edge_port))
        dns = ZoneServer(project, zone, store, port=_port(dns_port))
        await edge.start()
        await asyncio.to_thread(dns.start)
        extra: asyncio.Task[None] | None = None
        if background is not None:
            extra = asyncio.create_task(background(edge.port, dns.port))
            extra.add_done_callback(lambda _t: stopping.set())  # it ended: so does serve
        try:
            _write_info(state_dir, edge.port, dns.port, background is not None)
            if on_ready is not None:
                on_ready(edge.port, dns.port)
            while not stopping.is_set():
                try:
                    if supervise is not None:
                        await supervise(edge.port, dns.port)
                except Exception as exc:  # the store may be restarting; keep serving
                    logger.warning("supervision pass failed: %s", mask_url(str(exc)))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stopping.wait(), timeout=1.0)
        finally:
            (state_dir / STATE_FILE).unlink(missing_ok=True)
            if extra is not None:
                extra.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await extra
            await asyncio.to_thread(dns.stop)
            await edge.stop()


def ensure_running(
    state_dir: Path, config_path: Path, *, timeout: float = 20.0, workers: bool = True
) -> tuple[EdgeInfo, bool]:
    """The running edge, starting it in the background first when needed: as
    `branchline serve` (edge and pipelines' workers) unless `workers` is False.
    Returns (info, started_now)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    # One command at a time decides whether to start it: parallel deploys share one edge.
    with (state_dir / "edge.spawn.lock").open("a") as spawn_lock:
        fcntl.flock(spawn_lock, fcntl.LOCK_EX)
        info = read_info(state_dir)
        if info is not None:
            return info, False
        return _spawn(state_dir, config_path, timeout, workers), True


def _spawn(state_dir: Path, config_path: Path, timeout: float, workers: bool) -> EdgeInfo:
    log = private_log(state_dir / "edge.log")
    env = {**os.environ, "BRANCHLINE_STATE_DIR": str(state_dir)}
    command = "serve" if workers else "edge"
    subprocess.Popen(
        [sys.executable, "-m", "branchline", "--config", str(config_path), command],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
        start_new_session=True,  # outlives this command
    )  # fmt: skip
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = read_info(state_dir)
        if info is not None:
            return info
        time.sleep(0.05)
    raise BranchlineError(
        "the edge did not start in the background",
        hint=f"See {state_dir / 'edge.log'}, or run `branchline edge` in a terminal.",
    )


def stop(state_dir: Path) -> bool:
    """Stop the background edge; False when it was not running."""
    info = read_info(state_dir)
    if info is None:
        return False
    process = ProcessId(info.pid, info.start_time)
    with contextlib.suppress(ProcessLookupError):
        os.kill(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while process.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if process.alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(info.pid, signal.SIGKILL)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    return True
