"""Stopping a service process: a process that ignores SIGTERM is killed, and `stop`
returns only once it is gone (a caller that stops and then looks finds nothing)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from branchline import processes

pytestmark = pytest.mark.integration
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"


def test_stop_kills_what_ignores_sigterm_and_returns_once_it_is_gone(tmp_path: Path) -> None:
    pid = processes.start([sys.executable, "-c", STUBBORN], cwd=tmp_path,
                          env=dict(os.environ), log=tmp_path / "log")  # fmt: skip
    try:
        time.sleep(0.3)  # let it install its handler
        processes.stop(pid, grace=0.3)
        assert not pid.alive()
    finally:
        if pid.alive():
            os.killpg(pid.pid, 9)


# A service whose tree leaves its process group two ways: a worker that ignores
# SIGTERM, and a daemon (fork, setsid, fork) whose parent exits at once.
SPREADING = """
import os, signal, sys, time
ready = sys.argv[1]
if os.fork() == 0:  # a worker that must be killed
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    open(ready + ".worker", "w").write(str(os.getpid()))
    time.sleep(600)
    os._exit(0)
if os.fork() == 0:  # a daemon: leaves the group and the session
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    open(ready + ".daemon", "w").write(str(os.getpid()))
    time.sleep(600)
    os._exit(0)
time.sleep(0.5)
sys.exit(0)  # the first process ends; the service goes on in its daemon and worker
"""


def _pids(marker: Path) -> list[int]:
    deadline = time.monotonic() + 10
    found: list[int] = []
    while time.monotonic() < deadline:
        found = [int(p.read_text()) for p in marker.parent.glob(marker.name + ".*")
                 if p.read_text()]  # fmt: skip
        if len(found) == 2:
            return found
        time.sleep(0.02)
    raise AssertionError(f"the service did not start both processes: {found}")


def _alive(pid: int) -> bool:
    start = processes.start_time_of(pid)
    return start is not None


@pytest.mark.parametrize("boxed", [False, True], ids=["unboxed", "sandboxed"])
def test_a_service_owns_its_whole_tree_daemons_and_workers_included(
    tmp_path: Path, boxed: bool
) -> None:
    """Under the keeper, the first process exiting does not end the service while its
    daemon runs; `stop` ends every process of the tree, in or out of the group, and
    returns only when all are gone."""
    from branchline.sandbox import Box, Sandbox

    script = tmp_path / "spreading.py"
    script.write_text(SPREADING)
    marker = tmp_path / "ready"
    sandbox = Sandbox.configure(enabled=boxed, protected=(), path=os.defpath.split(os.pathsep))
    if boxed:
        sandbox.hand_over(tmp_path)
    argv = sandbox.wrap(
        processes.kept([sys.executable, str(script), str(marker)], unset=("SECRET_PATH",)),
        Box(writable=(tmp_path,), readable=(processes.KEEPER,), with_parent=False),
        cwd=tmp_path,
    )
    tag = processes.new_tree(tmp_path, "test")
    env = {"PATH": os.defpath, processes.TREE_VARIABLE: tag, "SECRET_PATH": "/state"}
    pid = processes.start(argv, cwd=tmp_path, env=env, log=tmp_path / "log")
    try:
        worker, daemon = _pids(marker)
        time.sleep(0.8)  # the first process has exited by now
        assert pid.alive(), "the service was taken for gone when its first process exited"
        tree = processes.tree_of(pid)
        assert {worker, daemon} <= tree or boxed  # in a box, pids are the box's own
        found = processes.trees(processes.tree_prefix(tmp_path))
        assert [t.tag for t in found] == [tag] and found[0].first.pid == pid.pid
        assert "SECRET_PATH" not in _environ_of(found[0].pids[-1])
        began = time.monotonic()
        processes.stop(pid, grace=0.5)
        took = time.monotonic() - began
        assert not processes.tree_of(pid), "stop returned while some of the tree ran"
        assert not processes.trees(processes.tree_prefix(tmp_path))
        assert took < 8
    finally:
        processes.stop(pid, grace=0.1)


def _environ_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/environ").read_text()
    except OSError:
        return ""
