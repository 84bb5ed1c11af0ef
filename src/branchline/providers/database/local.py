"""Local database branches: one Postgres cluster per branch on this machine.

Layout under the state directory:

    branches/<name>/        a cluster home (data/, cluster.json, postgres.log)
    wal-archive/<root>/     the root branch's archived WAL (for point-in-time restore)
    backups/<root>/<ts>/    base backups of the root branch (data/, backup.json)

The root branch (`production`) is created by `init_root` with WAL archiving
on; every other branch is an online `pg_basebackup` copy of its parent,
started on a free loopback port. Before anything is created or deleted the
intent is written to the store, so `gc` can finish or undo what a crash left.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from branchline import naming
from branchline.errors import BranchlineError, PostgresError, UsageError
from branchline.postgres import Cluster, ClusterState, PgBinaries, roles
from branchline.postgres.cluster import FAST_SETTINGS
from branchline.postgres.copy import (
    BaseBackup,
    archive_settings,
    clone,
    directory_size,
    make_standby,
    promote_standby,
    restore_to_time,
    standby_is_streaming,
    take_base_backup,
)
from branchline.providers.database import Branch, BranchStatus, GcReport
from branchline.store import Store, locks, resources
from branchline.store import branches as branch_rows
from branchline.store.queries import Conn

PROVIDER = "local"
RESOURCE_KIND = "database_branch"
SPARE_LOCK = "spare"  # not a valid branch name, so no branch lock can clash with it

# A dozen idle branches must fit on a small machine: small buffers, few
# connections, but enough WAL senders for several concurrent copies of one parent.
LIGHT_SETTINGS = {
    "shared_buffers": "16MB",
    "max_connections": "40",
    "max_wal_senders": "16",
    "max_replication_slots": "16",
    # Concurrent copies each force a checkpoint; without kept WAL one copy's
    # checkpoint can recycle a segment another copy is still streaming.
    "wal_keep_size": "128MB",
    "wal_level": "replica",
    "autovacuum_max_workers": "2",
    "log_line_prefix": "%m [%p] ",
}
# Branches are disposable copies: trade crash safety for speed.
EPHEMERAL_SETTINGS = FAST_SETTINGS
# A branch is usually migrated right after it is made: refilling the spare at that
# moment takes half of a 2-core machine from the migration, so the refill waits.
SPARE_REFILL_DELAY = 2.0


class LocalDatabaseProvider:
    """Branches of one project's database as local Postgres clusters."""

    name = PROVIDER

    def __init__(
        self,
        *,
        project: str,
        state_dir: Path,
        store: Store,
        root: str = naming.PRODUCTION_BRANCH,
        database: str = "app",
        binaries: PgBinaries | None = None,
    ) -> None:
        self.project = project
        self.binaries = binaries
        self._background: list[asyncio.Task[object]] = []
        self._closing = False  # set by aclose: a waiting refill starts now
        self.state_dir = state_dir
        self.store = store
        self.root = root
        self.database = database

    # -- layout -----------------------------------------------------------

    def cluster(self, name: str) -> Cluster:
        return Cluster(self.state_dir / "branches" / name, binaries=self.binaries)

    @property
    def spares_dir(self) -> Path:
        return self.state_dir / "spares"

    @property
    def _spare_pointer(self) -> Path:
        return self.spares_dir / f"{self.root}.next"

    @property
    def spare(self) -> Cluster | None:
        """The standby of the root kept streaming, promoted when a branch is asked for.
        Each spare has a directory of its own: a promoted one keeps running where it
        is (Postgres holds absolute paths) and the branch's home links to it."""
        try:
            name = self._spare_pointer.read_text().strip()
        except OSError:
            return None
        return Cluster(self.spares_dir / name, binaries=self.binaries)

    @property
    def archive_dir(self) -> Path:
        return self.state_dir / "wal-archive" / self.root

    @property
    def backups_dir(self) -> Path:
        return self.state_dir / "backups" / self.root

    # -- the interface ----------------------------------------------------

    async def init_root(self) -> Branch:
        """Create the root branch (production) with WAL archiving. Idempotent."""
        name = self.root
        async with self._locked(name) as conn:
            row = await branch_rows.get(conn, self.project, name)
            if row is not None and row.status == BranchStatus.READY.value:
                await asyncio.to_thread(self.cluster(name).start)
                branch = await self._branch(conn, name)
            else:
                await self._intend(conn, name, parent=None, expires=None)
                try:
                    await asyncio.to_thread(self._create_root_cluster)
                except BaseException:
                    await self._undo_create(conn, name)
                    raise
                branch = await self._mark_ready(conn, name, detail={"root": True})
        await self.ensure_spare()
        return branch

    def _create_root_cluster(self) -> None:
        cluster = self.cluster(self.root)
        if cluster.home.exists():
            cluster.destroy()  # the remains of a crash during an earlier init
        # A WAL archive or base backups of an earlier production would clash with the
        # new cluster's segment names and offer restores of a database that is gone.
        shutil.rmtree(self.archive_dir, ignore_errors=True)
        shutil.rmtree(self.backups_dir, ignore_errors=True)
        self.archive_dir.mkdir(parents=True, exist_ok=True)
        cluster.run_as.own(self.archive_dir)
        cluster.init(
            durable=True, settings={**LIGHT_SETTINGS, **archive_settings(self.archive_dir)}
        )
        cluster.start()
        with psycopg.connect(cluster.uri(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))
        roles.ensure_app_role(cluster, self.database)
        self._take_backup_sync()

    async def create_branch(
        self,
        name: str,
        parent: str | None = None,
        *,
        at: datetime | None = None,
        expires: datetime | None = None,
    ) -> Branch:
        name = naming.validate_branch_id(name)
        parent = naming.validate_branch_id(parent or self.root)
        if name == parent:
            raise UsageError(f"branch {name!r} cannot be its own parent")
        if at is not None and parent != self.root:
            raise UsageError(
                f"point-in-time copies come only from {self.root!r}, which archives its WAL",
                hint=f"Drop --parent, or use --parent {self.root}.",
            )
        async with self._locked(name) as conn:
            row = await branch_rows.get(conn, self.project, name)
            if row is not None and row.status == BranchStatus.READY.value:
                if at is not None and row.detail.get("restored_to") != at.isoformat():
                    raise UsageError(
                        f"branch {name!r} already exists; it is not a restore to {at.isoformat()}",
                        hint="Choose another --name for the restored branch.",
                    )
                await asyncio.to_thread(self.cluster(name).start)
                return await self._branch(conn, name)  # idempotent: it is already there
            source = await branch_rows.get(conn, self.project, parent)
            if source is None or source.status != BranchStatus.READY.value:
                raise UsageError(
                    f"parent branch {parent!r} does not exist",
                    hint="Run `branchline db init` to create production, or name an existing "
                    "parent (`branchline db branches list`).",
                )
            await self._intend(conn, name, parent=parent, expires=expires)
            try:
                if at is not None:
                    await self._restore(name, at)
                elif not (parent == self.root and await self._adopt_spare(name)):
                    await asyncio.to_thread(self._clone_sync, parent, name)
                # Passwords of its own: its parent's open nothing here, and its own
                # open nothing else (not the parent, not another branch).
                await asyncio.to_thread(self._own_credentials, name)
            except BaseException:
                await self._undo_create(conn, name)
                raise
            detail = {"restored_to": at.isoformat()} if at else {}
            return await self._mark_ready(conn, name, detail=detail)

    def _clone_sync(self, parent: str, name: str, port: int | None = None) -> None:
        source = self.cluster(parent)
        source.start()
        target = self.cluster(name)
        clone(source, target, settings=self._branch_settings(), port=port)
        target.start()

    def _branch_settings(self) -> dict[str, str]:
        return {**LIGHT_SETTINGS, **EPHEMERAL_SETTINGS}

    async def restore(self, name: str, at: datetime) -> Branch:
        return await self.create_branch(name, self.root, at=at)

    async def _restore(self, name: str, at: datetime) -> None:
        now = datetime.now(UTC)
        if at > now:
            raise UsageError(
                f"{at.isoformat()} is in the future", hint="Restore to a moment in the past."
            )
        root = self.cluster(self.root)
        if root.state() is ClusterState.RUNNING:
            await asyncio.to_thread(_flush_wal_past, root)
        backup = self._backup_before(at)
        meta = root.meta()
        await asyncio.to_thread(
            restore_to_time,
            backup,
            self.cluster(name),
            archive_dir=self.archive_dir,
            target=at,
            settings=self._branch_settings(),
            superuser=meta.superuser,
            password=meta.password,
            app_user=meta.app_user,
        )

    def _own_credentials(self, name: str, *, app_password: str | None = None) -> None:
        cluster = self.cluster(name)
        roles.ensure_app_role(cluster, self.database)  # a copy of a cluster made before roles
        roles.replace_passwords(cluster, app_password=app_password)

    async def delete_branch(self, name: str, *, force: bool = False) -> bool:
        name = naming.validate_branch_id(name)
        if name == self.root and not force:
            raise UsageError(
                f"refusing to delete the root branch {name!r}: every other branch is copied "
                "from it and its WAL archive makes restores possible",
                hint="If you really mean it, pass --force.",
            )
        async with self._locked(name) as conn:
            return await self._delete_locked(conn, name)

    async def _delete_locked(self, conn: Conn, name: str) -> bool:
        row = await branch_rows.get(conn, self.project, name)
        cluster = self.cluster(name)
        if row is None and not cluster.home.exists():
            return False
        await resources.record(conn, self.project, RESOURCE_KIND, name, "deleting")
        if row is not None:
            await branch_rows.update(conn, self.project, name, status=BranchStatus.DELETING.value)
        await asyncio.to_thread(cluster.destroy)
        if name == self.root:
            await asyncio.to_thread(self.drop_spare)
        await branch_rows.delete(conn, self.project, name)
        await resources.record(conn, self.project, RESOURCE_KIND, name, "deleted")
        return True

    async def reset_branch(self, name: str) -> Branch:
        name = naming.validate_branch_id(name)
        async with self._locked(name) as conn:
            row = await branch_rows.get(conn, self.project, name)
            if row is None or row.status != BranchStatus.READY.value:
                raise UsageError(
                    f"branch {name!r} does not exist",
                    hint="See `branchline db branches list`.",
                )
            if row.parent is None:
                raise UsageError(f"branch {name!r} has no parent to reset to")
            await asyncio.to_thread(self._reset_sync, row.parent, name)
            return await self._mark_ready(conn, name, detail={"reset_at": _now_iso()})

    def _reset_sync(self, parent: str, name: str) -> None:
        cluster = self.cluster(name)
        before = cluster.meta()
        port = before.port  # same port and application password: the same URI afterwards
        cluster.stop()
        aside = cluster.home / "data.before-reset"
        if aside.exists():
            shutil.rmtree(aside)
        cluster.data_dir.rename(aside)
        try:
            self._clone_sync(parent, name, port=port)
            self._own_credentials(name, app_password=before.app_password)
        except BaseException:
            # Put the old data back so a failed reset loses nothing.
            with contextlib.suppress(BranchlineError):
                cluster.stop()
            if cluster.data_dir.exists():
                shutil.rmtree(cluster.data_dir)
            aside.rename(cluster.data_dir)
            cluster.write_meta(before)
            with contextlib.suppress(BranchlineError):
                cluster.start()
            raise
        shutil.rmtree(aside, ignore_errors=True)

    async def get_branch(self, name: str) -> Branch | None:
        async with self.store.connect() as conn:
            if await branch_rows.get(conn, self.project, name) is None:
                return None
            return await self._branch(conn, name)

    async def list_branches(self) -> list[Branch]:
        async with self.store.connect() as conn:
            rows = await branch_rows.list_all(conn, self.project)
            return [_to_branch(row, self._compute_state(row.name)) for row in rows]

    async def connection_uri(self, name: str) -> str:
        branch = await self.get_branch(name)
        if branch is None or branch.status is not BranchStatus.READY:
            raise UsageError(
                f"branch {name!r} does not exist", hint="See `branchline db branches list`."
            )
        cluster = self.cluster(name)
        # Like a Neon compute, a stopped branch starts when someone asks for it.
        await asyncio.to_thread(cluster.start)
        if cluster.meta().app_user is None:  # a cluster made before roles existed
            await asyncio.to_thread(roles.ensure_app_role, cluster, self.database)
        # The application role: never the superuser, whose password stays here.
        return cluster.app_uri(self.database)

    async def allow_createdb(self, name: str) -> None:
        await self.connection_uri(name)  # ready, running, with its application role
        await asyncio.to_thread(roles.allow_createdb, self.cluster(name))

    async def schema_dump(self, name: str) -> str:
        from branchline.schemadiff import dump_schema

        uri = await self.connection_uri(name)
        return await asyncio.to_thread(
            dump_schema, uri, self.cluster(name).binaries.path("pg_dump")
        )

    async def annotate(self, name: str, detail: Mapping[str, Any]) -> None:
        async with self.store.connect() as conn:
            await branch_rows.update(conn, self.project, name, detail=dict(detail))

    async def server_log(self, name: str, size: int = 65536) -> str:
        """The end of the branch's Postgres log (errors and the statements behind them)."""
        path = self.cluster(name).log_file
        try:
            with path.open("rb") as fh:
                fh.seek(0, 2)
                fh.seek(max(0, fh.tell() - size))
                return fh.read().decode(errors="replace")
        except OSError:
            return ""

    # -- the spare ------------------------------------------------------------

    async def ensure_spare(self) -> bool:
        """Make sure a streaming standby of the root is ready; True if one was (re)built.
        Copying a cluster costs about a millisecond per file on slow disks (over a
        second for an empty cluster); promoting a ready standby takes ~0.1 s."""
        if self.cluster(self.root).state() is ClusterState.MISSING:
            return False
        async with self._try_locked(SPARE_LOCK) as conn:
            if conn is None:
                return False  # another process is building or adopting it
            spare = self.spare
            if (
                spare is not None
                and spare.state() is ClusterState.RUNNING
                and await asyncio.to_thread(standby_is_streaming, spare)
            ):
                await asyncio.to_thread(self._remove_unused_spares)
                return False
            await asyncio.to_thread(self._rebuild_spare)
            return True

    def _rebuild_spare(self) -> None:
        self.drop_spare()
        root = self.cluster(self.root)
        root.start()
        fresh = Cluster(
            self.spares_dir / f"{self.root}-{os.urandom(4).hex()}", binaries=self.binaries
        )
        make_standby(root, fresh, settings=self._branch_settings())
        tmp = self._spare_pointer.with_suffix(".tmp")
        tmp.write_text(fresh.home.name)
        tmp.replace(self._spare_pointer)  # a crash leaves the old pointer or the new one

    def drop_spare(self) -> None:
        """Remove the ready spare (the next create copies, and ensure_spare rebuilds)."""
        spare = self.spare
        self._spare_pointer.unlink(missing_ok=True)
        if spare is not None:
            spare.destroy()
        self._remove_unused_spares()

    def _remove_unused_spares(self) -> None:
        """Spare directories neither pointed at nor adopted by a branch: crash leftovers."""
        current = self.spare
        used = {current.home.name} if current is not None else set()
        for link in (self.state_dir / "branches").glob("*"):
            if link.is_symlink():
                used.add(link.resolve().name)
        for path in self.spares_dir.glob(f"{self.root}-*"):
            if path.is_dir() and path.name not in used:
                Cluster(path, binaries=self.binaries).destroy()

    async def _adopt_spare(self, name: str) -> bool:
        """Promote the spare and link it into place as branch `name`; False (and the
        caller copies instead) when no spare is ready or another create holds it."""
        async with self._try_locked(SPARE_LOCK) as conn:
            if conn is None:
                return False
            adopted = await asyncio.to_thread(self._adopt_spare_sync, name)
        if adopted:
            self._background.append(asyncio.create_task(self._refill_spare_soon()))
        return adopted

    async def _refill_spare_soon(self) -> bool:
        deadline = time.monotonic() + SPARE_REFILL_DELAY
        while not self._closing and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return await self.ensure_spare()

    def _adopt_spare_sync(self, name: str) -> bool:
        spare = self.spare
        if spare is None or spare.state() is not ClusterState.RUNNING:
            return False
        if not standby_is_streaming(spare):
            return False
        target = self.cluster(name)
        target.destroy()  # remains of an interrupted attempt, if any
        self._spare_pointer.unlink()  # from here on it belongs to the branch
        try:
            promote_standby(self.cluster(self.root), spare, settings=self._branch_settings())
        except (BranchlineError, psycopg.Error, AssertionError):
            spare.destroy()  # the caller copies instead
            return False
        target.home.parent.mkdir(parents=True, exist_ok=True)
        target.home.symlink_to(spare.home)
        return True

    async def aclose(self) -> None:
        """Wait for background work (refilling the spare) before the process ends."""
        pending, self._background = self._background, []
        self._closing = True
        for task in pending:
            # A failed refill only means the next create copies; gc retries it.
            with contextlib.suppress(BranchlineError, OSError, psycopg.Error):
                await task

    # -- backups ----------------------------------------------------------

    def backups(self) -> list[BaseBackup]:
        """The root branch's base backups, oldest first."""
        if not self.backups_dir.exists():
            return []
        found = []
        for path in self.backups_dir.iterdir():
            if (path / "backup.json").exists():
                found.append(BaseBackup.load(path))
        return sorted(found, key=lambda b: b.end_time)

    async def take_backup(self) -> BaseBackup:
        return await asyncio.to_thread(self._take_backup_sync)

    def _take_backup_sync(self) -> BaseBackup:
        cluster = self.cluster(self.root)
        cluster.start()
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        self.backups_dir.mkdir(parents=True, exist_ok=True)
        return take_base_backup(cluster, self.backups_dir / stamp)

    def _backup_before(self, at: datetime) -> BaseBackup:
        usable = [b for b in self.backups() if b.end_time <= at]
        if not usable:
            known = self.backups()
            earliest = known[0].end_time.isoformat() if known else None
            raise UsageError(
                f"no base backup of {self.root!r} is older than {at.isoformat()}",
                hint=f"The earliest moment you can restore to is {earliest}."
                if earliest
                else "Run `branchline db init` first.",
            )
        return usable[-1]

    # -- garbage collection --------------------------------------------------

    async def gc(
        self,
        *,
        now: datetime | None = None,
        backup_interval: timedelta = timedelta(hours=24),
        backup_retention: timedelta = timedelta(days=7),
    ) -> GcReport:
        """Delete expired branches, finish or undo what a crash interrupted, remove
        clusters the store does not know and rows whose cluster is gone, and keep
        the root's base backups fresh and pruned."""
        now = now or datetime.now(UTC)
        report = GcReport()
        async with self.store.connect() as conn:
            rows = await branch_rows.list_all(conn, self.project)
            interrupted = await resources.unfinished(conn, self.project, RESOURCE_KIND)
        expired = [
            row.name
            for row in rows
            if row.expires_at is not None and row.expires_at <= now and row.name != self.root
        ]
        for name in expired:
            if await self.delete_branch(name):
                report.expired_deleted.append(name)
        for resource in interrupted:
            async with self._try_locked(resource.name) as conn:
                if conn is None:
                    continue  # someone is working on it right now
                current = await resources.get(conn, self.project, RESOURCE_KIND, resource.name)
                if current is None or current.state not in ("creating", "deleting"):
                    continue
                await self._delete_locked(conn, resource.name)
                await resources.record(
                    conn,
                    self.project,
                    RESOURCE_KIND,
                    resource.name,
                    "failed" if current.state == "creating" else "deleted",
                )
                report.interrupted_cleaned.append(f"{resource.name} ({current.state})")
        await self._remove_strays(report)
        await self._maintain_backups(report, now, backup_interval, backup_retention)
        report.spare_rebuilt = await self.ensure_spare()
        return report

    async def _remove_strays(self, report: GcReport) -> None:
        async with self.store.connect() as conn:
            known = {row.name: row for row in await branch_rows.list_all(conn, self.project)}
        on_disk = {p.name for p in (self.state_dir / "branches").glob("*") if p.is_dir()}
        for name in sorted(on_disk - set(known)):
            async with self._try_locked(name) as conn:
                if conn is None or await branch_rows.get(conn, self.project, name) is not None:
                    continue
                await asyncio.to_thread(self.cluster(name).destroy)
                report.orphan_clusters_removed.append(name)
        for name, row in sorted(known.items()):
            if name in on_disk or row.status != BranchStatus.READY.value:
                continue
            async with self._try_locked(name) as conn:
                if conn is None:
                    continue
                await branch_rows.delete(conn, self.project, name)
                await resources.record(conn, self.project, RESOURCE_KIND, name, "deleted")
                report.stale_rows_removed.append(name)

    async def _maintain_backups(
        self, report: GcReport, now: datetime, interval: timedelta, retention: timedelta
    ) -> None:
        if self.cluster(self.root).state() is ClusterState.MISSING:
            return
        backups = self.backups()
        if not backups or backups[-1].end_time <= now - interval:
            backups.append(await self.take_backup())
            report.backup_taken = True
        # Keep every backup younger than the retention, and always the newest.
        keep_from = next(
            (i for i, b in enumerate(backups) if b.end_time > now - retention), len(backups) - 1
        )
        for old in backups[:keep_from]:
            await asyncio.to_thread(shutil.rmtree, old.path, True)
            report.backups_pruned.append(old.path.name)
        oldest = backups[keep_from]
        root = self.cluster(self.root)
        # WAL older than the oldest kept backup can never be replayed again.
        await asyncio.to_thread(
            root.run_tool,
            [root.binaries.path("pg_archivecleanup"), str(self.archive_dir), oldest.start_wal_file],
            what="pg_archivecleanup",
        )

    # -- internals ----------------------------------------------------------

    def _locked(self, name: str) -> contextlib.AbstractAsyncContextManager[Conn]:
        """The branch's lock: one create/delete/reset of a name at a time."""
        return locks.held(self.store, f"branchline:branch:{self.project}:{name}")

    def _try_locked(self, name: str) -> contextlib.AbstractAsyncContextManager[Conn | None]:
        """The branch's lock if free: how gc tells work a crash interrupted from work
        still going on."""
        return locks.if_free(self.store, f"branchline:branch:{self.project}:{name}")

    async def _intend(
        self, conn: Conn, name: str, *, parent: str | None, expires: datetime | None
    ) -> None:
        await resources.record(
            conn, self.project, RESOURCE_KIND, name, "creating", detail={"parent": parent}
        )
        await branch_rows.upsert(
            conn,
            self.project,
            name,
            parent=parent,
            provider=PROVIDER,
            status=BranchStatus.CREATING.value,
            expires_at=expires,
        )

    async def _undo_create(self, conn: Conn, name: str) -> None:
        """A failed create leaves nothing behind: no cluster, no row."""
        with contextlib.suppress(BranchlineError, OSError):
            await asyncio.to_thread(self.cluster(name).destroy)
        await branch_rows.delete(conn, self.project, name)
        await resources.record(conn, self.project, RESOURCE_KIND, name, "failed")

    async def _mark_ready(self, conn: Conn, name: str, *, detail: dict[str, Any]) -> Branch:
        cluster = self.cluster(name)
        size = await asyncio.to_thread(directory_size, cluster.data_dir)
        await branch_rows.update(
            conn,
            self.project,
            name,
            status=BranchStatus.READY.value,
            port=cluster.meta().port,
            size_bytes=size,
            detail={"database": self.database, "host": "127.0.0.1", **detail},
        )
        await resources.record(conn, self.project, RESOURCE_KIND, name, "ready")
        return await self._branch(conn, name)

    async def _branch(self, conn: Conn, name: str) -> Branch:
        row = await branch_rows.get(conn, self.project, name)
        if row is None:
            raise PostgresError(f"branch {name!r} vanished from the store")
        return _to_branch(row, self._compute_state(name))

    def _compute_state(self, name: str) -> str:
        return self.cluster(name).state().value


def _to_branch(row: branch_rows.BranchRow, compute: str) -> Branch:
    return Branch(
        name=row.name,
        parent=row.parent,
        status=BranchStatus(row.status),
        created_at=row.created_at,
        expires_at=row.expires_at,
        size_bytes=row.size_bytes,
        port=row.port,
        compute=compute,
        detail=row.detail,
    )


def _flush_wal_past(root: Cluster, timeout: float = 30.0) -> None:
    """Make the archive hold a commit after now: recovery to a moment stops at the
    first commit after it, and fails if the archive ends before one."""
    with psycopg.connect(root.uri(), autocommit=True) as conn:
        conn.execute("SELECT pg_current_xact_id()")  # a transaction with an xid commits
        row = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()
        assert row is not None
        segment = str(row[0])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = conn.execute(
                "SELECT last_archived_wal >= %s FROM pg_stat_archiver", (segment,)
            ).fetchone()
            if done is not None and done[0]:
                return
            time.sleep(0.05)
    raise PostgresError(
        f"WAL segment {segment} was not archived within {timeout:.0f} s",
        hint=f"See {root.log_file} for archive_command errors.",
    )


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()
