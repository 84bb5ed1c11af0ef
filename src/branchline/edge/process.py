"""The edge proxy and the DNS server in a process of their own.

Traffic must not wait for anything else serve does: the API parsing a large body,
a worker, reconcile or a supervision pass would hold a shared event loop (and a C
call such as a JSON parse holds the whole interpreter, so a thread is not enough).
`EdgeProcess` (in serve) starts `python -m branchline.edge.process`, tells it on its
standard input where the state database is (the URL carries a password: never on
the command line), and reads back the ports it serves. The child loads the routes
and the zone from the store and follows their changes on connections of its own
(LISTEN/NOTIFY); when the state database is gone it keeps serving the last ones.

The child ends when serve tells it to (a `stop` line: in-flight requests finish),
and at once when serve dies (its standard input closes; on Linux the kernel also
sends SIGTERM). serve starts it again, on the same ports, if it ends by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from branchline.edge.dns_server import ZoneServer
from branchline.edge.proxy import EdgeProxy
from branchline.errors import BranchlineError, UsageError
from branchline.masking import mask_url
from branchline.store import Store
from branchline.store.state import StateLocation

logger = logging.getLogger(__name__)
MODULE = "branchline.edge.process"
START_TIMEOUT = 60.0  # seconds for the child to load the routes and bind
QUICK_GRACE = 0.5  # in-flight requests' time when serve died (its successor needs the port)
STOP_GRACE = 10.0  # ... when serve stops in order
RESTART_LONGEST = 10.0  # the longest pause before starting a dead child again
LOOP_WATCH_EVERY, LOOP_STALL = 0.05, 0.1  # the child's loop watch (seconds)
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class EdgeSpec:
    """What the child is told on its standard input."""

    url: str
    state_dir: str
    project: str
    zone: str
    edge_port: int
    dns_port: int
    host: str = "127.0.0.1"  # the address both listen on


# -- serve's side ---------------------------------------------------------------------


class EdgeProcess:
    """The edge's process, seen from serve: `start` (errors of the child raised here,
    with their hint), `watch` (start it again when it ends by itself), `stop`."""

    def __init__(self, store: Store, *, project: str, zone: str, edge_port: int,
                 dns_port: int, host: str = "127.0.0.1") -> None:  # fmt: skip
        self.store = store
        self.host = host
        self.project = project
        self.zone = zone
        self.edge_port = edge_port
        self.dns_port = dns_port
        self.restarts = 0
        self._child: asyncio.subprocess.Process | None = None
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    async def start(self) -> None:
        spec = EdgeSpec(self.store.url, str(self.store.location.state_dir), self.project,
                        self.zone, self.edge_port, self.dns_port, self.host)  # fmt: skip
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", MODULE,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert child.stdin is not None and child.stdout is not None
        self._child = child
        child.stdin.write(json.dumps(asdict(spec)).encode() + b"\n")
        await child.stdin.drain()
        try:
            async with asyncio.timeout(START_TIMEOUT):
                line = await child.stdout.readline()
        except TimeoutError:
            line = b""
        said = _parse(line)
        if "edge_port" not in said:
            await self._end(child, quick=True)
            if "error" in said:
                raise UsageError(str(said["error"]), hint=str(said.get("hint") or ""))
            raise BranchlineError(
                f"the edge's process did not start within {START_TIMEOUT:.0f} s",
                hint="See serve's log (edge.log when detached) for what it said.",
            )
        # Fixed from now on: a restarted child serves the same addresses.
        self.edge_port, self.dns_port = int(str(said["edge_port"])), int(str(said["dns_port"]))

    async def watch(self) -> None:
        """Start the child again whenever it ends without being asked to, until
        cancelled; the pause between tries grows while it keeps failing."""
        pause = 0.2
        while True:
            child = self._child
            code = await child.wait() if child is not None else None
            if self._stopping:
                return
            logger.warning("the edge's process ended (exit code %s); starting it again", code)
            await asyncio.sleep(pause)
            try:
                await self.start()
                self.restarts += 1
                logger.warning("the edge's process runs again (pid %s)", self.pid)
                pause = 0.2
            except BranchlineError as exc:
                logger.warning("the edge's process could not start again: %s (%s)",
                               exc.message, exc.hint)  # fmt: skip
                self._child = None
                pause = min(pause * 2, RESTART_LONGEST)

    async def stop(self) -> None:
        """Let in-flight requests finish, then end the child. Idempotent."""
        self._stopping = True
        child, self._child = self._child, None
        if child is not None:
            await self._end(child, quick=False)

    async def _end(self, child: asyncio.subprocess.Process, *, quick: bool) -> None:
        if child.returncode is None and child.stdin is not None:
            with contextlib.suppress(OSError, RuntimeError):
                child.stdin.write(b"quick\n" if quick else b"stop\n")
                await child.stdin.drain()
            child.stdin.close()
        try:
            async with asyncio.timeout((QUICK_GRACE if quick else STOP_GRACE) + 5):
                await child.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await child.wait()


def _parse(line: bytes) -> dict[str, object]:
    with contextlib.suppress(ValueError):
        said = json.loads(line)
        if isinstance(said, dict):
            return said
    return {}


# -- the child ----------------------------------------------------------------------


def main() -> None:
    """`python -m branchline.edge.process`: serve until told to stop or serve dies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches serve, which stops us
    parent = os.getppid()
    _die_with(parent)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("branchline").setLevel(logging.INFO)
    spec = EdgeSpec(**json.loads(sys.stdin.readline()))
    sys.exit(asyncio.run(_serve(spec)))


def _die_with(parent: int) -> None:
    """Linux: SIGTERM when the parent dies. Elsewhere (no prctl) nothing more is
    needed: serve's end closes our standard input, and that ends us (`_read_orders`)."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the line above
        sys.exit(0)


def _say(what: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(what) + "\n")
    sys.stdout.flush()


async def _serve(spec: EdgeSpec) -> int:
    store = Store(StateLocation(Path(spec.state_dir), external_url=spec.url))
    edge = EdgeProxy(store, host=spec.host, port=spec.edge_port)
    dns = ZoneServer(spec.project, spec.zone, store, host=spec.host, port=spec.dns_port)
    try:
        await edge.start()
        await asyncio.to_thread(dns.start)
    except (BranchlineError, OSError) as exc:
        await edge.stop(0)
        message = exc.message if isinstance(exc, BranchlineError) else str(exc)
        hint = exc.hint if isinstance(exc, BranchlineError) else "See serve's log."
        _say({"error": mask_url(message), "hint": hint})
        return 1
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    quick = [False]

    def ask(how_quick: bool) -> None:
        quick[0] = quick[0] or how_quick
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, ask, True)
    threading.Thread(target=_read_orders, args=(loop, ask), daemon=True).start()
    watch = asyncio.create_task(_watch_loop())
    _say({"edge_port": edge.port, "dns_port": dns.port, "pid": os.getpid()})
    await stop.wait()
    watch.cancel()
    await asyncio.to_thread(dns.stop)
    await edge.stop(QUICK_GRACE if quick[0] else STOP_GRACE)
    return 0


def _read_orders(loop: asyncio.AbstractEventLoop, ask: Callable[[bool], None]) -> None:
    """`stop` (in order) or `quick`; the end of input means serve is gone: quick."""
    for line in sys.stdin:
        if line.strip() in ("stop", "quick"):
            loop.call_soon_threadsafe(ask, line.strip() == "quick")
            return
    loop.call_soon_threadsafe(ask, True)


async def _watch_loop() -> None:
    """Say when the edge's own loop was held (nothing else runs on it)."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + LOOP_WATCH_EVERY
        await asyncio.sleep(LOOP_WATCH_EVERY)
        late = loop.time() - due
        if late > LOOP_STALL:
            logger.warning("the edge's loop stalled for %.0f ms", late * 1e3)


if __name__ == "__main__":
    main()
