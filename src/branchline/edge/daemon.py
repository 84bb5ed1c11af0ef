"""The long-running local parts: the edge proxy and the zone's DNS server (in a
child process of their own, `edge/process.py`, so that nothing else can hold a
request), the service supervisor and the state database's keep-alive; with
`workers`, the pipelines' workers too (`branchline serve`).

`run_foreground` is `branchline edge` (or `serve`). Commands that need them call
`ensure_running`, which starts `branchline serve` in the background when nothing
runs and says so; `stop_workers` pauses serve's workers while its edge keeps
serving (SIGUSR1; SIGUSR2 resumes them), `stop` ends it. Its address is kept in
`edge.json` in the state directory, next to the process id and start time that
identify it and whether its workers run.

Its ports are the project's fixed addresses (`[edge]`): a port held by another
program is an error naming that program, never a silent move to another port
that would leave the URLs in pull requests' comments stale.
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

from branchline import ports, processes
from branchline.config import EdgeConfig
from branchline.errors import BranchlineError, UsageError
from branchline.masking import mask_url
from branchline.processes import ProcessId, private_log, start_time_of
from branchline.store import Store

logger = logging.getLogger(__name__)
Background = Callable[[int, int], Coroutine[Any, Any, None]]
# One supervision pass, given the edge's and DNS's ports (services started again are
# told their siblings' URLs through the edge).
Supervise = Callable[[int, int], Awaitable[list[str]]]

DEFAULT_EDGE_PORT = EdgeConfig().port
DEFAULT_DNS_PORT = EdgeConfig().dns_port
STATE_FILE = "edge.json"
PAUSE, RESUME = signal.SIGUSR1, signal.SIGUSR2  # serve's workers, its edge unaffected


@dataclass(frozen=True)
class EdgeInfo:
    pid: int
    start_time: int
    edge_port: int
    dns_port: int
    workers: bool = False  # the pipelines' workers run in it now
    can_work: bool = False  # `branchline serve` (not `edge`): its workers can resume
    edge_bind: str = ports.LOOPBACK  # the address the edge and DNS listen on

    @property
    def edge_host(self) -> str:
        """The address this machine reaches the edge and DNS on."""
        return ports.reachable(self.edge_bind)

    @property
    def alive(self) -> bool:
        return ProcessId(self.pid, self.start_time).alive()


def read_info(state_dir: Path) -> EdgeInfo | None:
    """The running edge's facts, or None when it is not running."""
    try:
        raw = json.loads((state_dir / STATE_FILE).read_text())
        workers = bool(raw.get("workers", False))
        info = EdgeInfo(int(raw["pid"]), int(raw["start_time"]), int(raw["edge_port"]),
                        int(raw["dns_port"]), workers, bool(raw.get("can_work", workers)),
                        str(raw.get("edge_bind", ports.LOOPBACK)))  # fmt: skip
    except (OSError, ValueError, KeyError):
        return None
    return info if info.alive else None


def _write_info(
    state_dir: Path, edge_port: int, dns_port: int, workers: bool, can_work: bool, bind: str
) -> None:
    pid = os.getpid()
    info = {"pid": pid, "start_time": start_time_of(pid), "edge_port": edge_port,
            "dns_port": dns_port, "workers": workers, "can_work": can_work,
            "edge_bind": bind}  # fmt: skip
    tmp = state_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(info))
    tmp.replace(state_dir / STATE_FILE)


# What each port is, and the key that sets it (for errors that say how to move it).
PORT_SETTINGS = {
    "edge": ("the edge", "port", "BRANCHLINE_EDGE_PORT", "--port"),
    "dns": ("the DNS server", "dns_port", "BRANCHLINE_DNS_PORT", "--dns-port"),
    "api": ("the HTTP server", "api_port", "BRANCHLINE_API_PORT", "--api-port"),
}


class PortTakenError(UsageError):
    """A port the project is set to use is held by another program."""


def check_port(port: int, which: str, host: str = ports.LOOPBACK) -> None:
    """Raise PortTakenError, naming who holds it and how to choose another, when
    `port` (0: any free one) cannot be bound on `host`. DNS needs it for UDP and TCP.
    An address this machine does not have is an error saying how to change it."""
    _check_address(host, which)
    if port == 0:
        return
    for udp in (False, True) if which == "dns" else (False,):
        if ports.is_free(port, udp=udp, host=host):
            continue
        held = ports.holder(port, udp=udp, host=host)
        if _edge_of_a_dead_serve(held):
            # The edge's process of a serve that was just killed: it is ending.
            deadline = time.monotonic() + EDGE_GONE_WITHIN
            while not ports.is_free(port, udp=udp, host=host) and time.monotonic() < deadline:
                time.sleep(0.05)
            if ports.is_free(port, udp=udp, host=host):
                continue
            held = ports.holder(port, udp=udp, host=host)
        who = held.describe() if held is not None else "another program"
        what, key, variable, flag = PORT_SETTINGS[which]
        other = port + 10
        on = "" if host == ports.LOOPBACK else f" on {host}"
        raise PortTakenError(
            f"port {port}{on} ({what}, {'UDP' if udp else 'TCP'}) is in use by {who}",
            hint=f"Stop that program, or give this project another port: `[edge] {key} = "
            f"{other}` in branchline.toml (or {variable}={other}, or `{flag} {other}`). "
            "The port stays fixed: previews' URLs carry it.",
        )


def _check_address(host: str, which: str) -> None:
    """An address of another machine (or none at all) cannot be listened on: say so,
    rather than as a port in use."""
    import errno
    import socket

    with socket.socket(ports.family(host), socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, 0))
        except OSError as exc:
            if exc.errno not in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                return  # anything else is the port check's to tell
            key = "[server] bind" if which == "api" else "[edge] bind"
            flag = "--api-bind" if which == "api" else "--bind"
            raise UsageError(
                f"cannot listen on {host} ({PORT_SETTINGS[which][0]}): this machine has "
                f"no such address ({exc.strerror})",
                hint=f"Use one of this machine's addresses, 127.0.0.1 or 0.0.0.0 (every "
                f"interface): `{key}` in branchline.toml or `{flag}`.",
            ) from None


EDGE_GONE_WITHIN = 5.0  # seconds an orphaned edge process takes to let go of its ports


def _edge_of_a_dead_serve(held: ports.Holder | None) -> bool:
    """An edge's process (`python -m branchline.edge.process`) whose serve is gone:
    it ends by itself (its standard input closed)."""
    from branchline.edge.process import MODULE as EDGE_MODULE  # only when a port is taken

    if held is None or held.pid is None or EDGE_MODULE not in (held.command or ""):
        return False
    parent = processes.parent_of(held.pid)
    command = processes.command_line(parent) if parent is not None else None
    if command is None:
        return True  # gone meanwhile (or its parent is: re-parented to init, not serve)
    return not any("branchline" in word for word in command)


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
    edge_bind: str = ports.LOOPBACK,
) -> None:
    """Serve until SIGINT or SIGTERM, the edge and DNS on `edge_bind`. One edge per
    state directory: a lock held for the process's lifetime (released by the kernel if
    it dies) says so. `background` (the pipelines' workers) runs beside, given the
    edge's and DNS's ports."""
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
            store, project, zone, state_dir, supervise, edge_port, dns_port, on_ready,
            background, edge_bind,
        )  # fmt: skip
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
    edge_bind: str = ports.LOOPBACK,
) -> None:
    await asyncio.to_thread(check_port, edge_port, "edge", edge_bind)
    await asyncio.to_thread(check_port, dns_port, "dns", edge_bind)
    asked: set[str] = set()  # "stop", "pause", "resume": what signals asked for
    wake = asyncio.Event()

    def ask(what: str) -> None:
        asked.add(what)
        wake.set()

    loop = asyncio.get_running_loop()
    for sig, what in ((signal.SIGINT, "stop"), (signal.SIGTERM, "stop"),
                      (PAUSE, "pause"), (RESUME, "resume")):  # fmt: skip
        loop.add_signal_handler(sig, ask, what)
    # The edge and DNS run in a process of their own: nothing here can hold them.
    from branchline.edge.process import EdgeProcess  # serve's alone: not for `status`

    edge = EdgeProcess(store, project=project, zone=zone, edge_port=edge_port,
                       dns_port=dns_port, host=edge_bind)  # fmt: skip
    await edge.start()
    beside = [asyncio.create_task(edge.watch()), asyncio.create_task(store.keep_alive())]
    try:
        async with store.pooled():
            workers = _Workers(background, edge.edge_port, edge.dns_port, lambda: ask("stop"))
            try:
                workers.start()
                _write_info(state_dir, edge.edge_port, edge.dns_port, workers.running,
                            background is not None, edge_bind)  # fmt: skip
                if on_ready is not None:
                    on_ready(edge.edge_port, edge.dns_port)
                while "stop" not in asked:
                    if asked & {"pause", "resume"}:
                        # The last word wins: a resume right after a pause resumes.
                        await (workers.resume() if "resume" in asked else workers.pause())
                        asked.difference_update({"pause", "resume"})
                        _write_info(state_dir, edge.edge_port, edge.dns_port, workers.running,
                                    background is not None, edge_bind)  # fmt: skip
                    try:
                        if supervise is not None:
                            await supervise(edge.edge_port, edge.dns_port)
                    except Exception as exc:  # the store may be restarting; keep serving
                        logger.warning("supervision pass failed: %s", mask_url(str(exc)))
                    workers.revive()
                    wake.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(wake.wait(), timeout=1.0)
            finally:
                (state_dir / STATE_FILE).unlink(missing_ok=True)
                await workers.pause()
    finally:
        for task in beside:
            task.cancel()
        await asyncio.gather(*beside, return_exceptions=True)
        await edge.stop()


class _Workers:
    """serve's pipelines' workers: started, paused (`branchline stop`) and resumed
    while the edge keeps serving. When they fail by themselves (the state database
    died under them), they are started again with backoff: serve never ends for it."""

    def __init__(
        self, background: Background | None, edge_port: int, dns_port: int,
        ended: Callable[[], None],
    ) -> None:  # fmt: skip
        self.background = background
        self.ports = (edge_port, dns_port)
        self.ended = ended
        self.task: asyncio.Task[None] | None = None
        self.failed_at: float | None = None
        self.started_at = 0.0
        self.pause_for = 0.0

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def start(self) -> None:
        if self.background is None or self.running:
            return
        task = asyncio.create_task(self.background(*self.ports))
        task.add_done_callback(self._done)
        self.task = task
        self.started_at = time.monotonic()

    def _done(self, task: asyncio.Task[None]) -> None:
        if task is not self.task or task.cancelled():
            return
        error = task.exception()
        if error is None:
            self.ended()  # they finished on purpose
            return
        if time.monotonic() - self.started_at > 60:
            self.pause_for = 0.0  # they worked for a while: a fresh failure
        self.pause_for = min(max(self.pause_for * 2, 1.0), 30.0)
        self.failed_at = time.monotonic()
        logger.warning(
            "the workers failed (%s); starting them again in %.0f s; the edge keeps serving",
            mask_url(" ".join(str(error).split()) or type(error).__name__)[:300],
            self.pause_for,
        )  # fmt: skip

    def revive(self) -> None:
        """Start failed workers again once their pause is over."""
        failed_at = self.failed_at
        if failed_at is None or self.task is None or not self.task.done():
            return
        if time.monotonic() - failed_at >= self.pause_for:
            self.failed_at = None
            self.start()

    async def resume(self) -> None:
        if not self.running:
            logger.info("workers resumed")
        self.start()

    async def pause(self) -> None:
        task, self.task = self.task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        logger.info("workers stopped; the edge keeps serving")


def describe_start(info: EdgeInfo, resumed: bool) -> str:
    """What a command that needed serve tells the user it did."""
    did = "resumed branchline serve's workers" if resumed else "started branchline serve"
    return (
        f"{did} in the background (edge on port {info.edge_port}, DNS on {info.dns_port}); "
        "`branchline stop` stops its workers"
    )


def ensure_running(
    state_dir: Path, config_path: Path, *, timeout: float = 20.0, workers: bool = True,
    args: tuple[str, ...] = (),
) -> tuple[EdgeInfo, bool]:  # fmt: skip
    """The running edge, starting it in the background first when needed: as
    `branchline serve` (edge and pipelines' workers) unless `workers` is False, with
    `args` (its options; by default it takes the project's `[edge]` ports). A serve
    whose workers were stopped gets them back. Returns (info, started_now), where
    started_now is also true when its workers were resumed."""
    state_dir.mkdir(parents=True, exist_ok=True)
    # One command at a time decides whether to start it: parallel deploys share one edge.
    with (state_dir / "edge.spawn.lock").open("a") as spawn_lock:
        fcntl.flock(spawn_lock, fcntl.LOCK_EX)
        info = read_info(state_dir)
        if info is not None:
            if workers and not info.workers and info.can_work:
                return _signal_workers(state_dir, info, RESUME, want=True, timeout=timeout), True
            return info, False
        return _spawn(state_dir, config_path, timeout, workers, args), True


def _spawn(
    state_dir: Path, config_path: Path, timeout: float, workers: bool, args: tuple[str, ...]
) -> EdgeInfo:
    path = state_dir / "edge.log"
    log = private_log(path)
    began = path.stat().st_size
    env = {**os.environ, "BRANCHLINE_STATE_DIR": str(state_dir)}
    command = "serve" if workers else "edge"
    child = subprocess.Popen(
        [sys.executable, "-m", "branchline", "--config", str(config_path), command, *args],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
        start_new_session=True,  # outlives this command
    )  # fmt: skip
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = read_info(state_dir)
        if info is not None:
            return info
        if child.poll() is not None:
            raise _did_not_start(path, began)
        time.sleep(0.05)
    raise BranchlineError(
        "the edge did not start in the background",
        hint=f"See {path}, or run `branchline edge` in a terminal.",
    )


def _did_not_start(log: Path, offset: int) -> BranchlineError:
    """Why the background serve ended before it served: its own error and hint."""
    with log.open("rb") as f:
        f.seek(offset)
        said = f.read(65536).decode(errors="replace").splitlines()
    error = next((line for line in reversed(said) if line.startswith("error: ")), None)
    hint = next((line for line in reversed(said) if line.startswith("hint: ")), None)
    if error is None:
        return BranchlineError(
            "branchline serve stopped as soon as it started in the background",
            hint=f"See {log}, or run `branchline serve` in a terminal.",
        )
    return UsageError(
        f"branchline serve could not start: {error.removeprefix('error: ')}",
        hint=(hint or "").removeprefix("hint: ") or f"See {log}.",
    )


def stop_workers(state_dir: Path, *, timeout: float = 60.0) -> bool:
    """Stop serve's workers (running jobs are cancelled; no new ones start) and leave
    its edge, DNS and supervisor serving. False when no workers were running."""
    info = read_info(state_dir)
    if info is None or not info.workers:
        return False
    _signal_workers(state_dir, info, PAUSE, want=False, timeout=timeout)
    return True


def _signal_workers(
    state_dir: Path, info: EdgeInfo, signum: int, *, want: bool, timeout: float
) -> EdgeInfo:
    os.kill(info.pid, signum)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = read_info(state_dir)
        if now is None:
            raise BranchlineError(
                "branchline serve ended while its workers were being "
                f"{'started' if want else 'stopped'}",
                hint=f"See {state_dir / 'edge.log'}.",
            )
        if now.workers == want:
            return now
        time.sleep(0.05)
    raise BranchlineError(
        f"branchline serve (pid {info.pid}) did not {'start' if want else 'stop'} its "
        f"workers within {timeout:.0f} s",
        hint=f"See {state_dir / 'edge.log'}; `branchline stop --all` stops it.",
    )


def stop(state_dir: Path, *, timeout: float = 15.0) -> bool:
    """Stop the background edge (and its workers); False when it was not running.
    Killed, with what it started, when it has not ended `timeout` seconds after
    being asked to."""
    info = read_info(state_dir)
    if info is None:
        return False
    process = ProcessId(info.pid, info.start_time)
    with contextlib.suppress(ProcessLookupError):
        os.kill(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while process.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if process.alive():
        # Its whole process group: serve leads one (it was started in a session of
        # its own), so a copy, a git or a step it had under way dies with it instead
        # of running on orphaned. Services and clusters have groups of their own.
        kill = os.killpg if _leads_group(info.pid) else os.kill
        with contextlib.suppress(ProcessLookupError):
            kill(info.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while process.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    return True


def _leads_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False
