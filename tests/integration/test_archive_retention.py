"""Production's restore history stays bounded on real clusters: gc prunes the WAL
archive and base backups by size (the newest backup still restores, a fresh one
replaces a single backup whose WAL grew too much) and by age, a deleted production
leaves nothing behind (also when the delete crashed half-way), and the branch list
shows sizes measured now."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from branchline.config.sizes import SizeSpec, human_bytes
from branchline.errors import UsageError
from branchline.postgres import space
from branchline.providers.database import GcReport
from branchline.providers.database.local import HISTORY_LOCK, LocalDatabaseProvider
from branchline.providers.database.local_retention import segment_sizes
from branchline.store import Store
from branchline.store import branches as branch_rows
from tests.integration.test_database_local import _provider, execute, run, uri

pytestmark = pytest.mark.integration
MB = 1024**2


@pytest.fixture
def db(shared_store: Store, cluster_root: Path) -> Iterator[LocalDatabaseProvider]:
    yield from _provider(shared_store, cluster_root)


def _wal(db: LocalDatabaseProvider, segments: int) -> None:
    """Fill `segments` WAL segments of production and see them archived."""
    prod = uri(db, "production")
    execute(prod, "CREATE TABLE IF NOT EXISTS churn (v int)")
    for _ in range(segments):
        execute(prod, "INSERT INTO churn SELECT generate_series(1, 1000)")
        with psycopg.connect(db.cluster("production").uri(), autocommit=True) as conn:
            conn.execute("SELECT pg_switch_wal()")
    db._flush_wal_past()


def _moment(db: LocalDatabaseProvider, value: str) -> datetime:
    """Write `value` into production's `kept` table; a moment right after it."""
    prod = uri(db, "production")
    execute(prod, "CREATE TABLE IF NOT EXISTS kept (v text)")
    execute(prod, "INSERT INTO kept VALUES (%s)", (value,))
    (moment,) = execute(prod, "SELECT clock_timestamp()")[0]
    assert isinstance(moment, datetime)
    execute(prod, "INSERT INTO kept VALUES ('after')")  # not in a restore to `moment`
    return moment


def _limit(db: LocalDatabaseProvider, size: int) -> None:
    db.retention = dataclasses.replace(db.retention, size=SizeSpec(bytes=size))


def test_pruned_by_size_the_newest_backup_still_restores(db: LocalDatabaseProvider) -> None:
    _wal(db, 8)
    second = run(db, db.take_backup())
    at = _moment(db, "a")
    _wal(db, 8)
    before = db._archive_usage()
    assert before.backups == 2
    first = db.backups()[0]

    _limit(db, before.total - 4 * space.WAL_SEGMENT)  # dropping the first backup does it
    report = run(db, db.gc())
    after = db._archive_usage()
    print(f"archive and backups {human_bytes(before.total)} -> {human_bytes(after.total)}")
    assert [b.path for b in db.backups()] == [second.path]
    assert report.backups_pruned == [first.path.name]
    assert any("max_archive_size" in p for p in report.archive_pruned), report.archive_pruned
    assert not report.backup_taken
    assert min(segment_sizes(db.archive_dir)) >= second.start_wal_file
    assert report.archive is not None
    # The archiver goes on meanwhile (a segment or two): gc's figure is of its moment.
    assert report.archive["bytes"] <= report.archive["limit_bytes"]
    assert abs(report.archive["bytes"] - after.total) <= 2 * space.WAL_SEGMENT
    assert report.as_dict()["archive"]["oldest_restorable"] == second.end_time.isoformat()
    history = run(db, db.storage())["history"]  # what status and /metrics show
    assert abs(history["bytes"] - after.total) <= 2 * space.WAL_SEGMENT
    assert history["limit_bytes"] == after.limit_bytes

    # The newest backup and its WAL restore a moment after it.
    run(db, db.create_branch("restored-1", at=at))
    assert execute(uri(db, "restored-1"), "SELECT v FROM kept") == [("a",)]
    # A moment before it is no longer restorable, and the error says which are.
    with pytest.raises(UsageError) as caught:
        run(db, db.create_branch("too-old-1", at=second.end_time - timedelta(seconds=1)))
    assert "cannot be restored" in caught.value.message
    assert second.end_time.isoformat() in caught.value.message
    assert "max_archive_size" in caught.value.hint and "wal_retention" in caught.value.hint

    # Only one backup left and its WAL too much: a fresh backup replaces it.
    _wal(db, 10)
    grown = db._archive_usage()
    _limit(db, grown.backup_bytes + 6 * space.WAL_SEGMENT)
    report = run(db, db.gc())
    fresh = db.backups()
    shrunk = db._archive_usage()
    print(f"one backup and its WAL {human_bytes(grown.total)} -> {human_bytes(shrunk.total)}")
    assert report.backup_taken and len(fresh) == 1 and fresh[0].path != second.path
    assert report.backups_pruned == [second.path.name]
    assert shrunk.total <= shrunk.limit_bytes and not report.notes, report.notes
    later = _moment(db, "b")
    run(db, db.create_branch("restored-2", at=later))
    assert execute(uri(db, "restored-2"), "SELECT v FROM kept ORDER BY v") == [
        ("a",), ("after",), ("b",)]  # fmt: skip


def test_pruned_by_age(db: LocalDatabaseProvider) -> None:
    _wal(db, 4)
    (first,) = db.backups()
    held = segment_sizes(db.archive_dir)
    assert min(held) <= first.start_wal_file
    later = datetime.now(UTC) + timedelta(days=8)
    # While a restore reads the backups and WAL (it holds the history lock from
    # choosing its backup to the end of its recovery) nothing is pruned.

    async def gc_during_a_restore() -> GcReport:
        async with db._locked(HISTORY_LOCK):
            return await db.gc(now=later)

    report = run(db, gc_during_a_restore())
    assert report.backup_taken and not report.backups_pruned and not report.archive_pruned
    assert any("a restore from it is under way" in n for n in report.notes), report.notes
    # Eight days on, with the default 7 days: a new backup, and the older ones go.
    waited = db.backups()[1]
    report = run(db, db.gc(now=later))
    (kept,) = db.backups()
    assert report.backup_taken and kept.path not in (first.path, waited.path)
    assert report.backups_pruned == [first.path.name, waited.path.name]
    assert any("wal_retention" in p for p in report.archive_pruned), report.archive_pruned
    assert min(segment_sizes(db.archive_dir)) >= kept.start_wal_file
    assert sum(segment_sizes(db.archive_dir).values()) < sum(held.values())
    # Within the retention nothing more goes.
    again = run(db, db.gc())
    assert not again.backups_pruned and not again.backup_taken
    assert [b.path for b in db.backups()] == [kept.path]


def test_deleting_production_leaves_nothing_even_after_a_crash(db: LocalDatabaseProvider) -> None:
    run(db, db.create_branch("child-1"))
    _wal(db, 2)
    assert db.archive_dir.exists() and db.backups_dir.exists()

    def crash() -> None:  # dies half-way: the backups set aside, the archive not yet
        (db.state_dir / "trash").mkdir()
        db.backups_dir.rename(db.state_dir / "trash" / "backups-production-dead")
        raise RuntimeError("killed")

    db._remove_history = crash  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        run(db, db.delete_branch("production", force=True))
    del db._remove_history
    assert db.archive_dir.exists() and not db.cluster("production").home.exists()

    report = run(db, db.gc())  # finishes what the crash left
    assert "production (deleting)" in report.interrupted_cleaned
    assert not db.archive_dir.exists() and not db.backups_dir.exists()
    assert not list((db.state_dir / "trash").iterdir())
    assert {b.name for b in run(db, db.list_branches())} == {"child-1"}

    run(db, db.delete_branch("child-1"))
    # Only the archive command's script (shared by every root) stays in wal-archive/.
    assert [p.name for p in (db.state_dir / "wal-archive").iterdir()] == ["archive_wal.py"]
    assert not any((db.state_dir / "backups").iterdir())
    assert not list((db.state_dir / "branches").iterdir())
    assert not list(db.spares_dir.glob("production-*"))

    # What an older branchline left of a deleted production: gc removes it too.
    (db.archive_dir / "000000010000000000000001").parent.mkdir(parents=True)
    (db.archive_dir / "000000010000000000000001").write_bytes(b"x")
    report = run(db, db.gc())
    assert not db.archive_dir.exists()
    assert any("deleted 'production'" in p for p in report.archive_pruned)


def test_the_list_shows_sizes_measured_now(db: LocalDatabaseProvider) -> None:
    run(db, db.create_branch("grow-1"))
    sizes = {b.name: b.size_bytes for b in run(db, db.list_branches())}
    assert all(isinstance(s, int) and s > 0 for s in sizes.values()), sizes
    branch = uri(db, "grow-1")
    execute(branch, "CREATE TABLE big AS SELECT g, repeat('x', 200) FROM generate_series(1, 2e5) g")
    with psycopg.connect(db.cluster("grow-1").uri(), autocommit=True) as conn:
        conn.execute("CHECKPOINT")  # the table's pages on the disk, not only in WAL
    grown = {b.name: b.size_bytes for b in run(db, db.list_branches())}
    before, after = sizes["grow-1"], grown["grow-1"]
    assert isinstance(before, int) and isinstance(after, int)
    print(f"grow-1 listed {human_bytes(before)} then {human_bytes(after)}")
    assert after >= before + 40 * MB
    # The record still holds the size from creation; the list does not show it.
    stored = asyncio.run(_stored_size(db, "grow-1"))
    assert stored is not None and stored < after - 40 * MB
    # A branch whose cluster is gone shows no size rather than an old one.
    db.cluster("grow-1").destroy()
    gone = {b.name: b.size_bytes for b in run(db, db.list_branches())}
    assert gone["grow-1"] is None


async def _stored_size(db: LocalDatabaseProvider, name: str) -> int | None:
    async with db.store.connect() as conn:
        row = await branch_rows.get(conn, db.project, name)
    assert row is not None
    return row.size_bytes
