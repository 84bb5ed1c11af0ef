"""Plain SQL migrations for branchline's own schema, applied at start-up.

Files in `migrations/` are named `NNNN_name.sql` and applied in order, each
once, inside one transaction that holds an advisory lock: two processes that
start at the same moment both succeed and the schema is applied once.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import psycopg

from branchline.errors import StoreError

# A fixed key for pg_advisory_xact_lock: "branchline.migrations" hashed to 63 bits.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"branchline.migrations").digest()[:8], "big") >> 1
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def bundled_migrations() -> list[Migration]:
    """The migrations shipped with this version of branchline, in order."""
    found = []
    for entry in resources.files("branchline.store").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise StoreError("two bundled migrations share a version number")
    return found


async def apply_migrations(
    conn: psycopg.AsyncConnection[object], migrations: list[Migration] | None = None
) -> list[Migration]:
    """Apply what is missing; return the migrations applied by this call."""
    migrations = bundled_migrations() if migrations is None else migrations
    applied_now: list[Migration] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        await conn.execute("CREATE SCHEMA IF NOT EXISTS branchline")
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS branchline.schema_migrations (
                    version    integer PRIMARY KEY,
                    name       text NOT NULL,
                    checksum   text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        cur = await conn.execute("SELECT version, checksum FROM branchline.schema_migrations")
        rows: list[tuple[int, str]] = await cur.fetchall()  # type: ignore[assignment]
        done = dict(rows)
        for migration in migrations:
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    raise StoreError(
                        f"migration {migration.version:04d}_{migration.name} was changed "
                        "after it was applied to this state database",
                        hint="Never edit an applied migration: add a new one instead.",
                    )
                continue
            # Bytes: a migration file holds several statements, sent as one simple query.
            await conn.execute(migration.sql.encode())
            await conn.execute(
                "INSERT INTO branchline.schema_migrations (version, name, checksum) "
                "VALUES (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum),
            )
            applied_now.append(migration)
        await _apply_queue_schema(conn)
    return applied_now


async def _apply_queue_schema(conn: psycopg.AsyncConnection[object]) -> None:
    """procrastinate's own tables (the job queue), once, under the same lock. Looked up
    through the search_path, as procrastinate's own unqualified queries will."""
    cur = await conn.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL")
    exists = await cur.fetchone()
    if exists == (True,):
        return
    from procrastinate.schema import SchemaManager

    await conn.execute(SchemaManager.get_schema().encode())
