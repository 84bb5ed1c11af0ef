"""The first process of every service: it owns the service's whole process tree.

Run as a script, with the standard library only, inside the service's sandbox:

    python -I keeper.py [--unset NAME]... -- ARGV...

- It is a child subreaper (Linux): a process of the service that daemonises (forks,
  then lets its parent exit) is re-parented to the keeper, never to init, so the tree
  stays whole and stays in sight. Other systems have no subreapers: there a daemon
  leaves the keeper's tree, and is found by the tree tag in its environment only
  (`processes.tree_of`).
- It lives while any process of the tree lives: "the service runs" is "its keeper
  runs". A server whose first process exits after starting a daemon is not taken
  for dead (and restarted on top of itself).
- SIGTERM, SIGINT and SIGHUP are passed on to every process of the tree, which is
  how a stop reaches the workers of a server, leader or not.
- It exits once the tree is empty, with the first process's status.

Nothing here imports branchline, nor psutil: the keeper runs where only the
interpreter and this one file are mounted (`python -I` sees no user site-packages
either). So it finds the tree's processes in /proc where there is one (Linux), and
through `ps` elsewhere (macOS, the BSDs).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def descendants(root: int) -> list[int]:
    """Every live process below `root`, found through the parent of each process."""
    children: dict[int, list[int]] = {}
    for pid, parent in _parents():
        children.setdefault(parent, []).append(pid)
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def _parents() -> list[tuple[int, int]]:
    """(pid, parent) of every process but zombies."""
    if sys.platform != "linux":
        return _parents_from_ps()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != b"Z":  # fields: state, parent, ...
            found.append((int(entry.name), int(fields[1])))
    return found


def _parents_from_ps() -> list[tuple[int, int]]:
    try:
        out = subprocess.run(
            ["ps", "-A", "-o", "pid=", "-o", "ppid=", "-o", "stat="],
            capture_output=True, text=True, check=False,
        ).stdout  # fmt: skip
    except OSError:
        return []
    found = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[0].isdigit() and not fields[2].startswith("Z"):
            found.append((int(fields[0]), int(fields[1])))
    return found


def _pass_on(signum: int, _frame: object) -> None:
    for pid in descendants(os.getpid()):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def _arguments(args: list[str]) -> tuple[list[str], list[str]]:
    unset: list[str] = []
    while args and args[0] != "--":
        if args[0] == "--unset" and len(args) > 1:
            unset.append(args[1])
            args = args[2:]
        else:
            raise SystemExit(f"keeper: unexpected argument {args[0]!r}")
    if len(args) < 2:
        raise SystemExit("keeper: usage: keeper.py [--unset NAME]... -- ARGV...")
    return unset, args[1:]


def main(args: list[str]) -> int:
    unset, argv = _arguments(args)
    if sys.platform == "linux":  # no subreapers elsewhere: see the top of this file
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    env = {k: v for k, v in os.environ.items() if k not in unset}
    for signum in FORWARDED:
        signal.signal(signum, _pass_on)
    try:
        first = os.posix_spawnp(argv[0], argv, env)
    except OSError as exc:
        print(f"branchline: cannot start {argv[0]!r}: {exc.strerror}", file=sys.stderr)
        return 127
    status = 0
    while True:
        try:
            pid, waited = os.wait()  # any child: orphans of the tree come here too
        except ChildProcessError:
            break  # nothing of the tree is left
        if pid == first:
            status = os.waitstatus_to_exitcode(waited)
    return status if status >= 0 else 128 - status  # killed by signal N: 128 + N


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
