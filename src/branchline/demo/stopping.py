"""How the demo ends, whatever ends it: the story's end, a failure, Ctrl-C, SIGTERM
(a `timeout`, a CI cancel, `kill`) or SIGHUP (its terminal closed). Everything it
started goes: its serve (or edge), its services, its Postgres clusters, any process
still found for it by its environment, and its directory."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType

from branchline import processes
from branchline.config import load_config
from branchline.demo.scenario import Demo, config_env
from branchline.edge import daemon
from branchline.kit import Kit
from branchline.postgres import Cluster
from branchline.providers.database import pool
from branchline.store import Store, locate_state

# Each cancels the demo's main task, as asyncio.run does for Ctrl-C: Python's default
# for SIGTERM and SIGHUP is to end at once, cleanup skipped; and SIGINT is taken here
# too, because a process started with it ignored (from a script without job control:
# a CI job, `nohup`) would get no handler from asyncio.run and never stop for it.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# The variables branchline gives what it starts, naming a path in the demo's directory:
# services' sandboxes and keepers (BRANCHLINE_STATE), a background serve and Postgres
# (BRANCHLINE_STATE_DIR).
STATE_VARIABLES = ("BRANCHLINE_STATE", "BRANCHLINE_STATE_DIR")


class Interruptions:
    """While in use, SIGINT, SIGTERM and SIGHUP stop the demo: its main task
    (`task`, once set) is cancelled, or else KeyboardInterrupt is raised, and its
    cleanup and teardown run. `received` is the signal that stopped it."""

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self.task: asyncio.Task[None] | None = None
        self._before: dict[signal.Signals, object] = {}

    def __enter__(self) -> Interruptions:
        for sig in STOP_SIGNALS:
            self._before[sig] = signal.signal(sig, self._stop)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:  # fmt: skip
        for sig, handler in self._before.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]  # what signal() gave

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        self.received = signal.Signals(signum)
        task = self.task
        if task is None or task.done():
            raise KeyboardInterrupt
        # What asyncio.run does for Ctrl-C: cancel the main task, wake the loop.
        task.cancel()
        task.get_loop().call_soon_threadsafe(lambda: None)

    @property
    def stopped_by(self) -> signal.Signals:
        """The signal that stopped the demo (a KeyboardInterrupt alone: Ctrl-C)."""
        return self.received or signal.SIGINT

    @staticmethod
    @contextlib.contextmanager
    def held() -> Iterator[None]:
        """While the teardown runs, a stop signal is noted, not obeyed: a second Ctrl-C
        would leave clusters and services running for a directory that is gone."""

        def note(_signum: int, _frame: FrameType | None) -> None:
            os.write(2, b"branchline demo: removing what it started, a moment\n")

        before = {sig: signal.signal(sig, note) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in before.items():
                signal.signal(sig, handler)


@dataclass
class Removal:
    """What the teardown removed, and what it could not."""

    server: str | None = None  # what served its edge: "its edge" or "its branchline serve"
    services: int = 0
    clusters: int = 0
    strays: int = 0  # processes found by their environment after the rest had stopped
    neon: bool = False  # the fake Neon (with --database neon), stopped with its clusters
    problems: list[str] = field(default_factory=list)

    def describe(self, demo: Demo) -> str:
        parts = [f"{self.services} service{'s' * (self.services != 1)}",
                 f"{self.clusters} Postgres cluster{'s' * (self.clusters != 1)}"]  # fmt: skip
        if self.strays:
            parts.append(f"{self.strays} leftover process{'es' * (self.strays != 1)}")
        if self.server:
            parts.append(self.server)
        if self.neon:
            parts.append("the fake Neon with its branches' clusters")
        parts.append(f"its directory {demo.root}")
        return ", ".join(parts[:-1]) + " and " + parts[-1]


def teardown(demo: Demo) -> Removal:
    """Stop every process and cluster the demo started, then remove its directory."""
    removal = Removal()
    projects = demo.state_dir / "projects"
    tags = [processes.tree_prefix(p) for p in projects.glob("*")]
    info = daemon.read_info(demo.state_dir)
    if daemon.stop(demo.state_dir):  # first: serve's supervisor would start services again
        removal.server = "its branchline serve" if info and info.can_work else "its edge"
    if (demo.project / "branchline.toml").exists() and (demo.state_dir / "postgres").exists():
        try:
            removal.services = asyncio.run(_stop_services(demo))
        except Exception as exc:  # keep tearing down: the clusters must go regardless
            removal.problems.append(f"stopping the services through the state failed: {exc}")
    removal.clusters = _destroy_clusters(demo.state_dir, removal)
    for project in projects.glob("*"):  # a pool the demo made for clones: unmounted
        try:
            pool.discard(project)
        except Exception as exc:
            removal.problems.append(f"its pool in {project} was not removed: {exc}")
    # The fake Neon after the services (they used its branches), before the strays:
    # stopped, it stops its own clusters (a local provider's, in its directory); they
    # are destroyed then, their sockets' directories (outside it) with them.
    if demo.neon is not None:
        try:
            demo.neon.stop()
            removal.neon = True
        except Exception as exc:
            removal.problems.append(f"the fake Neon did not stop: {exc}")
    if demo.neon_dir.exists():
        _destroy_clusters(demo.neon_dir, removal)
    # Whatever still runs for it: a service started as the demo was stopped, before it
    # was recorded; a serve starting. Found by environment, which nothing hides.
    strays = started_for(demo.root, tags)
    for pid in strays:
        processes.stop(pid)
    removal.strays = len(strays)
    shutil.rmtree(demo.root, ignore_errors=True)
    left = started_for(demo.root, tags)
    if left:
        removal.problems.append(
            "processes still run for it: " + ", ".join(str(p.pid) for p in left)
        )
    if demo.root.exists():
        removal.problems.append(f"its directory {demo.root} could not be removed")
    return removal


def _destroy_clusters(state_dir: Path, removal: Removal) -> int:
    """Stop and remove every Postgres cluster of a state directory; how many there were."""
    projects = state_dir / "projects"
    destroyed = 0
    for home in [*projects.glob("*/branches/*"), *projects.glob("*/spares/*-*"),
                 state_dir / "postgres"]:  # fmt: skip
        if not home.exists():
            continue
        try:
            Cluster(home).destroy()
            destroyed += 1
        except Exception as exc:
            removal.problems.append(f"the Postgres cluster {home.name} did not stop: {exc}")
    return destroyed


async def _stop_services(demo: Demo) -> int:
    config = load_config(demo.project / "branchline.toml", env=config_env(demo.example))
    store = Store(locate_state(demo.project, os.environ))
    await store.start()
    kit = Kit.build(config, store)
    try:
        # Every service of every environment, at once (each stop may wait its grace).
        pairs = {(d.service, d.environment) for d in await kit.compute.list_deployments()}
        stopped = await asyncio.gather(*(kit.compute.delete(*pair) for pair in pairs))
    finally:
        await kit.aclose()
    return sum(stopped)  # those that had something running


def started_for(root: Path, tags: list[str]) -> list[processes.ProcessId]:
    """Live processes started for the demo in `root`: their environment names a path
    in it (STATE_VARIABLES), or carries the tree tag of one of its services (`tags`,
    the prefixes). Never by command line, which a service may change."""
    inside = str(root)

    def ours(env: dict[str, str]) -> bool:
        if any(v == inside or v.startswith(inside + "/")
               for k, v in env.items() if k in STATE_VARIABLES):  # fmt: skip
            return True
        return any(env.get(processes.TREE_VARIABLE, "").startswith(t) for t in tags)

    return [pid for pid, _env in processes.environments(ours) if pid.pid != os.getpid()]
