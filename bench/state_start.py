"""How fast the embedded state database comes up when already initialised.

Target (foundation issue): under 2 s from stopped to migrated and connectable.
Compares branchline's start (`Store.start`: lock, start postmaster, wait for
ready, check migrations) with the raw work it wraps (`pg_ctl start -w` of the
same cluster, then one connection).

    .venv/bin/python bench/state_start.py [--rounds N]
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
from pathlib import Path

import psycopg

from branchline.store import Store, locate_state

TARGET_SECONDS = 2.0


def _raw_start(store: Store) -> float:
    cluster = store.location.cluster
    began = time.perf_counter()
    subprocess.run(
        [
            cluster.binaries.path("pg_ctl"),
            "start",
            "-w",
            "-s",
            "-D",
            str(cluster.data_dir),
            "-l",
            "/dev/null",  # the log file belongs to root; pg_ctl runs as the cluster user
        ],
        check=True,
        user=cluster.run_as.uid,
        group=cluster.run_as.gid,
        extra_groups=cluster.run_as.extra_groups,
    )
    with psycopg.connect(cluster.uri("branchline")) as conn:
        conn.execute("SELECT 1")
    return time.perf_counter() - began


def _branchline_start(store: Store) -> float:
    began = time.perf_counter()
    asyncio.run(store.start())
    return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="branchline-bench-"))
    root.chmod(0o755)
    store = Store(locate_state(root, {"BRANCHLINE_STATE_DIR": str(root / "state")}))
    try:
        began = time.perf_counter()
        asyncio.run(store.start())
        first = time.perf_counter() - began
        store.stop()
        ours, raw = [], []
        for _ in range(args.rounds):
            ours.append(_branchline_start(store))
            store.stop()
            raw.append(_raw_start(store))
            store.stop()
    finally:
        store.location.cluster.destroy()
        shutil.rmtree(root, ignore_errors=True)
    median_ours, median_raw = statistics.median(ours), statistics.median(raw)
    print(f"{'what':<44}{'median s':>10}{'max s':>10}")
    print(f"{'first start (initdb + migrations)':<44}{first:>10.3f}{first:>10.3f}")
    print(f"{'branchline start, initialised':<44}{median_ours:>10.3f}{max(ours):>10.3f}")
    print(f"{'raw pg_ctl start -w + connect':<44}{median_raw:>10.3f}{max(raw):>10.3f}")
    ok = median_ours < TARGET_SECONDS
    print(
        f"summary: start_s={median_ours:.3f} raw_start_s={median_raw:.3f} "
        f"ratio={median_ours / median_raw:.2f} first_start_s={first:.3f} "
        f"target_s={TARGET_SECONDS} ok={str(ok).lower()}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
