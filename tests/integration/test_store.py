"""The control-plane store: migrations under an advisory lock, embedded start-up."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from branchline.errors import StoreError
from branchline.postgres import Cluster
from branchline.store import Store, locate_state
from branchline.store.migrate import Migration, apply_migrations, bundled_migrations

pytestmark = pytest.mark.integration


@pytest.fixture
def fresh_db(pg_cluster: Cluster) -> Iterator[str]:
    """An empty database in the session cluster, dropped afterwards."""
    name = f"t_{os.urandom(6).hex()}"
    with psycopg.connect(pg_cluster.uri(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield pg_cluster.uri(name)
    with psycopg.connect(pg_cluster.uri(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


async def _apply(url: str) -> list[Migration]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return await apply_migrations(conn)


def test_concurrent_migrations_apply_each_once(fresh_db: str) -> None:
    async def both() -> list[list[Migration]]:
        return list(await asyncio.gather(*(_apply(fresh_db) for _ in range(4))))

    results = asyncio.run(both())
    applied = [m.version for result in results for m in result]
    assert sorted(applied) == [m.version for m in bundled_migrations()]
    with psycopg.connect(fresh_db) as conn:
        rows = conn.execute("SELECT version FROM branchline.schema_migrations").fetchall()
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'branchline'"
        ).fetchone()
    assert [r[0] for r in rows] == [m.version for m in bundled_migrations()]
    assert tables is not None and tables[0] >= 18


def test_second_run_applies_nothing(fresh_db: str) -> None:
    assert asyncio.run(_apply(fresh_db))
    assert asyncio.run(_apply(fresh_db)) == []


def test_edited_migration_is_refused(fresh_db: str) -> None:
    asyncio.run(_apply(fresh_db))
    first = bundled_migrations()[0]
    edited = Migration(first.version, first.name, first.sql + "\n-- edited\n")

    async def again() -> None:
        async with await psycopg.AsyncConnection.connect(fresh_db, autocommit=True) as conn:
            await apply_migrations(conn, [edited])

    with pytest.raises(StoreError, match="changed after it was applied"):
        asyncio.run(again())


def test_failed_migration_leaves_nothing_half_applied(fresh_db: str) -> None:
    broken = [
        *bundled_migrations(),
        Migration(9998, "good", "CREATE TABLE branchline.fine (id int);"),
        Migration(9999, "bad", "CREATE TABLE branchline.oops (id int); SELECT 1/0;"),
    ]

    async def run() -> None:
        async with await psycopg.AsyncConnection.connect(fresh_db, autocommit=True) as conn:
            await apply_migrations(conn, broken)

    with pytest.raises(psycopg.errors.DivisionByZero):
        asyncio.run(run())
    with psycopg.connect(fresh_db) as conn:
        schema = conn.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'branchline'"
        ).fetchone()
    assert schema == (0,)


def test_external_url_is_used_as_is(fresh_db: str, tmp_path: Path) -> None:
    location = locate_state(tmp_path, {"BRANCHLINE_DATABASE_URL": fresh_db})
    report = asyncio.run(Store(location).start())
    assert report.kind == "external"
    assert "***" in report.display_url and fresh_db.split("@")[0].split(":")[-1] not in (
        report.display_url
    )
    assert not (tmp_path / ".branchline" / "postgres").exists()


def test_embedded_store_starts_restarts_and_stops(state_dir: Path) -> None:
    location = locate_state(Path("/nonexistent"), {"BRANCHLINE_STATE_DIR": str(state_dir)})
    store = Store(location)
    first = asyncio.run(store.start())
    assert first.was == "missing"
    assert [m.version for m in first.migrations_applied] == [
        m.version for m in bundled_migrations()
    ]
    again = asyncio.run(Store(location).start())
    assert again.was == "running" and again.migrations_applied == []
    assert store.stop() is True
    assert store.stop() is False
    restarted = asyncio.run(Store(location).start())
    assert restarted.was == "stopped"
    assert restarted.migrations_applied == []


def test_unreachable_state_database_explains(tmp_path: Path) -> None:
    location = locate_state(
        tmp_path,
        {"BRANCHLINE_DATABASE_URL": "postgresql://u:hunter2@127.0.0.1:1/x"},
    )
    with pytest.raises(StoreError) as info:
        asyncio.run(Store(location).start())
    assert "hunter2" not in info.value.message
    assert "***" in info.value.message
