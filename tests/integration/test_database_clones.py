"""Branches as copy-on-write clones, on a real reflink XFS: chosen by trying, made
online and consistent while the parent takes writes, without a spare, for branches
of branches, resets and restores; copies with pg_basebackup where the disk cannot
clone, and a clear error when clones are demanded there."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from branchline.config.sizes import SizeSpec
from branchline.errors import UsageError
from branchline.postgres import reflink, space
from branchline.providers.database.local import LocalDatabaseProvider
from branchline.store import Store
from tests.chaos.smallfs import MB, small_filesystem
from tests.integration.test_database_local import _provider, execute, run, uri

pytestmark = pytest.mark.integration


@pytest.fixture
def cloning_db(shared_store: Store, clone_dir: Path) -> Iterator[LocalDatabaseProvider]:
    yield from _provider(shared_store, clone_dir)


def test_the_clone_path_is_found_by_trying(clone_dir: Path, tmp_path: Path) -> None:
    assert reflink.can_clone(clone_dir / "probe")
    # tmp_path is not on the reflink filesystem; it may or may not clone (btrfs
    # could), so compare with what cp says rather than assuming.
    source = tmp_path / "a"
    source.write_bytes(b"x" * 8192)
    cp = subprocess.run(["cp", "--reflink=always", str(source), str(tmp_path / "b")],
                        capture_output=True, check=False)  # fmt: skip
    assert reflink.can_clone(tmp_path / "probe") is (cp.returncode == 0)
    assert not list((clone_dir / "probe").iterdir()), "the probe leaves nothing behind"


def test_a_clone_branch_holds_the_parent_and_needs_no_spare(
    cloning_db: LocalDatabaseProvider,
) -> None:
    db = cloning_db
    assert db.branching_method() == "clone"
    prod = uri(db, "production")
    execute(prod, "CREATE TABLE t (id int PRIMARY KEY, v text)")
    execute(prod, "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 50000) g")
    branch = run(db, db.create_branch("pr-1"))
    assert branch.detail["made_by"] == "clone"
    # Honest sizes: the clone owns only what it wrote (its WAL since the copy, the
    # backup label), not the blocks it shares with production.
    sizes = {b.name: b.size_bytes for b in run(db, db.list_branches())}
    own, whole = sizes["pr-1"], sizes["production"]
    assert own is not None and whole is not None
    print(f"production {whole / 2**20:.1f} MB, the clone's own {own / 2**20:.1f} MB")
    assert own < 4 * 2**20 < whole, (own, whole)  # a WAL segment zero-filled would be 16 MB
    pr = uri(db, "pr-1")
    assert execute(pr, "SELECT count(*), sum(id) FROM t") == [(50000, 1250025000)]
    # Independent both ways, and no replication slot of the parent's came along.
    execute(pr, "DELETE FROM t WHERE id <= 10")
    execute(prod, "INSERT INTO t VALUES (0, 'new')")
    assert execute(prod, "SELECT count(*) FROM t") == [(50001,)]
    assert execute(pr, "SELECT count(*) FROM t") == [(49990,)]
    assert execute(pr, "SELECT count(*) FROM pg_replication_slots") == [(0,)]
    with psycopg.connect(db.cluster("production").uri(), autocommit=True) as conn:
        slots = conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone()
    assert slots == (0,), "the clone's temporary slot is gone from production"
    # Clones make the spare pointless: none is made, and `status` says why.
    assert run(db, db.ensure_spare()) is False and db.spare is None
    assert db.spare_note is not None and "clones" in db.spare_note
    assert run(db, db.storage())["branching"] == "clone"
    # A branch of the branch, and a reset, are clones too.
    child = run(db, db.create_branch("pr-1-child", "pr-1"))
    assert child.detail["made_by"] == "clone"
    assert execute(uri(db, "pr-1-child"), "SELECT count(*) FROM t") == [(49990,)]
    before = uri(db, "pr-1")
    run(db, db.reset_branch("pr-1"))
    assert uri(db, "pr-1") == before  # the same URI after a reset
    assert execute(before, "SELECT count(*) FROM t") == [(50001,)]


def test_a_clone_under_continuous_writes_holds_a_gapless_prefix(
    cloning_db: LocalDatabaseProvider,
) -> None:
    """Rows 1, 2, 3... each committed alone while branches are made: every branch
    holds exactly 1..n, with n at least what was committed before it was asked for."""
    db = cloning_db
    prod = uri(db, "production")
    execute(prod, "CREATE TABLE seq (n bigint PRIMARY KEY, pad text)")
    committed = 0
    stop = threading.Event()
    failure: list[BaseException] = []

    def writer() -> None:
        nonlocal committed
        try:
            with psycopg.connect(prod, autocommit=True) as conn:
                n = 0
                while not stop.is_set():
                    n += 1
                    conn.execute("INSERT INTO seq VALUES (%s, repeat('x', 500))", (n,))
                    committed = n
        except BaseException as exc:  # reported by the test below
            failure.append(exc)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        for i in range(3):
            time.sleep(0.3)
            floor = committed
            run(db, db.create_branch(f"w-{i}"))
            rows = execute(uri(db, f"w-{i}"), "SELECT count(*), min(n), max(n) FROM seq")
            count, low, high = rows[0]
            assert isinstance(count, int) and isinstance(high, int)
            assert count >= floor > 0, (count, floor)
            assert (low, high) == (1, count), f"a gap in the branch: {rows}"
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not failure, failure
    assert committed > 0


def test_point_in_time_restore_on_a_cloning_disk(cloning_db: LocalDatabaseProvider) -> None:
    db = cloning_db
    prod = uri(db, "production")
    execute(prod, "CREATE TABLE moments (v int)")
    execute(prod, "INSERT INTO moments VALUES (1)")
    time.sleep(1.1)
    at = datetime.now(UTC)
    time.sleep(1.1)
    execute(prod, "INSERT INTO moments VALUES (2)")
    branch = run(db, db.restore("before-two", at))
    assert branch.detail["made_by"] == "restore"
    assert execute(uri(db, "before-two"), "SELECT v FROM moments") == [(1,)]


def test_copies_where_clones_are_not_wanted_or_not_possible(
    shared_store: Store, clone_dir: Path, cluster_root: Path
) -> None:
    for db in _provider(shared_store, clone_dir, branching="copy"):
        assert db.branching_method() == "copy"
        assert run(db, db.create_branch("pr-1")).detail["made_by"] == "copy"
    # A tmpfs never clones (clone_dir's root makes it): clones demanded there.
    with small_filesystem(cluster_root, 256 * MB) as no_clones:
        assert not reflink.can_clone(no_clones / "probe")
        for db in _provider(shared_store, no_clones, branching="clone"):
            with pytest.raises(UsageError) as caught:
                run(db, db.create_branch("pr-1"))
            assert "cannot clone files" in caught.value.message
            assert "db pool create" in caught.value.hint
            assert run(db, db.get_branch("pr-1")) is None  # refused before anything was made
            # Housekeeping and status still work, and say why nothing can be made.
            assert run(db, db.storage())["branching"].startswith("none: clones are set")
            run(db, db.gc())


def test_the_room_check_counts_a_clone_by_what_it_writes(
    cloning_db: LocalDatabaseProvider,
) -> None:
    """A clone shares its parent's data: the free-space check asks only for what it
    writes, so it is made where a copy would be refused, and refused only below that."""
    db = cloning_db
    prod = uri(db, "production")
    execute(prod, "CREATE TABLE big AS SELECT g, repeat('x', 900) AS pad "
                  "FROM generate_series(1, 100000) g")  # fmt: skip
    clone_need = db._need_for_branch("production", None, "clone")
    copy_need = db._need_for_branch("production", None, "copy")
    assert copy_need > clone_need + 64 * 2**20, (clone_need, copy_need)
    room = db.disk.room()
    # Room for the clone and not for a copy: the clone is made.
    db.min_free = SizeSpec(bytes=room.free - (clone_need + copy_need) // 2)
    assert run(db, db.create_branch("fits")).detail["made_by"] == "clone"
    # Not even room for what a clone writes: refused before anything is made.
    db.min_free = SizeSpec(bytes=db.disk.room().free - clone_need // 2)
    with pytest.raises(space.DiskFullError, match="not enough disk space to create branch"):
        run(db, db.create_branch("refused"))
    assert run(db, db.get_branch("refused")) is None
