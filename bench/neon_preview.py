"""What a preview's database costs on Neon, measured on the fake Neon: the Neon API
calls branchline makes for one preview's branch (create with its own password, the
URI services get, the schema diff of the PR comment, the delete at cleanup), and the
wall time branchline spends outside waiting on Neon (its own work and the HTTP
round trips; the fake's operations, which stand for Neon's, are the waiting part).

Target: at most 16 API calls per preview when Neon answers at once.

    .venv/bin/python bench/neon_preview.py [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from branchline.fakes.neon import FakeNeon
from branchline.providers.database import schema_diff
from branchline.providers.database.neon import NeonDatabaseProvider
from branchline.providers.database.neon_api import NeonClient
from branchline.store import Store, locate_state

TARGET_CALLS = 16
KEY = "bench-key"


async def one_preview(db: NeonDatabaseProvider, name: str) -> tuple[int, float, float]:
    """Calls, seconds in all, and seconds spent waiting on Neon, for one preview."""
    calls, waited = db.client.count.calls, db.client.count.waited
    began = time.monotonic()
    await db.create_branch(name)
    await db.connection_uri(name)
    await schema_diff(db, db.root, name)
    await db.delete_branch(name)
    took = time.monotonic() - began
    return db.client.count.calls - calls, took, db.client.count.waited - waited


async def measure(fake: FakeNeon, store: Store, rounds: int) -> list[tuple[int, float, float]]:
    client = NeonClient(base_url=fake.url, api_key=KEY, project_id=fake.project_id)
    db = NeonDatabaseProvider(project="bench", store=store, client=client)
    try:
        await store.start()
        await db.init_root()
        return [await one_preview(db, f"pr-{i + 1}") for i in range(rounds)]
    finally:
        await db.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds
    work = Path(tempfile.mkdtemp(prefix="bench-neon-"))
    work.chmod(0o755)
    (work / "fake").mkdir(mode=0o755)
    fake = FakeNeon.start(work / "fake", api_key=KEY, operation_delay=0.0)
    store = Store(locate_state(work, {"BRANCHLINE_STATE_DIR": str(work / "state")}))
    try:
        results = asyncio.run(measure(fake, store, rounds))
        invalid = fake.calls()["validation_failures"]
    finally:
        fake.stop()
        store.stop()  # its embedded cluster
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'preview':>8} {'calls':>6} {'seconds':>8} {'waiting on Neon':>16} {'branchline':>11}")
    for i, (calls, took, waited) in enumerate(results, 1):
        print(f"{i:>8} {calls:>6} {took:>8.2f} {waited:>16.2f} {took - waited:>11.2f}")
    calls = int(statistics.median(r[0] for r in results))
    own = statistics.median(r[1] - r[2] for r in results)
    total = statistics.median(r[1] for r in results)
    ok = calls <= TARGET_CALLS and invalid == {"request": 0, "response": 0}
    print(f"summary: calls_per_preview={calls} seconds_per_preview={total:.2f} "
          f"branchline_seconds={own:.2f} invalid_exchanges={sum(invalid.values())} "
          f"target_calls={TARGET_CALLS} ok={ok}")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
