"""What an idle database branch costs in memory: the proportional set size (PSS) of
its server's processes, each shared page counted once across them.

Target (instant branches issue): an idle branch costs at most 10 MB PSS (about 8 MB
was measured before clones; a dozen idle previews must fit on a small machine).
It makes a production cluster and a few branches with the provider as a user gets
them, lets them settle, and reads /proc/<pid>/smaps_rollup of each branch's
postmaster and its children; the raw floor is a bare `initdb` cluster with
Postgres' default settings, measured the same way in the same run.

    .venv/bin/python bench/branch_memory.py [--branches N] [--dir DIR]

(`--dir` on a filesystem that clones, e.g. a `db pool`, measures clone branches.)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from branchline.postgres import Cluster
from branchline.providers.database.local import LocalDatabaseProvider
from branchline.store import Store, locate_state

TARGET_MB = 10.0
SETTLE_S = 5.0


def _pss_kb(postmaster: int) -> tuple[int, int]:
    """PSS of a postmaster and its children in kB, and how many processes that is."""
    children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
    total = 0
    pids = [postmaster, *(int(c) for c in children)]
    for pid in pids:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1])
    return total, len(pids)


def _load() -> float:
    return os.getloadavg()[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--branches", type=int, default=4)
    parser.add_argument("--dir", type=Path, default=None, help="where to make the clusters")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="branchline-bench-", dir=args.dir))
    root.chmod(0o755)
    store = Store(locate_state(root, {"BRANCHLINE_STATE_DIR": str(root / "state")}))
    state = root / "db"
    state.mkdir(mode=0o755)
    provider = LocalDatabaseProvider(project="bench-mem", state_dir=state, store=store)
    bare = Cluster(root / "bare")
    load_before = _load()
    try:
        asyncio.run(store.start())

        async def make() -> None:
            await provider.init_root()
            for i in range(args.branches):
                await provider.create_branch(f"idle-{i}")
            await provider.aclose()

        asyncio.run(make())
        bare.init(durable=True, settings={})
        bare.start()
        time.sleep(SETTLE_S)  # start-up work (checkpoints, autovacuum's first look) done
        branches = []
        for i in range(args.branches):
            pid = provider.cluster(f"idle-{i}").postmaster_pid()
            assert pid is not None
            branches.append(_pss_kb(pid))
        bare_pid = bare.postmaster_pid()
        assert bare_pid is not None
        floor, floor_procs = _pss_kb(bare_pid)
        method = provider.branching_method()
    finally:
        for home in [*(state / "branches").glob("*"), *(state / "spares").glob("*-*"), bare.home]:
            Cluster(home).destroy()
        store.location.cluster.destroy()
        shutil.rmtree(root, ignore_errors=True)
    median_mb = statistics.median(kb for kb, _ in branches) / 1024
    procs = branches[0][1]
    print(f"branches made by {method}; load {load_before:.2f} -> {_load():.2f}")
    for i, (kb, n) in enumerate(branches):
        print(f"idle-{i}: {kb / 1024:.1f} MB PSS in {n} processes")
    print(f"bare initdb cluster (defaults): {floor / 1024:.1f} MB PSS in {floor_procs} processes")
    ok = median_mb <= TARGET_MB
    print(
        f"summary: idle_branch_pss_mb={median_mb:.1f} processes={procs} "
        f"bare_cluster_pss_mb={floor / 1024:.1f} ratio={median_mb / (floor / 1024):.2f} "
        f"target_mb={TARGET_MB} method={method} ok={str(ok).lower()}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
