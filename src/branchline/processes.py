"""Service processes: started in their own process group under a keeper that owns
the whole tree, identified by pid plus start time (a pid alone can be reused) and a
tree tag every process of the tree inherits, stopped gracefully, all of them.

Processes are looked into through psutil (Linux, macOS, the BSDs), never through
/proc directly: local mode runs on a developer's Mac too. psutil is imported where
it is used, so that commands that never look at a process do not load it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

# The tag every process of a service's tree carries in its environment: how the
# processes that left its group (a daemon, a worker that called setsid) are found.
TREE_VARIABLE = "BRANCHLINE_TREE"
KEEPER = Path(__file__).with_name("keeper.py")
# The unit of a start time: the kernel's clock ticks (what /proc/<pid>/stat counts in
# on Linux, and what every record made before psutil holds), 100 a second in practice.
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcessId:
    pid: int
    start_time: int  # clock ticks since boot (`start_time_of`)
    tree: str | None = None  # the tree tag its processes carry (None: before tags)

    def alive(self) -> bool:
        return start_time_of(self.pid) == self.start_time


def recorded(detail: Mapping[str, object]) -> ProcessId | None:
    """The process a deployment's detail records (`pid`, `start_time`, `tree`)."""
    if "pid" not in detail:
        return None
    tree = detail.get("tree")
    return ProcessId(
        int(str(detail["pid"])), int(str(detail.get("start_time") or -1)),
        str(tree) if tree else None,
    )  # fmt: skip


def tree_prefix(state_dir: Path) -> str:
    """What every tree tag of one state directory starts with (names no path)."""
    return hashlib.sha256(str(state_dir).encode()).hexdigest()[:12] + "."


def new_tree(state_dir: Path, what: str) -> str:
    """A fresh tree tag for one start of a service (`what`: its deployment, a trial)."""
    return f"{tree_prefix(state_dir)}{what}.{secrets.token_hex(4)}"


def kept(argv: Sequence[str], *, unset: Sequence[str] = ()) -> list[str]:
    """`argv` started under the keeper (see `keeper.py`), which owns its whole tree and
    hands the code none of the variables `unset` names."""
    options = [item for name in unset for item in ("--unset", name)]
    return [sys.executable, "-I", str(KEEPER), *options, "--", *argv]


def group_of(pid: int) -> int | None:
    """The process group of `pid` (None when it is gone)."""
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def start_time_of(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot: with the pid, what tells a process
    from a later one given the same pid. None when it is gone or a zombie."""
    if sys.platform == "linux":
        # Every command asks this of serve's pid (is it still the one recorded?), and
        # importing psutil costs more than the rest of a quick command's own work:
        # here the kernel's own field, the very number psutil's answer is made from.
        return _linux_start_time(pid)
    import psutil

    try:
        process = psutil.Process(pid)
        with process.oneshot():
            if process.status() == psutil.STATUS_ZOMBIE:
                return None  # exited; waiting to be reaped
            return _ticks_since_boot(process.create_time(), psutil.boot_time())
    except psutil.Error:
        return None


def _linux_start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:  # noqa: PTH123 (no Path: hot path)
            fields = stat.read().rpartition(b")")[2].split()
    except OSError:
        return None  # gone
    if fields[0] in (b"Z", b"X"):
        return None  # exited; waiting to be reaped
    return int(fields[19])  # starttime: the 22nd field, the 20th after the name


def _ticks_since_boot(created: float, boot: float) -> int:
    # psutil gives seconds since the epoch: its start since boot plus the boot time, so
    # taking the boot time off gives back, on Linux, the exact ticks /proc/<pid>/stat
    # holds (and records made before psutil hold). A start time since boot does not
    # move when the clock is set (on Linux; macOS moves its boot time with the clock,
    # so there a record made before the clock was set may read as another process:
    # taken for gone, never a stranger taken for ours).
    return round((created - boot) * TICKS_PER_SECOND)


def seconds_since(start_time: int) -> float:
    """How long ago a process that started at `start_time` (ticks since boot) started."""
    import psutil

    return time.time() - psutil.boot_time() - start_time / TICKS_PER_SECOND


def parent_of(pid: int) -> int | None:
    """The parent of `pid` (None when it is gone)."""
    import psutil

    try:
        return psutil.Process(pid).ppid()
    except psutil.Error:
        return None


def command_line(pid: int) -> list[str] | None:
    """The arguments `pid` runs with; None when it is gone or another user's (a
    process of another user cannot be looked into, on macOS)."""
    import psutil

    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return None


def running_with_arguments(program: str, argument: str) -> list[int]:
    """Pids of live processes whose program's name is `program` and whose arguments
    include `argument`: found by what they run, for a process no file records."""
    import psutil

    found = []
    for process in psutil.process_iter():
        try:
            argv = process.cmdline()
        except psutil.Error:  # gone, or not ours to look into
            continue
        ours = argv and Path(argv[0]).name == program and argument in argv[1:]
        if ours and _running(process.pid):
            found.append(process.pid)
    return found


def is_zombie(pid: int) -> bool:
    """Whether `pid` has exited and waits to be reaped (False when it is gone)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def private_log(path: Path, mode: str = "ab") -> BinaryIO:
    """A log file only branchline's user may read (mode 0600): what a service prints
    may hold a secret, whoever looks at it later."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in mode else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)  # one made before, with looser rights
    return cast(BinaryIO, os.fdopen(fd, mode))


def start(command: Sequence[str], *, cwd: Path, env: Mapping[str, str], log: Path) -> ProcessId:
    """Start a service that outlives the command that started it. Its tree tag is the
    one `env` gives it (`TREE_VARIABLE`), if any."""
    with private_log(log) as out:
        process = subprocess.Popen(
            list(command), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    started = start_time_of(process.pid)
    return ProcessId(process.pid, started if started is not None else -1, env.get(TREE_VARIABLE))


def stop(pid: ProcessId, *, grace: float = 5.0) -> None:
    """SIGTERM to every process of its tree, SIGKILL to what is left after `grace`;
    returns once all are gone. The tree: its process group, whatever runs below it,
    and every process carrying its tree tag (one that left the group and the
    ancestry: a daemon whose keeper was killed). No-op when nothing of it runs."""
    if not tree_of(pid):
        _reap(pid.pid)  # it may be our exited child, not yet collected
        return
    _signal(pid, signal.SIGTERM)
    if _gone_within(pid, grace):
        return
    _signal(pid, signal.SIGKILL)
    # SIGKILL is not instant either: return once it is gone, so that whoever stops a
    # service and then looks finds nothing running.
    _gone_within(pid, 5.0)


def tree_of(pid: ProcessId) -> set[int]:
    """The live processes of `pid`'s tree (see `stop`), zombies left out."""
    import psutil

    alive = pid.alive()
    found: set[int] = set()
    if pid.tree is not None:
        found |= {n for n, env in _environ_of_each() if env.get(TREE_VARIABLE) == pid.tree}
    # Its group counts while it lives; after, only untagged (older) services need the
    # group to be found, and a reused pid's group must not be taken for its own.
    if alive or pid.tree is None:
        found |= {n for n in psutil.pids() if group_of(n) == pid.pid}
    if alive:  # below it: its parent links are its own, not a reused pid's
        found.add(pid.pid)
        with contextlib.suppress(psutil.Error):  # gone meanwhile
            found |= {c.pid for c in psutil.Process(pid.pid).children(recursive=True)}
    return {n for n in found if _running(n)}


def _running(pid: int) -> bool:
    """Whether `pid` runs: neither gone nor a zombie."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _environ_of_each() -> Iterator[tuple[int, dict[str, str]]]:
    """(pid, environment) of every process whose environment may be read (ours, or any
    when root; a zombie's is empty). Each scan reads them anew: a pid psutil saw in an
    earlier scan may be another process's by now, and is read as that one."""
    import psutil

    for process in psutil.process_iter():
        try:
            env = process.environ()
        except psutil.Error:  # gone, or not ours to look into
            continue
        if env:
            yield process.pid, env


def _signal(pid: ProcessId, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid.pid, signum)
    for member in tree_of(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(member, signum)


def _gone_within(pid: ProcessId, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        _reap(pid.pid)  # it may be our child: a zombie until collected
        if not tree_of(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs. Zombies do not count: an orphan
    whose parent died may wait a long time for init to reap it."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    import psutil

    return any(group_of(n) == pgid and _running(n) for n in psutil.pids())


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def with_environment(needle: str) -> Iterator[tuple[ProcessId, dict[str, str]]]:
    """Live processes whose environment holds the item `needle` ("NAME=value"), each
    with its whole environment (that of this user's processes, or any when root)."""
    name, _, value = needle.partition("=")
    return environments(lambda env: env.get(name) == value)


def environments(
    match: Callable[[dict[str, str]], bool],
) -> Iterator[tuple[ProcessId, dict[str, str]]]:
    """Live processes whose environment `match` accepts, each with its environment."""
    for number, env in _environ_of_each():
        if not match(env):
            continue
        started = start_time_of(number)
        if started is None:
            continue  # gone meanwhile, or a zombie
        yield ProcessId(number, started, env.get(TREE_VARIABLE)), env


@dataclass(frozen=True)
class Tree:
    """The live processes of one start of a service, found by their tree tag."""

    tag: str
    first: ProcessId  # its leader, or the oldest left when the leader is gone
    env: dict[str, str]  # the first's environment
    age: float  # seconds since its oldest process started
    pids: tuple[int, ...]


def trees(prefix: str) -> list[Tree]:
    """Every tree whose tag starts with `prefix` (one state directory's services)."""
    grouped: dict[str, list[tuple[ProcessId, dict[str, str]]]] = {}
    for pid, env in environments(lambda env: env.get(TREE_VARIABLE, "").startswith(prefix)):
        grouped.setdefault(env[TREE_VARIABLE], []).append((pid, env))
    found = []
    for tag, members in grouped.items():
        leaders = [m for m in members if group_of(m[0].pid) == m[0].pid]
        first, env = min(leaders or members, key=lambda m: m[0].start_time)
        oldest = min(m[0].start_time for m in members)
        found.append(Tree(tag, first, env, seconds_since(oldest),
                          tuple(sorted(m[0].pid for m in members))))  # fmt: skip
    return found


def started_for(markers: Mapping[str, str]) -> list[tuple[int, dict[str, str], float]]:
    """(pid, environment, age in seconds) of every live process whose environment
    holds every `markers` item and that leads its process group: what was started.
    Its children (a server's workers, a sandbox's own processes) inherit the markers
    and stay in its group; they are part of it, never strays of their own."""
    first, *rest = markers.items()
    return [
        (pid.pid, env, seconds_since(pid.start_time))
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
