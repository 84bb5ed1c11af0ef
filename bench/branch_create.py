"""How fast a database branch is made from a parent of 100 MB and 1 GB (3 GB with
`--sizes 100,1000,3000`), by both methods, idle and under writes.

The parent is the provider's root filled by `pgbench -i` to about the size; it lives
on a loop-mounted reflink XFS made for the run (as root; without root or mkfs.xfs
the clone rows are skipped, saying why, and the copy rows run in a temporary
directory). For each size, as medians of `--rounds` rounds, in rounds that
interleave every method (the order rotates each round), first idle, then while a
writer runs pgbench's TPC-B-like transactions against the parent without pause:

- copy: `create_branch` with branching="copy" and no spare standby ready (cold:
  store rows, online `pg_basebackup`, start-up) until the branch answers `SELECT 1`;
  its floors: `pg_basebackup` as branchline calls it, then the copy started until
  `SELECT 1` answers (the raw work of the method, as the clone's floor is), and
  `cp -a` of the parent's `base/` and `global/` (no reflink) after a CHECKPOINT,
  then `sync`;
- clone: `create_branch` with branching="clone" until `SELECT 1`; its floor, the
  same steps by hand: pg_backup_start, `cp -a --reflink=always` of the data
  directory but pg_wal, pg_backup_stop, reflink copy of pg_wal, backup_label,
  `postgres -D` on a port of its own with fsync=off, until `SELECT 1` answers;
- clone of a standby (a measurement, not a target): the same by hand from a
  streaming standby of the parent (made with pg_basebackup -R on the XFS), the copy
  opened as a primary (backup_label, no standby.signal: it replays its WAL, opens).

Every step starts after a `sync` (nothing of the last one left to flush); the
standby streams from the parent throughout, for every method alike.

Where a branch's time goes is printed per phase: backup start (its checkpoint),
file cloning, backup stop, WAL clone and label, start-up, replay, end of recovery,
until `SELECT 1` answers (from the server's log); for `create_branch`, the times its
clone records (`CloneTimes`, read by wrapping `clone_online`), its own steps (room,
store rows, passwords: wrapped and timed) and its time over its method's floor.

Targets (copy-on-write branching issue): copy within 1.3x of `pg_basebackup` and
start-up at every size; clone under 0.5 s idle at the largest size (3 GB when
measured) and flat: the largest size within 1.5x of the smallest. The 1-minute
load average is printed at the start and the end: the machine may be shared.

    .venv/bin/python bench/branch_create.py [--sizes 100,1000,3000] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from unittest import mock

import psycopg
from clone_floor import (
    ClonePhases,
    Writer,
    Xfs,
    fill,
    log_phases,
    mount_xfs,
    pgbench_scale,
    raw_basebackup,
    raw_clone,
    raw_copy,
    unmount_xfs,
)

from branchline.postgres import Cluster, ClusterMeta
from branchline.postgres.copy import CloneTimes, clone_online, make_standby
from branchline.providers.database import local
from branchline.providers.database.local import (
    EPHEMERAL_SETTINGS,
    LIGHT_SETTINGS,
    Branching,
    LocalDatabaseProvider,
)
from branchline.store import Store, locate_state

TARGET_COPY_RATIO = 1.3
TARGET_CLONE_SECONDS = 0.5
TARGET_CLONE_FLAT = 1.5
DEFAULT_SIZES = "100,1000"
DATABASE = "app"
MB = 1024 * 1024
LOADS = ("idle", "writes")
# step key: (label, the key of its floor)
STEPS = {
    "copy": ("copy: create_branch, cold", "basebackup"),
    "basebackup": ("copy floor: pg_basebackup+start", "basebackup"),
    "cp": ("copy floor: cp -a + sync", "basebackup"),
    "clone": ("clone: create_branch", "clone_raw"),
    "clone_raw": ("clone floor: by hand", "clone_raw"),
    "clone_standby": ("clone of a standby, by hand", "clone_raw"),
}
# create_branch's own steps, timed apart (the rest of its own work: locks, store
# connections, waiting for its server to be ready).
OWN_STEPS = {
    "_need_for_branch": "room estimate",
    "_require_room": "room check",
    "_intend": "intent rows",
    "_own_credentials": "own passwords",
    "_mark_ready": "ready row",
}
PHASES = ("backup_start", "files", "backup_stop", "wal")
AFTER_SPAWN = ("startup", "replay", "end_recovery", "after_ready")
PHASE_ROWS = {"clone_raw": "clone, by hand", "clone_standby": "standby, by hand",
              "clone": "clone: create", "copy": "copy: create"}  # fmt: skip


@dataclass
class Result:
    size_mb: int
    db_bytes: int = 0
    scale: int = 0
    fill_s: float = 0.0
    standby_s: float = 0.0
    rounds_s: float = 0.0
    teardown_s: float = 0.0
    times: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # (load, step)
    phases: dict[tuple[str, str], list[ClonePhases]] = field(default_factory=dict)
    writer_tps: list[float] = field(default_factory=list)

    def add(self, load: str, step: str, seconds: float) -> None:
        self.times.setdefault((load, step), []).append(seconds)

    def median(self, load: str, step: str) -> float | None:
        times = self.times.get((load, step))
        return statistics.median(times) if times else None


def _say(text: str) -> None:
    print(text, flush=True)


def _timed(real: Callable[..., Any], name: str, spent: dict[str, float]) -> Callable[..., Any]:
    """`real` (a function or a coroutine function), adding its time to `spent[name]`."""

    def add(began: float) -> None:
        spent[name] = spent.get(name, 0.0) + time.perf_counter() - began

    if inspect.iscoroutinefunction(real):

        async def waited(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return await real(*args, **kwargs)
            finally:
                add(began)

        return waited

    def called(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            add(began)

    return called


def _timing(provider: LocalDatabaseProvider, spent: dict[str, float]) -> contextlib.ExitStack:
    """The provider's own steps (OWN_STEPS) timed into `spent` while the stack is open."""
    stack = contextlib.ExitStack()
    for name in OWN_STEPS:
        wrapped = _timed(getattr(provider, name), name, spent)
        stack.enter_context(mock.patch.object(provider, name, wrapped))
    return stack


def _branch(provider: LocalDatabaseProvider, name: str, phases: list[ClonePhases]) -> float:
    """`create_branch` until the branch answers; where its time went: the clone's own
    times (the provider keeps them to itself: its `clone_online` is wrapped), its own
    steps (wrapped too) and the branch's log."""
    recorded: list[CloneTimes] = []

    def clone_timed(*args: Any, **kwargs: Any) -> ClusterMeta:
        recorded.append(CloneTimes())
        return clone_online(*args, **kwargs, times=recorded[-1])

    async def timed() -> float:
        provider.drop_spare()  # cold: a copy branch is an online copy
        split = ClonePhases()
        with mock.patch.object(local, "clone_online", clone_timed), _timing(provider, split.own):
            began = time.perf_counter()
            branch = await provider.create_branch(name)
            with psycopg.connect(provider.cluster(name).uri(DATABASE)) as conn:
                conn.execute("SELECT 1")
            split.total, answered = time.perf_counter() - began, time.time()
        if branch.detail.get("made_by") != provider.branching:
            raise RuntimeError(f"{name} was made by {branch.detail.get('made_by')}, "
                               f"not {provider.branching}")  # fmt: skip
        for times in recorded:
            split.backup_start, split.files = times.backup_start, times.files
            split.backup_stop = times.backup_stop  # its pg_wal clone included
        log_phases(provider.cluster(name).log_file, answered, split)
        phases.append(split)
        await provider.aclose()
        await provider.delete_branch(name)
        return split.total

    return asyncio.run(timed())


def _providers(
    store: Store, state: Path, size_mb: int, clone: bool
) -> dict[str, LocalDatabaseProvider]:
    """One provider per method, on one state directory: one parent for both."""
    made: dict[str, LocalDatabaseProvider] = {}
    methods: tuple[Branching, ...] = ("copy", "clone") if clone else ("copy",)
    for method in methods:
        made[method] = LocalDatabaseProvider(
            project=f"bench-{size_mb}", state_dir=state, store=store, database=DATABASE,
            branching=method,
        )  # fmt: skip
        assert made[method].branching_method() == method
    return made


def _measure(store: Store, where: Path, size_mb: int, rounds: int, clone: bool) -> Result:
    """One parent of `size_mb`: every method, idle and under writes, `rounds` times."""
    state = where / f"db-{size_mb}"
    state.mkdir(mode=0o755)
    providers = _providers(store, state, size_mb, clone)
    first = providers["copy"]  # the root is the same for both; neither keeps a spare
    result = Result(size_mb, scale=pgbench_scale(size_mb))
    standby = Cluster(where / f"standby-{size_mb}")
    try:
        asyncio.run(first.init_root())
        parent = first.cluster(first.root)
        began = time.perf_counter()
        result.db_bytes = fill(parent, DATABASE, size_mb)
        result.fill_s = time.perf_counter() - began
        _say(f"[{size_mb} MB] pgbench -i -s {result.scale}: {result.db_bytes / MB:.0f} MB "
             f"in {result.fill_s:.1f} s")  # fmt: skip
        if clone:
            began = time.perf_counter()
            make_standby(parent, standby, settings={**LIGHT_SETTINGS, **EPHEMERAL_SETTINGS})
            result.standby_s = time.perf_counter() - began
            _say(f"[{size_mb} MB] streaming standby made in {result.standby_s:.1f} s")

        def steps(load: str, n: str) -> list[tuple[str, Callable[[], float]]]:
            """This round's steps: (key, timed step)."""

            def branch(method: str) -> Callable[[], float]:
                splits = result.phases.setdefault((load, method), [])
                return lambda: _branch(providers[method], f"{method}-{n}", splits)

            def by_hand(key: str, source: Cluster, from_standby: bool) -> Callable[[], float]:
                def step() -> float:
                    split = raw_clone(source, where / f"{key}-{n}", from_standby=from_standby)
                    result.phases.setdefault((load, key), []).append(split)
                    return split.total

                return step

            made = [
                ("copy", branch("copy")),
                ("basebackup", lambda: raw_basebackup(parent, where / f"bb-{n}")),
                ("cp", lambda: raw_copy(parent, where / f"cp-{n}")),
            ]
            if clone:
                made += [
                    ("clone", branch("clone")),
                    ("clone_raw", by_hand("clone_raw", parent, False)),
                    ("clone_standby", by_hand("clone_standby", standby, True)),
                ]
            return made

        began = time.perf_counter()
        for i in range(rounds):
            for load in LOADS:
                writer = Writer(parent, DATABASE, where / f"writer-{size_mb}.log")
                with writer if load == "writes" else contextlib.nullcontext():  # idle
                    todo = steps(load, f"{size_mb}-{i}-{load[0]}")
                    shift = i % len(todo)  # each method goes first in turn
                    for key, step in todo[shift:] + todo[:shift]:
                        # Nothing of earlier work (the last copy, a deleted branch)
                        # left to flush while this one is timed.
                        subprocess.run(["sync"], check=True)
                        result.add(load, key, step())
                if load == "writes":
                    result.writer_tps.append(writer.tps)
            _say(f"[{size_mb} MB] round {i + 1}/{rounds} done "
                 f"({time.perf_counter() - began:.0f} s)")  # fmt: skip
        result.rounds_s = time.perf_counter() - began
    finally:
        began = time.perf_counter()
        standby.destroy()
        for home in [*(state / "branches").glob("*"), *(state / "spares").glob("*-*")]:
            Cluster(home).destroy()
        for leftover in where.glob(f"*-{size_mb}-*"):  # a raw copy an interrupt left
            Cluster(leftover).destroy()
        shutil.rmtree(state, ignore_errors=True)
        result.teardown_s = time.perf_counter() - began
    return result


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up as Ctrl-C does


@contextlib.contextmanager
def _xfs(work: Path, gb: int, wanted: bool) -> Iterator[Xfs | str]:
    """The reflink XFS for the run (or why there is none), always unmounted after."""
    made = mount_xfs(work, gb) if wanted else "not-asked"
    try:
        yield made
    finally:
        if isinstance(made, Xfs):
            problem = unmount_xfs(made)
            _say(f"xfs unmounted and removed{f' ({problem})' if problem else ''}")


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _print_times(results: list[Result]) -> None:
    _say(f"\n{'parent':<7}{'db MB':>7}  {'load':<7}{'what':<30}{'median s':>9}{'max s':>8}"
         f"{'x floor':>9}{'n':>3}")  # fmt: skip
    for r in results:
        for load in LOADS:
            for key, (label, floor_key) in STEPS.items():
                times = r.times.get((load, key))
                if not times:
                    continue
                median, floor = statistics.median(times), r.median(load, floor_key)
                ratio = _fmt(median / floor if floor else None, ".2f")
                _say(f"{r.size_mb:<7}{r.db_bytes / MB:>7.0f}  {load:<7}{label:<30}"
                     f"{median:>9.3f}{max(times):>8.3f}{ratio:>9}{len(times):>3}")  # fmt: skip


def _print_phases(results: list[Result]) -> None:
    _say("\nwhere a branch's time goes (medians, s): backup start (its checkpoint), file "
         "clones, backup stop, pg_wal clone and backup_label (create_branch: within bk "
         "stop); before pg: all until the server's first log line (create_branch: its "
         "store and lock work too; a copy: pg_basebackup); start-up, WAL replay, end of "
         "recovery (its checkpoint), after ready: until SELECT 1 answers (create_branch: "
         "waiting for ready, its own passwords, its store row); own work: create_branch "
         "over its method's floor (the clone by hand; pg_basebackup and start-up)")  # fmt: skip
    heads = ["bk start", "files", "bk stop", "wal+label", "before pg", "start-up", "replay",
             "end recov", "after rdy", "total", "own work"]  # fmt: skip
    _say(f"{'parent':<7}{'load':<7}{'source':<16}" + "".join(f"{h:>10}" for h in heads))
    steps: list[str] = []
    for r in results:
        for load in LOADS:
            for key, label in PHASE_ROWS.items():
                splits = r.phases.get((load, key))
                if not splits:
                    continue
                # create_branch: its clone's own times (the WAL clone within the
                # stop); a copy shows only what its log does.
                known = {"clone": PHASES[:3], "copy": ()}.get(key, PHASES)
                columns = [*known, "before_server", *AFTER_SPAWN, "total"]
                med = {c: statistics.median(getattr(s, c) for s in splits) for c in columns}
                floor = r.median(load, STEPS[key][1])
                if key in ("clone", "copy") and floor is not None:
                    med["own"] = med["total"] - floor
                values = [med.get(c) for c in (*PHASES, "before_server", *AFTER_SPAWN, "total",
                                               "own")]  # fmt: skip
                _say(
                    f"{r.size_mb:<7}{load:<7}{label:<16}"
                    + "".join(f"{_fmt(v):>10}" for v in values)
                )
                if key in ("clone", "copy"):
                    own = {n: statistics.median(s.own.get(n, 0.0) for s in splits)
                           for n in OWN_STEPS}  # fmt: skip
                    steps.append(
                        f"{r.size_mb:<7}{load:<7}{label:<16}"
                        + "".join(f"{own[n]:>14.3f}" for n in OWN_STEPS)
                        + f"{sum(own.values()):>10.3f}"
                    )
    _say("\ncreate_branch's own steps (medians, s; the rest of its own work: locks, store "
         "connections, waiting for its server's start)")  # fmt: skip
    _say(f"{'parent':<7}{'load':<7}{'source':<16}"
         + "".join(f"{h:>14}" for h in OWN_STEPS.values()) + f"{'sum':>10}")  # fmt: skip
    for line in steps:
        _say(line)


def _summary(results: list[Result], clone: bool) -> tuple[list[str], bool]:
    """The summary's items and whether every target was met."""
    summary, ok = [], True
    for r in results:
        n = f"{r.size_mb}mb"
        summary.append(f"size_{n}={r.db_bytes / MB:.0f}")
        for load in LOADS:
            w = "" if load == "idle" else "writes_"
            for key in STEPS:
                value = r.median(load, key)
                if value is not None:
                    summary.append(f"{key}_{w}{n}_s={value:.3f}")
        copy, floor = r.median("idle", "copy"), r.median("idle", "basebackup")
        if copy is not None and floor:
            summary.append(f"copy_ratio_{n}={copy / floor:.2f}")
            cp = r.median("idle", "cp")
            if cp:
                summary.append(f"copy_vs_cp_{n}={copy / cp:.2f}")
            ok = ok and copy / floor <= TARGET_COPY_RATIO
        made, raw = r.median("idle", "clone"), r.median("idle", "clone_raw")
        if made is not None and raw:
            summary.append(f"clone_ratio_{n}={made / raw:.2f}")
        standby, parent = r.median("writes", "clone_standby"), r.median("writes", "clone_raw")
        if standby is not None and parent:
            summary.append(f"standby_vs_parent_writes_{n}={standby / parent:.2f}")
        if r.writer_tps:
            summary.append(f"writer_tps_{n}={statistics.median(r.writer_tps):.0f}")
    for key, name in (("clone", "clone_flat_ratio"), ("clone_raw", "clone_raw_flat_ratio")):
        times = [t for t in (r.median("idle", key) for r in results) if t is not None]
        if len(times) >= 2:
            summary.append(f"{name}={times[-1] / times[0]:.2f}")
        if key == "clone" and times:
            largest = results[-1].median("idle", "clone")
            ok = ok and largest is not None and largest < TARGET_CLONE_SECONDS
            if len(times) >= 2:
                ok = ok and times[-1] / times[0] <= TARGET_CLONE_FLAT
    if clone and not any(r.times.get(("idle", "clone")) for r in results):
        summary.append("clone_branch=not-measured")
    return summary, ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES,
                        help="parent sizes in MB, comma-separated (3000 takes long)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-clone", action="store_true", help="the copy method only")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    # Ctrl-C and SIGTERM unwind through every cleanup (even when started in the
    # background, where a shell leaves SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupted)
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    _say(f"load average (1 min) at start: {load_start:.2f}; sizes {sizes} MB, "
         f"{args.rounds} round(s)")  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="branchline-bench-"))
    work.chmod(0o755)
    store = Store(locate_state(work, {"BRANCHLINE_STATE_DIR": str(work / "state")}))
    results: list[Result] = []
    image_gb = 8 + 5 * -(-max(sizes) // 1000)  # parent, its WAL archive, standby, copies
    try:
        with _xfs(work, image_gb, not args.no_clone) as xfs:
            clone = isinstance(xfs, Xfs)
            if isinstance(xfs, Xfs):
                where = xfs.mount
                _say(f"reflink XFS of {image_gb} GB (sparse) loop-mounted in "
                     f"{time.perf_counter() - started:.1f} s")  # fmt: skip
            else:
                where = work / "plain"
                where.mkdir(mode=0o755)
                _say(f"clone method skipped: {xfs}")
            asyncio.run(store.start())
            for size_mb in sizes:
                began = time.perf_counter()
                results.append(_measure(store, where, size_mb, args.rounds, clone))
                _say(f"[{size_mb} MB] took {time.perf_counter() - began:.0f} s in all "
                     f"(data {results[-1].fill_s:.0f} s, standby {results[-1].standby_s:.0f} s, "
                     f"rounds {results[-1].rounds_s:.0f} s, "
                     f"teardown {results[-1].teardown_s:.0f} s)")  # fmt: skip
    finally:
        store.location.cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)
    load_end = os.getloadavg()[0]
    _print_times(results)
    if clone:
        _print_phases(results)
    summary, ok = _summary(results, clone)
    _say(f"\nload average (1 min): {load_start:.2f} at start, {load_end:.2f} at end; "
         f"the run took {time.perf_counter() - started:.0f} s")  # fmt: skip
    skipped = [] if clone else [f"clone=skipped:{xfs}"]
    print(
        f"summary: {' '.join([*summary, *skipped])} load1_start={load_start:.2f} "
        f"load1_end={load_end:.2f} target_copy_ratio={TARGET_COPY_RATIO} "
        f"target_clone_s={TARGET_CLONE_SECONDS} target_clone_at_mb={sizes[-1]} "
        f"target_clone_flat={TARGET_CLONE_FLAT} "
        f"ok={str(ok).lower()}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: every cluster stopped, the XFS unmounted", file=sys.stderr)
        sys.exit(130)
