"""Local database branches on real Postgres clusters: isolation, consistency under
load, concurrency, idempotence, reset, point-in-time restore, gc."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest

from branchline.errors import UsageError
from branchline.postgres import Cluster
from branchline.providers.database import BranchStatus, DatabaseProvider
from branchline.providers.database.local import Branching, LocalDatabaseProvider
from branchline.store import Store, resources
from branchline.store import branches as branch_rows

pytestmark = pytest.mark.integration
T = TypeVar("T")


def _provider(
    store: Store, root_dir: Path, branching: Branching = "auto"
) -> Iterator[LocalDatabaseProvider]:
    state = Path(tempfile.mkdtemp(prefix="db-", dir=root_dir))
    state.chmod(0o755)
    provider = LocalDatabaseProvider(project=f"p{os.urandom(4).hex()}", state_dir=state,
                                     store=store, database="app", branching=branching)  # fmt: skip
    try:
        run(provider, provider.init_root())
        yield provider
    finally:
        for home in [*(state / "branches").glob("*"), *(state / "spares").glob("*-*")]:
            Cluster(home).destroy()
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def db(shared_store: Store, cluster_root: Path) -> Iterator[LocalDatabaseProvider]:
    yield from _provider(shared_store, cluster_root)


@pytest.fixture
def fresh_db(shared_store: Store, cluster_root: Path) -> Iterator[LocalDatabaseProvider]:
    yield from _provider(shared_store, cluster_root)


def run(db: LocalDatabaseProvider, work: Coroutine[Any, Any, T]) -> T:
    """Run provider work as a command would: background work finishes before the end."""

    async def main() -> T:
        try:
            return await work
        finally:
            await db.aclose()

    return asyncio.run(main())


def uri(db: LocalDatabaseProvider, name: str) -> str:
    return run(db, db.connection_uri(name))


def execute(url: str, query: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def test_provider_satisfies_the_interface(db: LocalDatabaseProvider) -> None:
    assert isinstance(db, DatabaseProvider)


def test_init_root_is_idempotent(db: LocalDatabaseProvider) -> None:
    first = run(db, db.get_branch("production"))
    again = run(db, db.init_root())
    assert first is not None and again.port == first.port
    assert again.status is BranchStatus.READY and again.parent is None
    assert len(db.backups()) >= 1


def test_writes_do_not_cross_between_branch_and_parent(db: LocalDatabaseProvider) -> None:
    prod = uri(db, "production")
    execute(prod, "CREATE TABLE iso (v text)")
    execute(prod, "INSERT INTO iso VALUES ('before')")
    branch = run(db, db.create_branch("iso-1"))
    assert branch.parent == "production" and branch.status is BranchStatus.READY
    child = uri(db, "iso-1")
    assert child != prod
    execute(child, "INSERT INTO iso VALUES ('on branch')")
    execute(prod, "INSERT INTO iso VALUES ('on parent later')")
    assert execute(child, "SELECT v FROM iso ORDER BY v") == [("before",), ("on branch",)]
    assert execute(prod, "SELECT v FROM iso ORDER BY v") == [("before",), ("on parent later",)]


def test_branch_of_a_busy_parent_holds_a_consistent_prefix(db: LocalDatabaseProvider) -> None:
    prod = uri(db, "production")
    execute(
        prod,
        "CREATE TABLE stream (id int PRIMARY KEY, payload text NOT NULL, sum text NOT NULL)",
    )
    stop = threading.Event()
    committed: list[int] = []

    def writer() -> None:
        with psycopg.connect(prod, autocommit=True) as conn:
            n = 0
            while not stop.is_set():
                n += 1
                payload = f"row-{n}-" + "x" * (n % 500)
                conn.execute("INSERT INTO stream VALUES (%s, %s, md5(%s))", (n, payload, payload))
                committed.append(n)

    holder = psycopg.connect(prod)
    holder.execute("INSERT INTO stream VALUES (-1, 'uncommitted', md5('uncommitted'))")
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while len(committed) < 200:
            time.sleep(0.01)
        run(db, db.create_branch("busy-1"))
    finally:
        stop.set()
        thread.join()
        holder.rollback()
        holder.close()
    rows = execute(
        uri(db, "busy-1"), "SELECT id, payload = payload, md5(payload) = sum FROM stream"
    )
    ids = sorted(int(r[0]) for r in rows)  # type: ignore[call-overload]
    assert -1 not in ids, "an uncommitted row reached the branch"
    assert ids == list(range(1, len(ids) + 1)), "the branch is not a prefix of the commits"
    assert len(ids) >= 200
    assert all(r[2] for r in rows), "a torn row reached the branch"


def test_five_concurrent_branches_are_independent(db: LocalDatabaseProvider) -> None:
    execute(uri(db, "production"), "CREATE TABLE conc (v int)")
    names = [f"conc-{i}" for i in range(5)]

    async def create_all() -> list[object]:
        return list(await asyncio.gather(*(db.create_branch(n) for n in names)))

    branches = run(db, create_all())
    ports = {b.port for b in branches}  # type: ignore[attr-defined]
    assert len(ports) == 5
    for i, name in enumerate(names):
        execute(uri(db, name), "INSERT INTO conc VALUES (%s)", (i,))
    for i, name in enumerate(names):
        assert execute(uri(db, name), "SELECT v FROM conc") == [(i,)]
    assert execute(uri(db, "production"), "SELECT v FROM conc") == []


def test_create_and_delete_are_idempotent(db: LocalDatabaseProvider) -> None:
    first = run(db, db.create_branch("idem-1"))
    again = run(db, db.create_branch("idem-1"))
    assert (again.port, again.created_at) == (first.port, first.created_at)
    assert run(db, db.delete_branch("idem-1")) is True
    assert run(db, db.delete_branch("idem-1")) is False
    assert run(db, db.get_branch("idem-1")) is None
    assert not db.cluster("idem-1").home.exists()


def test_reset_discards_the_branch_changes_and_keeps_the_uri(db: LocalDatabaseProvider) -> None:
    prod = uri(db, "production")
    execute(prod, "CREATE TABLE resettable (v text)")
    run(db, db.create_branch("reset-1"))
    before = uri(db, "reset-1")
    execute(before, "INSERT INTO resettable VALUES ('branch change')")
    execute(prod, "INSERT INTO resettable VALUES ('parent change')")
    run(db, db.reset_branch("reset-1"))
    after = uri(db, "reset-1")
    assert after == before
    assert execute(after, "SELECT v FROM resettable") == [("parent change",)]


def test_delete_refuses_the_root_without_force(db: LocalDatabaseProvider) -> None:
    with pytest.raises(UsageError, match="root branch"):
        run(db, db.delete_branch("production"))


@pytest.mark.parametrize(
    "name",
    ["pr-1'; DROP TABLE x;--", "$(touch /tmp/pwned)", "ünïcödé", "a" * 300, "", "../escape"],
)
def test_hostile_names_are_refused_with_a_hint(db: LocalDatabaseProvider, name: str) -> None:
    before = sorted(p.name for p in (db.state_dir / "branches").iterdir())
    with pytest.raises(UsageError) as info:
        run(db, db.create_branch(name))
    assert info.value.hint
    assert sorted(p.name for p in (db.state_dir / "branches").iterdir()) == before


def test_missing_parent_is_explained(db: LocalDatabaseProvider) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        run(db, db.create_branch("orphan-1", parent="no-such-branch"))
    assert run(db, db.get_branch("orphan-1")) is None


def test_point_in_time_restore_brings_dropped_rows_back(fresh_db: LocalDatabaseProvider) -> None:
    db = fresh_db
    prod = uri(db, "production")
    execute(prod, "CREATE TABLE precious (v int)")
    execute(prod, "INSERT INTO precious SELECT generate_series(1, 100)")
    time.sleep(0.2)
    (noted,) = execute(prod, "SELECT now()")[0]
    time.sleep(0.2)
    execute(prod, "DROP TABLE precious")
    assert isinstance(noted, datetime)
    restored = run(db, db.restore("emergency-restore-1", noted))
    assert restored.parent == "production"
    assert restored.detail["restored_to"] == noted.isoformat()
    rows = execute(uri(db, "emergency-restore-1"), "SELECT count(*), sum(v) FROM precious")
    assert rows == [(100, 5050)]
    with pytest.raises(psycopg.errors.UndefinedTable):
        execute(prod, "SELECT * FROM precious")
    # The restored branch is an ordinary writable branch.
    execute(uri(db, "emergency-restore-1"), "INSERT INTO precious VALUES (101)")


def test_restore_before_the_first_backup_says_the_earliest_point(
    db: LocalDatabaseProvider,
) -> None:
    with pytest.raises(UsageError) as info:
        run(db, db.restore("too-early", datetime.now(UTC) - timedelta(days=3)))
    assert "earliest" in info.value.hint


def test_gc_removes_expired_interrupted_and_stray_things(fresh_db: LocalDatabaseProvider) -> None:
    db = fresh_db
    past = datetime.now(UTC) - timedelta(minutes=1)
    run(db, db.create_branch("expired-1", expires=past))
    run(db, db.create_branch("kept-1", expires=datetime.now(UTC) + timedelta(hours=1)))

    # A create that crashed half-way: intent recorded, a half-made cluster directory.
    async def crashed_create() -> None:
        async with db.store.connect() as conn:
            await resources.record(conn, db.project, "database_branch", "crashed-1", "creating")
            await branch_rows.upsert(
                conn,
                db.project,
                "crashed-1",
                parent="production",
                provider="local",
                status="creating",
            )

    asyncio.run(crashed_create())
    (db.cluster("crashed-1").home / "data").mkdir(parents=True)
    # A cluster the store does not know, running.
    stray = db.cluster("stray-1")
    stray.init(durable=False)
    stray.start()
    # A row whose cluster vanished.
    run(db, db.create_branch("vanished-1"))
    db.cluster("vanished-1").destroy()

    report = run(db, db.gc())
    assert report.expired_deleted == ["expired-1"]
    assert report.interrupted_cleaned == ["crashed-1 (creating)"]
    assert report.orphan_clusters_removed == ["stray-1"]
    assert report.stale_rows_removed == ["vanished-1"]
    names = {b.name for b in run(db, db.list_branches())}
    assert names == {"production", "kept-1"}
    assert not stray.home.exists() and stray.postmaster_pid() is None
    assert not db.cluster("crashed-1").home.exists()
    again = run(db, db.gc())
    assert again.as_dict()["expired_deleted"] == [] and not again.interrupted_cleaned


def test_a_ready_spare_becomes_the_next_branch_and_is_not_refilled_behind_it(
    fresh_db: LocalDatabaseProvider,
) -> None:
    db = fresh_db
    assert db.spare is None  # db init does not wait for one
    assert run(db, db.ensure_spare()) is True  # what serve's loop, or db gc, does
    spare = db.spare
    assert spare is not None and spare.state().value == "running"
    prod = uri(db, "production")
    execute(prod, "CREATE TABLE latest (v int)")
    execute(prod, "INSERT INTO latest VALUES (1)")  # just before the branch is asked for

    run(db, db.create_branch("from-spare"))
    assert run(db, db.get_branch("from-spare")).detail["made_by"] == "spare"  # type: ignore[union-attr]
    home = db.cluster("from-spare").home
    assert home.is_symlink() and home.resolve() == spare.home.resolve()
    # The command returned when its branch was ready: no copy of production was
    # started behind it (serve refills between runs: operations.runtime.keep_spare).
    assert db.spare is None and not list(db.spares_dir.glob("*.tmp"))
    assert sorted(p.name for p in db.spares_dir.iterdir()) == [spare.home.name]
    branch = uri(db, "from-spare")
    assert execute(branch, "SELECT v FROM latest") == [(1,)]
    assert execute(branch, "SELECT pg_is_in_recovery()") == [(False,)]
    execute(branch, "INSERT INTO latest VALUES (2)")  # writable, and independent
    assert execute(prod, "SELECT v FROM latest") == [(1,)]
    assert "primary_conninfo" not in db.cluster("from-spare").meta().settings
    # The next branch without a spare is a copy; the spare comes back when asked.
    assert run(db, db.create_branch("copied")).detail["made_by"] == "copy"
    assert run(db, db.ensure_spare()) is True and db.spare is not None
    # Deleting the branch removes the spare directory it was made from.
    run(db, db.delete_branch("from-spare"))
    assert not home.exists() and not spare.home.exists()


def test_a_branch_stays_locked_when_the_state_database_drops_the_lock(
    db: LocalDatabaseProvider,
) -> None:
    """Postgres lets an advisory lock go with its session (the state database killed,
    a connection cut) while the disk work under it goes on: another create, delete or
    gc of the branch must still wait, or it removes a cluster that is starting."""

    async def scenario() -> tuple[bool, bool]:
        async with db._locked("pr-held") as conn:
            cur = await conn.execute("SELECT pg_backend_pid()")
            row = await cur.fetchone()
            assert row is not None
            async with db.store.connect() as other:
                await other.execute("SELECT pg_terminate_backend(%s)", (row[0],))
            async with db._try_locked("pr-held") as taken:
                busy_meanwhile = taken is None
        async with db._try_locked("pr-held") as taken:
            free_afterwards = taken is not None
        return busy_meanwhile, free_afterwards

    busy_meanwhile, free_afterwards = run(db, scenario())
    assert busy_meanwhile, "the branch was free to take while its holder still worked"
    assert free_afterwards, "the branch stayed locked after its holder was done"


def test_serve_refills_the_spare_only_while_no_run_works(shared_store: Store) -> None:
    """keep_spare (serve's loop): a run under way (its migration) is never slowed by
    a copy of production; once none is, the spare is made."""
    from types import SimpleNamespace

    from branchline.operations.runtime import keep_spare
    from branchline.store import runs as run_rows

    asked: list[float] = []

    class Database:
        async def ensure_spare(self) -> bool:
            asked.append(time.monotonic())
            return True

        async def gc(self, *, keep_spare: bool = True) -> object:
            raise AssertionError("keep_spare never collects garbage")

    project = f"spare-{os.urandom(4).hex()}"
    kit = SimpleNamespace(database=Database(), store=shared_store, project=project)

    async def scenario() -> None:
        async with shared_store.connect() as conn:
            run_id = await run_rows.insert_run(
                conn, project=project, workflow="ci", definition={}, jobs=[],
                triggered_by="test", ref=None, sha=None, base_sha=None, pr=None, repo=None,
                concurrency_group=None, cancel_in_progress=False, secret_scope=None,
            )  # fmt: skip
        loop = asyncio.create_task(keep_spare(kit, every=0.05))  # type: ignore[arg-type]
        try:
            await asyncio.sleep(0.5)
            assert asked == [], "refilled while a run worked"
            async with shared_store.connect() as conn:
                await run_rows.set_run(conn, run_id, status="success")
            deadline = time.monotonic() + 5
            while not asked and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert asked, "no refill once the run was over"
        finally:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop

    asyncio.run(scenario())
