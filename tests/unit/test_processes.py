"""Processes looked into through psutil: the start time that tells a process from a
later one given the same pid stays what records made from /proc hold, and a tree,
an environment, a group are found as before."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil  # noqa: F401 (loaded before a test pretends to be on another system)
import pytest

from branchline import processes

LINUX = sys.platform == "linux"


@pytest.mark.skipif(not LINUX, reason="records made before psutil exist on Linux only")
def test_the_start_time_is_the_one_proc_holds_in_clock_ticks() -> None:
    # What deployments, the edge's info file and checkouts recorded before psutil.
    stat = Path(f"/proc/{os.getpid()}/stat").read_text()
    ticks = int(stat.rsplit(")", 1)[1].split()[19])
    assert processes.start_time_of(os.getpid()) == ticks
    assert processes.ProcessId(os.getpid(), ticks).alive()


@pytest.mark.skipif(not LINUX, reason="the /proc fast path is Linux's alone")
def test_the_linux_fast_path_and_psutil_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    # Commands read serve's start time from /proc (no psutil import); the scans and
    # other systems compute it through psutil: both must give the same ticks.
    pids = [os.getpid(), os.getppid(), 1]
    fast = [processes.start_time_of(pid) for pid in pids]
    monkeypatch.setattr(sys, "platform", "darwin")
    assert [processes.start_time_of(pid) for pid in pids] == fast
    assert None not in fast


def test_the_start_time_is_stable_and_tells_processes_apart() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        started = processes.start_time_of(child.pid)
        assert started is not None
        assert {processes.start_time_of(child.pid) for _ in range(20)} == {started}
        assert processes.ProcessId(child.pid, started).alive()
        assert not processes.ProcessId(child.pid, started - 1).alive()  # a reused pid
        assert 0 <= processes.seconds_since(started) < 30
    finally:
        child.kill()
        child.wait()
    assert processes.start_time_of(child.pid) is None


def test_a_zombie_is_not_alive() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = processes.start_time_of(child.pid)
    assert started is not None
    deadline = time.monotonic() + 10
    while not processes.is_zombie(child.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert processes.is_zombie(child.pid)
    assert processes.start_time_of(child.pid) is None
    assert not processes.ProcessId(child.pid, started).alive()
    child.wait()


def test_a_tree_its_environment_and_its_group_are_found(tmp_path: Path) -> None:
    tag = processes.new_tree(tmp_path, "unit")
    env = {"PATH": os.defpath, processes.TREE_VARIABLE: tag, "BRANCHLINE_PROJECT": "unit"}
    # A leader with a child below it, in a session (and group) of its own.
    script = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', " \
             "'import time; time.sleep(30)']); time.sleep(30)"  # fmt: skip
    pid = processes.start([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          log=tmp_path / "log")  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while len(processes.tree_of(pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        members = processes.tree_of(pid)
        assert pid.pid in members and len(members) == 2
        assert processes.group_alive(pid.pid)
        found = dict(processes.with_environment(f"{processes.TREE_VARIABLE}={tag}"))
        assert {p.pid for p in found} == members
        assert all(e["BRANCHLINE_PROJECT"] == "unit" for e in found.values())
        (tree,) = processes.trees(processes.tree_prefix(tmp_path))
        assert tree.first == pid and set(tree.pids) == members and 0 <= tree.age < 30
        assert processes.find_by_env({"BRANCHLINE_PROJECT": "unit",
                                      processes.TREE_VARIABLE: tag}) == pid  # fmt: skip
        (started,) = processes.started_for({processes.TREE_VARIABLE: tag})
        assert started[0] == pid.pid and 0 <= started[2] < 30
        assert processes.command_line(pid.pid) == [sys.executable, "-c", script]
        assert processes.parent_of(pid.pid) == os.getpid()
    finally:
        processes.stop(pid, grace=1.0)
    assert not processes.tree_of(pid)
    assert not processes.group_alive(pid.pid)


def test_what_is_gone_reads_as_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert processes.start_time_of(child.pid) is None
    assert processes.command_line(child.pid) is None
    assert processes.parent_of(child.pid) is None
    assert processes.group_of(child.pid) is None
    assert not processes.is_zombie(child.pid)
    with pytest.raises(ProcessLookupError):
        os.kill(child.pid, 0)  # nothing of it is left
