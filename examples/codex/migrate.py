"""Apply migrations/NNN_name.sql in order, each in one transaction, once.

    DATABASE_URL=postgresql://... python migrate.py

Applied versions (NNN) are recorded in the journal table schema_migrations, which
branchline reads to show what a database branch has. An advisory lock lets two
runs at once wait for each other instead of failing.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import psycopg

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
LOCK = 7_368_434  # any number; the same in every run


class MigrationError(Exception):
    """A migration failed; it was rolled back and nothing after it ran."""


def migrate(url: str) -> list[str]:
    """Apply what is missing; return the versions applied now."""
    applied = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for path in sorted(MIGRATIONS.glob("[0-9]*_*.sql")):
            version = path.name.split("_", 1)[0]
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK,))
                done = conn.execute(
                    "SELECT 1 FROM schema_migrations WHERE version = %s", (version,)
                ).fetchone()
                if done:
                    continue
                try:
                    conn.execute(path.read_text())  # several statements: no parameters
                except psycopg.Error as error:
                    raise MigrationError(f"{path.name}: {error}") from error
                conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    (version, path.stem),
                )
            applied.append(path.stem)
            print(f"applied {path.name}", flush=True)
    return applied


if __name__ == "__main__":
    try:
        done = migrate(os.environ.get("DATABASE_URL", ""))  # empty: libpq's PG* variables
    except (MigrationError, psycopg.Error) as error:
        sys.exit(f"migrate: {error}")
    print(f"migrate: {len(done)} applied, schema up to date", flush=True)
