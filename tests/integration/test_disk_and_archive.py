"""The local provider's disk rules on real clusters: copies refused before they eat
into production's reserve, the spare skipped (said once) and gc still running, a
failing WAL archive stopping backups and named by restores, partial archived
segments repaired, and an older root's plain `cp` archive command replaced."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from branchline.config.sizes import SizeSpec
from branchline.postgres import archive_wal, archiver, space
from branchline.providers.database.local import LocalDatabaseProvider
from branchline.providers.database.local_disk import ArchiveFailingError
from branchline.server.metrics import storage_lines
from branchline.store import Store
from tests.chaos.smallfs import MB, small_filesystem, why_not
from tests.integration.test_database_local import _provider, execute, run, uri

pytestmark = pytest.mark.integration


@pytest.fixture
def db(shared_store: Store, cluster_root: Path) -> Iterator[LocalDatabaseProvider]:
    yield from _provider(shared_store, cluster_root)


def _switch(db: LocalDatabaseProvider, rows: int = 1) -> str:
    """Write something and close the WAL segment that holds it; its name."""
    prod = uri(db, "production")
    execute(prod, "CREATE TABLE IF NOT EXISTS t (v int)")
    execute(prod, "INSERT INTO t SELECT generate_series(1, %s)", (rows,))
    with psycopg.connect(db.cluster("production").uri(), autocommit=True) as conn:
        row = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()
    assert row is not None
    return str(row[0])


def _wait(check: object, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s")


def _archive_state(db: LocalDatabaseProvider) -> dict[str, object]:
    archive = run(db, db.storage())["archive"]
    assert isinstance(archive, dict)
    return archive


def test_a_copy_into_the_reserve_is_refused_and_production_keeps_writing(
    db: LocalDatabaseProvider, caplog: pytest.LogCaptureFixture
) -> None:
    assert run(db, db.ensure_spare()) is True and db.spare is not None
    db.min_free = SizeSpec(fraction=1.0)  # the whole disk kept for production's WAL
    with pytest.raises(space.DiskFullError) as caught:
        run(db, db.create_branch("pr-1"))
    err = caught.value
    assert err.exit_code == 2 and "internal error" not in err.message
    assert err.message.startswith("not enough disk space to create branch 'pr-1' from ")
    assert "it needs about" in err.message and "is free on" in err.message
    assert "[database.local] min_free" in err.message
    assert "`branchline db gc`" in err.hint and "min_free" in err.hint
    # Refused before anything was made: no record, no cluster.
    assert run(db, db.get_branch("pr-1")) is None
    assert not (db.state_dir / "branches" / "pr-1").exists()
    # Production is not the one starved.
    execute(uri(db, "production"), "CREATE TABLE still_writing (v int)")
    execute(uri(db, "production"), "INSERT INTO still_writing VALUES (1)")

    # The disk is into the reserve: the spare goes first, then none is made (said once).
    caplog.set_level(logging.WARNING, logger="branchline")
    assert run(db, db.ensure_spare()) is False
    assert db.spare is None and db.spare_note is not None and "dropped" in db.spare_note
    assert run(db, db.ensure_spare()) is False and run(db, db.ensure_spare()) is False
    assert db.spare_note is not None and db.spare_note.startswith("skipped: it needs about")
    said = [r.getMessage() for r in caplog.records if "spare copy" in r.getMessage()]
    assert len(said) == 2, said  # dropped once, skipped once: not on every retry
    report = run(db, db.gc())  # gc never needs a spare to run
    assert report.spare_rebuilt is False
    assert any(n.startswith("spare copy skipped") for n in report.notes), report.notes
    with pytest.raises(space.DiskFullError, match="take a base backup"):
        run(db, db.take_backup())

    db.min_free = None  # room again: everything works, the spare comes back
    assert run(db, db.create_branch("pr-1")).name == "pr-1"
    assert run(db, db.ensure_spare()) is True
    execute(uri(db, "pr-1"), "CREATE TABLE on_branch (v int)")
    db.min_free = SizeSpec(fraction=1.0)  # a reset is a whole copy too: refused, kept
    with pytest.raises(space.DiskFullError, match="to reset branch 'pr-1'"):
        run(db, db.reset_branch("pr-1"))
    assert execute(uri(db, "pr-1"), "SELECT count(*) FROM on_branch") == [(0,)]


def test_backup_fails_while_archiving_fails_and_gc_wakes_the_archiver(
    db: LocalDatabaseProvider,
) -> None:
    archive = db.archive_dir
    # What production had to archive before (the first base backup's history file
    # sorts before the next segment) is archived first: the next failure is `failed`.
    status = db.cluster("production").data_dir / "pg_wal" / "archive_status"
    _wait(lambda: not any(status.glob("*.ready")))
    archive.chmod(0o500)  # the Postgres user cannot write into it: archiving fails
    try:
        failed = _switch(db)
        _wait(lambda: _archive_state(db)["failing"])
        state = _archive_state(db)
        assert state["last_failed_wal"] == failed and state["pending_segments"] >= 1
        assert "Permission denied" in str(state["reason"])
        assert "branchline_wal_archive_failing 1.0" in storage_lines(run(db, db.storage()))

        with pytest.raises(ArchiveFailingError) as caught:
            run(db, db.take_backup())
        assert "WAL archiving of production is failing" in caught.value.message
        assert failed in caught.value.message and "Permission denied" in caught.value.message
        before = len(db.backups())

        began = time.monotonic()
        with pytest.raises(ArchiveFailingError) as restore_err:
            run(db, db.restore("at-fault", datetime.now(UTC)))
        assert time.monotonic() - began < 15, "named at once, not after a timeout"
        assert "could not be archived" in restore_err.value.message
        assert "Permission denied" in restore_err.value.message
        assert run(db, db.get_branch("at-fault")) is None
        assert len(db.backups()) == before
    finally:
        archive.chmod(0o700)
    # The archiver retries by itself (at the next segment, or within a minute); gc,
    # which serve's reconcile runs, wakes it at once and says so.
    report = run(db, db.gc())
    assert any(r.startswith("WAL archiving resumed after") for r in report.archive_repaired)
    assert not _archive_state(db)["failing"]
    assert "branchline_wal_archive_failing 0.0" in storage_lines(run(db, db.storage()))
    backup = run(db, db.take_backup())
    assert backup.start_wal_file > failed


def test_partial_and_missing_segments_are_named_and_repaired(db: LocalDatabaseProvider) -> None:
    prod = uri(db, "production")
    execute(prod, "CREATE TABLE kept (v text)")
    execute(prod, "INSERT INTO kept VALUES ('before the fault')")
    first = _switch(db)
    middle = _switch(db)
    _switch(db)
    _wait(lambda: _archive_state(db)["last_archived_wal"] >= middle)
    size = archiver.segment_size(db.cluster("production"))
    # What a plain `cp` left when the disk filled: 7,356,416 of 16,777,216 bytes.
    segment = db.archive_dir / first
    whole = segment.read_bytes()
    segment.write_bytes(whole[:7_356_416])
    with pytest.raises(ArchiveFailingError) as caught:
        run(db, db.restore("r1", datetime.now(UTC)))
    assert f"WAL segment {first} is needed" in caught.value.message
    assert f"holds only 7356416 of its {size} bytes" in caught.value.message

    report = run(db, db.gc())  # production's pg_wal still holds it: copied again
    assert report.archive_repaired == [
        f"replaced the partial archived segment {first} (7356416 of {size} bytes) "
        "from production's pg_wal"
    ]
    assert segment.read_bytes() == whole
    restored = run(db, db.restore("r1", datetime.now(UTC)))
    assert execute(run(db, db.connection_uri(restored.name)), "SELECT v FROM kept") == [
        ("before the fault",)
    ]
    (db.archive_dir / middle).unlink()
    with pytest.raises(ArchiveFailingError, match=f"{middle} is needed and it is not in the"):
        run(db, db.restore("r2", datetime.now(UTC)))


def test_a_root_with_the_old_cp_command_gets_the_atomic_one(db: LocalDatabaseProvider) -> None:
    root = db.cluster("production")
    meta = root.meta()
    old = f"test ! -f {db.archive_dir}/%f && cp %p {db.archive_dir}/%f"
    root.write_meta(meta.with_settings({**meta.settings, "archive_command": old}))
    assert db.disk.ensure_archiving() is True  # running: reloaded, no restart

    def command() -> str:
        with psycopg.connect(root.uri(), autocommit=True) as conn:
            row = conn.execute("SHOW archive_command").fetchone()
        return str(row[0]) if row else ""

    _wait(lambda: "archive_wal.py" in command(), timeout=10)
    assert "cp %p" not in command() and db.disk.ensure_archiving() is False
    name = _switch(db)
    _wait(lambda: (db.archive_dir / name).exists())
    assert not archiver.temp_files(db.archive_dir)


def test_storage_is_reported(db: LocalDatabaseProvider) -> None:
    storage = asyncio.run(db.storage())
    disk = storage["disk"]
    assert 0 < disk["free_bytes"] <= disk["total_bytes"] and disk["reserve_bytes"] > 0
    assert storage["archive"]["failing"] is False
    text = storage_lines(storage)
    for name in ("branchline_disk_free_bytes", "branchline_disk_reserve_bytes",
                 "branchline_wal_archive_pending_segments", "branchline_wal_bytes"):  # fmt: skip
        assert f"# TYPE {name} gauge" in text


def test_archiving_onto_a_full_disk_leaves_no_partial_segment(
    cluster_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The plain `cp` this replaces left 7,356,416 of 16,777,216 bytes under the real
    name, and `test ! -f` then refused that segment for ever."""
    reason = why_not()
    if reason is not None:
        pytest.skip(reason)
    name = "000000010000000000000009"
    source = tmp_path / name
    source.write_bytes(os.urandom(4 * MB))
    with small_filesystem(cluster_root, 2 * MB) as mount:  # tmpfs: XFS needs 300 MB
        archive = mount / "archive"
        archive.mkdir()
        assert archive_wal.archive(archive, source, name) == 1  # ENOSPC half way
        assert f"could not archive {name}: No space left on device" in capsys.readouterr().err
        assert list(archive.iterdir()) == []  # no partial under the name, no temp file
        (archive / name).write_bytes(source.read_bytes()[: MB // 2])  # an old cp's leftover
        assert archive_wal.archive(archive, source, name) == 1
        assert (archive / name).stat().st_size == MB // 2  # not made worse; gc repairs it
        assert archiver.partial_segments(archive, 4 * MB) == [(name, MB // 2)]
    with small_filesystem(cluster_root, 16 * MB) as mount:  # room again: archived whole
        assert archive_wal.archive(mount, source, name) == 0
        assert (mount / name).read_bytes() == source.read_bytes()
