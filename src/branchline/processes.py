"""Service processes: started in their own process group, identified by pid plus
start time (a pid alone can be reused), stopped gracefully."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast


@dataclass(frozen=True)
class ProcessId:
    pid: int
    start_time: int  # clock ticks since boot, from /proc/<pid>/stat

    def alive(self) -> bool:
        return start_time_of(self.pid) == self.start_time


def recorded(detail: Mapping[str, object]) -> ProcessId | None:
    """The process a deployment's detail records (`pid`, `start_time`), if any."""
    if "pid" not in detail:
        return None
    return ProcessId(int(str(detail["pid"])), int(str(detail.get("start_time") or -1)))


def group_of(pid: int) -> int | None:
    """The process group of `pid` (None when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[2])


def start_time_of(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == "Z":
        return None  # exited; waiting to be reaped
    return int(fields[19])  # field 22 of stat; fields here start at field 3


def private_log(path: Path, mode: str = "ab") -> BinaryIO:
    """A log file only branchline's user may read (mode 0600): what a service prints
    may hold a secret, whoever looks at it later."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in mode else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)  # one made before, with looser rights
    return cast(BinaryIO, os.fdopen(fd, mode))


def start(command: Sequence[str], *, cwd: Path, env: Mapping[str, str], log: Path) -> ProcessId:
    """Start a service that outlives the command that started it."""
    with private_log(log) as out:
        process = subprocess.Popen(
            list(command), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    started = start_time_of(process.pid)
    return ProcessId(process.pid, started if started is not None else -1)


def stop(pid: ProcessId, *, grace: float = 5.0) -> None:
    """SIGTERM to its process group, SIGKILL after `grace`; returns once every process
    of the group is gone (a sandboxed service outlives its sandbox's first process by
    as long as it takes to shut down). No-op when it is gone."""
    if not pid.alive() and not group_alive(pid.pid):
        _reap(pid.pid)  # it may be our exited child, not yet collected
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid.pid, signal.SIGTERM)
    if _gone_within(pid, grace):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid.pid, signal.SIGKILL)
    # SIGKILL is not instant either: return once it is gone, so that whoever stops a
    # service and then looks finds nothing running.
    _gone_within(pid, 5.0)


def _gone_within(pid: ProcessId, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        _reap(pid.pid)  # it may be our child: a zombie until collected
        if not pid.alive() and not group_alive(pid.pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs. Zombies do not count: an orphan
    whose parent died may wait a long time for init to reap it."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            return True
    return False


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def with_environment(needle: str) -> Iterator[tuple[ProcessId, dict[str, str]]]:
    """Live processes whose environment holds the item `needle` ("NAME=value"), each
    with its whole environment (read from /proc: ours, or any when run as root)."""
    wanted = needle.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            items = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted not in items:
            continue
        started = start_time_of(int(entry.name))
        if started is None:
            continue  # gone meanwhile
        env = dict(i.decode(errors="replace").split("=", 1) for i in items if b"=" in i)
        yield ProcessId(int(entry.name), started), env


def started_for(markers: Mapping[str, str]) -> list[tuple[int, dict[str, str], float]]:
    """(pid, environment, age in seconds) of every live process whose environment
    holds every `markers` item and that leads its process group: what was started.
    Its children (a server's workers, a sandbox's own processes) inherit the markers
    and stay in its group; they are part of it, never strays of their own."""
    ticks = os.sysconf("SC_CLK_TCK")
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    first, *rest = markers.items()
    return [
        (pid.pid, env, uptime - pid.start_time / ticks)
        for pid, env in with_environment(f"{first[0]}={first[1]}")
        if all(env.get(k) == v for k, v in rest) and group_of(pid.pid) == pid.pid
    ]


def find_by_env(markers: Mapping[str, str]) -> ProcessId | None:
    """A live process whose environment holds every `markers` item (a service whose
    start was not recorded: its starter died between starting it and saying so)."""
    first, *rest = markers.items()
    for pid, env in with_environment(f"{first[0]}={first[1]}"):
        if all(env.get(k) == v for k, v in rest) and group_of(pid.pid) == pid.pid:
            return pid
    return None
