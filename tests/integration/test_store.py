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


def test_one_open_pr_migration_keeps_the_first_of_duplicates_and_forks_apart(
    fresh_db: str,
) -> None:
    """Rows the race made before 0016: the first PR opened for a head stays open, the
    later duplicate is closed; forks mirrored before (repository unknown) keep theirs."""
    before = [m for m in bundled_migrations() if m.version < 16]
    asyncio.run(_apply_these(fresh_db, before))
    insert = (
        "INSERT INTO branchline.pull_requests (project, number, title, head_branch, "
        "base_branch, head_sha, state, fork) VALUES ('p', %s, 't', %s, 'main', %s, 'open', %s)"
    )
    with psycopg.connect(fresh_db) as conn:
        for number, head, fork in [(1, "feature", False), (2, "feature", False),
                                   (3, "patch-1", True), (4, "patch-1", True)]:  # fmt: skip
            conn.execute(insert, (number, head, "a" * 40, fork))
    assert 16 in [m.version for m in asyncio.run(_apply(fresh_db))]
    with psycopg.connect(fresh_db) as conn:
        states = conn.execute(
            "SELECT number, state, head_repo FROM branchline.pull_requests ORDER BY number"
        ).fetchall()
    assert states == [(1, "open", ""), (2, "closed", ""), (3, "open", "#3"), (4, "open", "#4")]


async def _apply_these(url: str, migrations: list[Migration]) -> list[Migration]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return await apply_migrations(conn, migrations)


def test_a_lock_held_here_outlives_the_state_database_session(
    shared_store: Store, tmp_path: Path
) -> None:
    """Postgres lets an advisory lock go with the holder's session; one also held on
    this machine's disk stays taken until its holder is done, and not a moment longer."""
    from branchline.store import locks

    key = f"branchline:test:{os.urandom(4).hex()}"

    async def scenario() -> tuple[bool, bool, bool]:
        async with locks.held(shared_store, key, here=tmp_path) as conn:
            cur = await conn.execute("SELECT pg_backend_pid()")
            row = await cur.fetchone()
            assert row is not None
            async with shared_store.connect() as other:
                await other.execute("SELECT pg_terminate_backend(%s)", (row[0],))
            async with locks.if_free(shared_store, key, here=tmp_path) as taken:
                busy_here = taken is None
            async with locks.if_free(shared_store, key) as taken:
                freed_in_postgres = taken is not None  # what the disk lock makes up for
        async with locks.if_free(shared_store, key, here=tmp_path) as taken:
            free_afterwards = taken is not None
        return busy_here, freed_in_postgres, free_afterwards

    busy_here, freed_in_postgres, free_afterwards = asyncio.run(scenario())
    assert freed_in_postgres, "the advisory lock outlived its session: the test shows nothing"
    assert busy_here, "the lock was free to take while its holder still worked"
    assert free_afterwards, "the lock stayed taken after its holder was done"
