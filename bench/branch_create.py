"""How fast a database branch is made from a parent of 10 MB, 100 MB (and 1 GB).

Targets (database branches issue): branch creation within 1.3x of a raw copy of
the parent's files, and under 1 s for a 100 MB parent. For each parent size it
times, as the median of a few rounds:

- branch: `LocalDatabaseProvider.create_branch` until the branch answers
  `SELECT 1`, as a user meets it: a spare standby of the parent is ready (the
  provider refills it after each create, untimed here) and is promoted;
- cold branch: the same with no spare ready, so the branch is an online
  `pg_basebackup` copy (store rows, copy, start-up);
- raw copy: `cp -a` of the parent's `base/` and `global/` after a `CHECKPOINT`,
  then `sync` (the copy limit of this disk), as the cluster's user;
- template: `CREATE DATABASE copy TEMPLATE app` on the idle parent;
- pg_basebackup: the same copy branchline makes, alone (for context).

    .venv/bin/python bench/branch_create.py [--large] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from branchline.postgres import Cluster
from branchline.postgres.copy import basebackup_args, directory_size, password_env
from branchline.providers.database.local import LocalDatabaseProvider
from branchline.store import Store, locate_state

TARGET_RATIO = 1.3
TARGET_100_SECONDS = 1.0
SIZES_MB = (10, 100)
LARGE_MB = 1000
DATABASE = "app"
MB = 1024 * 1024
ROW_BYTES = 282  # a row of the table below, with its share of the page
ROWS = "SELECT g, md5(g::text), repeat('x', 200) FROM generate_series(%s::int, %s::int) g"
CREATE_TABLE = "CREATE TABLE t (id, a, b) AS " + ROWS
INSERT_ROWS = "INSERT INTO t " + ROWS


@dataclass
class Result:
    size_mb: int  # the nominal parent size
    db_bytes: int = 0  # pg_database_size of the parent's database
    files_bytes: int = 0  # base/ + global/ of the parent cluster
    files: int = 0  # how many files those are (creating files is much of a copy's cost)
    create: list[float] = field(default_factory=list)
    cold: list[float] = field(default_factory=list)
    raw_copy: list[float] = field(default_factory=list)
    template: list[float] = field(default_factory=list)
    basebackup: list[float] = field(default_factory=list)


def _fill(cluster: Cluster, target_bytes: int) -> int:
    """Grow a realistic table in the parent's database to `target_bytes`; the real size."""
    with psycopg.connect(cluster.uri(DATABASE), autocommit=True) as conn:
        size, first = _database_size(conn), 1
        rows = max(1000, int((target_bytes - size) / ROW_BYTES))
        conn.execute(CREATE_TABLE, (first, rows))
        first += rows
        size = _database_size(conn)
        while size < target_bytes * 0.98:  # top up if the estimate fell short
            rows = max(1000, int((target_bytes - size) / ROW_BYTES))
            conn.execute(INSERT_ROWS, (first, first + rows - 1))
            first += rows
            size = _database_size(conn)
        conn.execute("VACUUM ANALYZE t")  # hint bits and visibility map set, as on a live database
        conn.execute("CHECKPOINT")
        return size


def _database_size(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    assert row is not None
    return int(row[0])


def _as_user(cluster: Cluster, args: list[str]) -> None:
    run_as = cluster.run_as
    subprocess.run(
        args, check=True, user=run_as.uid, group=run_as.gid, extra_groups=run_as.extra_groups
    )


def _raw_copy(cluster: Cluster, dest: Path) -> float:
    with psycopg.connect(cluster.uri(), autocommit=True) as conn:
        conn.execute("CHECKPOINT")
    subprocess.run(["sync"], check=True)  # nothing of earlier work left to flush
    dest.mkdir()
    cluster.run_as.own(dest)
    try:
        began = time.perf_counter()
        src = cluster.data_dir
        _as_user(cluster, ["cp", "-a", str(src / "base"), str(src / "global"), str(dest)])
        subprocess.run(["sync"], check=True)
        return time.perf_counter() - began
    finally:
        shutil.rmtree(dest)


def _template(cluster: Cluster) -> float:
    # Connected to `postgres`: the template must have no other sessions.
    with psycopg.connect(cluster.uri(), autocommit=True) as conn:
        began = time.perf_counter()
        conn.execute("CREATE DATABASE copy TEMPLATE app")
        elapsed = time.perf_counter() - began
        conn.execute("DROP DATABASE copy")
    return elapsed


def _basebackup(cluster: Cluster, dest: Path) -> float:
    dest.mkdir()
    cluster.run_as.own(dest)
    try:
        began = time.perf_counter()
        cluster.run_tool(
            basebackup_args(cluster, dest / "data", durable=False),
            what="pg_basebackup",
            env=password_env(cluster),
        )
        return time.perf_counter() - began
    finally:
        shutil.rmtree(dest)


def _branch(provider: LocalDatabaseProvider, name: str, *, spare: bool) -> float:
    async def timed() -> float:
        await provider.ensure_spare()
        if not spare:
            provider.drop_spare()
        began = time.perf_counter()
        await provider.create_branch(name)
        with psycopg.connect(provider.cluster(name).uri(DATABASE)) as conn:
            conn.execute("SELECT 1")
        elapsed = time.perf_counter() - began
        await provider.aclose()  # the refill of the spare, untimed
        await provider.delete_branch(name)
        return elapsed

    return asyncio.run(timed())


def _measure(store: Store, root: Path, size_mb: int, rounds: int) -> Result:
    state = root / f"db-{size_mb}"
    state.mkdir(mode=0o755)
    provider = LocalDatabaseProvider(
        project=f"bench-{size_mb}", state_dir=state, store=store, database=DATABASE
    )
    result = Result(size_mb)
    try:
        asyncio.run(provider.init_root())
        parent = provider.cluster(provider.root)
        result.db_bytes = _fill(parent, size_mb * MB)
        copied = [parent.data_dir / "base", parent.data_dir / "global"]
        result.files_bytes = sum(directory_size(path) for path in copied)
        result.files = sum(1 for path in copied for f in path.rglob("*") if f.is_file())
        steps: list[tuple[list[float], Callable[[int], float]]] = [
            (result.raw_copy, lambda i: _raw_copy(parent, root / f"raw-{size_mb}-{i}")),
            (result.template, lambda i: _template(parent)),
            (result.basebackup, lambda i: _basebackup(parent, root / f"bb-{size_mb}-{i}")),
            (result.create, lambda i: _branch(provider, f"bench-{size_mb}-{i}", spare=True)),
            (result.cold, lambda i: _branch(provider, f"cold-{size_mb}-{i}", spare=False)),
        ]
        for i in range(rounds):
            for into, step in steps:
                into.append(step(i))
    finally:
        for home in [*(state / "branches").glob("*"), *(state / "spares").glob("*-*")]:
            Cluster(home).destroy()
        shutil.rmtree(state, ignore_errors=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help=f"also a {LARGE_MB} MB parent")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sizes = [*SIZES_MB, *([LARGE_MB] if args.large else [])]
    root = Path(tempfile.mkdtemp(prefix="branchline-bench-"))
    root.chmod(0o755)
    store = Store(locate_state(root, {"BRANCHLINE_STATE_DIR": str(root / "state")}))
    results = []
    try:
        asyncio.run(store.start())
        for size_mb in sizes:
            results.append(_measure(store, root, size_mb, args.rounds))
    finally:
        store.location.cluster.destroy()
        shutil.rmtree(root, ignore_errors=True)

    print(
        f"{'parent':<8}{'db MB':>8}{'files MB':>10}{'files':>7}  {'what':<26}"
        f"{'median s':>10}{'max s':>10}{'x raw copy':>12}"
    )
    ok = True
    summary = []
    for r in results:
        raw = statistics.median(r.raw_copy)
        create = statistics.median(r.create)
        template = statistics.median(r.template)
        ratio = create / raw
        rows = [
            ("branch create", r.create),
            ("branch create, cold copy", r.cold),
            ("raw copy + sync", r.raw_copy),
            ("CREATE DATABASE TEMPLATE", r.template),
            ("pg_basebackup alone", r.basebackup),
        ]
        for label, times in rows:
            median = statistics.median(times)
            print(
                f"{r.size_mb:<8}{r.db_bytes / MB:>8.1f}{r.files_bytes / MB:>10.1f}{r.files:>7}"
                f"  {label:<26}"
                f"{median:>10.3f}{max(times):>10.3f}{median / raw:>12.2f}"
            )
        ok = ok and ratio <= TARGET_RATIO
        if r.size_mb == 100:
            ok = ok and create < TARGET_100_SECONDS
        n = r.size_mb
        summary += [
            f"size_mb_{n}={r.db_bytes / MB:.1f}",
            f"create_s_{n}={create:.3f}",
            f"raw_copy_s_{n}={raw:.3f}",
            f"template_s_{n}={template:.3f}",
            f"basebackup_s_{n}={statistics.median(r.basebackup):.3f}",
            f"ratio_{n}={ratio:.2f}",
            f"cold_create_s_{n}={statistics.median(r.cold):.3f}",
            f"cold_ratio_{n}={statistics.median(r.cold) / raw:.2f}",
        ]
    print(
        f"summary: {' '.join(summary)} target_ratio={TARGET_RATIO} "
        f"target_s_100={TARGET_100_SECONDS} ok={str(ok).lower()}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
