"""What shaping a test or preview branch costs, for a parent of 10 MB and 100 MB (and
1 GB): production's schema only (`data = "schema"`), a fresh database (`"empty"`),
and a copy masked by `[database.mask]` (e-mail and name of every user), each beside
a plain copy. Times are medians of `--rounds` (default 1), from `create_branch` until the
branch is ready; "shaping" is the part after the copy (recorded by the provider).

Target: the schema choice is flat, its shaping under 0.5 s and within 2x from the
smallest parent to the largest (it truncates; it does not copy or dump). Masking
rewrites every masked row, so it grows with the table: reported, not targeted.

    .venv/bin/python bench/branch_data.py [--large] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from branchline.branchdata import DataPlan, MaskRule
from branchline.postgres import Cluster
from branchline.providers.database.local import LocalDatabaseProvider
from branchline.store import Store, locate_state

TARGET_SCHEMA_SECONDS = 0.5
TARGET_FLAT = 2.0
SIZES_MB = (10, 100)
LARGE_MB = 1000
DATABASE = "app"
MB = 1024 * 1024
ROW_BYTES = 180
MASKS = (MaskRule("users.email", "email"), MaskRule("users.name", "name"))
PLANS = {
    "copy": None,
    "schema": DataPlan("schema"),
    "empty": DataPlan("empty"),
    "masked copy": DataPlan("copy", MASKS),
}


@dataclass
class Result:
    size_mb: int
    db_bytes: int = 0
    rows: int = 0
    create: dict[str, list[float]] = field(default_factory=dict)
    shaping: dict[str, list[float]] = field(default_factory=dict)


def _fill(cluster: Cluster, target_bytes: int) -> tuple[int, int]:
    """A users table of about `target_bytes`; (database size, rows)."""
    rows = max(1000, target_bytes // ROW_BYTES)
    with psycopg.connect(cluster.uri(DATABASE), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE schema_migrations (version text PRIMARY KEY);"
            "INSERT INTO schema_migrations VALUES ('001');"
            "CREATE TABLE users (id serial PRIMARY KEY, email text UNIQUE NOT NULL, "
            "name text, bio text)"
        )
        conn.execute(
            "INSERT INTO users (email, name, bio) SELECT 'person-' || g || '@corp.example', "
            "'Person ' || g, repeat('x', 100) FROM generate_series(1, %s) g",
            (rows,),
        )
        conn.execute("ALTER TABLE users OWNER TO app")  # the application role's, as migrated
        conn.execute("VACUUM ANALYZE users")
        conn.execute("CHECKPOINT")
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    assert size is not None
    return int(size[0]), rows


def _create(
    provider: LocalDatabaseProvider, name: str, plan: DataPlan | None
) -> tuple[float, float]:
    async def timed() -> tuple[float, float]:
        await provider.ensure_spare()
        began = time.perf_counter()
        branch = await provider.create_branch(name, data=plan)
        elapsed = time.perf_counter() - began
        await provider.aclose()  # the refill of the spare, untimed
        await provider.delete_branch(name)
        return elapsed, float(branch.detail.get("shaped", {}).get("seconds", 0.0))

    return asyncio.run(timed())


def _measure(store: Store, root: Path, size_mb: int, rounds: int) -> Result:
    state = root / f"db-{size_mb}"
    state.mkdir(mode=0o755)
    provider = LocalDatabaseProvider(
        project=f"bench-data-{size_mb}", state_dir=state, store=store, database=DATABASE
    )
    result = Result(size_mb)
    try:
        asyncio.run(provider.init_root())
        result.db_bytes, result.rows = _fill(provider.cluster(provider.root), size_mb * MB)
        asyncio.run(provider.ensure_spare())  # a spare of the filled parent
        provider.drop_spare()
        for i in range(rounds):
            for label, plan in PLANS.items():
                took, shaping = _create(provider, f"b-{size_mb}-{i}-{label[:4]}", plan)
                result.create.setdefault(label, []).append(took)
                result.shaping.setdefault(label, []).append(shaping)
    finally:
        for home in [*(state / "branches").glob("*"), *(state / "spares").glob("*-*")]:
            Cluster(home).destroy()
        shutil.rmtree(state, ignore_errors=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help=f"also a {LARGE_MB} MB parent")
    parser.add_argument("--rounds", type=int, default=1)  # a minute at most by default
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

    print(f"{'parent':<8}{'db MB':>8}{'rows':>10}  {'data':<14}{'create s':>10}{'shaping s':>11}")
    summary = []
    for r in results:
        for label in PLANS:
            create, shaping = (statistics.median(r.create[label]),
                               statistics.median(r.shaping[label]))  # fmt: skip
            print(f"{r.size_mb:<8}{r.db_bytes / MB:>8.1f}{r.rows:>10}  {label:<14}"
                  f"{create:>10.3f}{shaping:>11.3f}")  # fmt: skip
            key = label.replace(" ", "_")
            summary += [f"create_s_{key}_{r.size_mb}={create:.3f}",
                        f"shaping_s_{key}_{r.size_mb}={shaping:.3f}"]  # fmt: skip
    schema = [statistics.median(r.shaping["schema"]) for r in results]
    flat = max(schema) / max(min(schema), 1e-3)
    ok = max(schema) < TARGET_SCHEMA_SECONDS and flat <= TARGET_FLAT
    print(
        f"summary: {' '.join(summary)} schema_flatness={flat:.2f} "
        f"target_schema_s={TARGET_SCHEMA_SECONDS} target_flat={TARGET_FLAT} "
        f"ok={str(ok).lower()}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
