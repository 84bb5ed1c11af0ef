"""Local database branches: one Postgres cluster per branch on this machine.

Layout under the state directory:

    branches/<name>/        a cluster home (data/, cluster.json, postgres.log)
    wal-archive/<root>/     the root branch's archived WAL (for point-in-time restore)
    backups/<root>/<ts>/    base backups of the root branch (data/, backup.json)
    trash/                  what is being removed (set aside first; gc empties it)

The root branch (`production`) is created by `init_root` with WAL archiving
on; every other branch is an online copy of its parent, started on a free
loopback port: copy-on-write clones of its files where the filesystem can
clone (`branching_method`: the same fraction of a second at any size), an
online `pg_basebackup` elsewhere (helped by a spare standby, kept by `serve`).
Before anything is created or deleted the intent is written to the store, so
`gc` can finish or undo what a crash left.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql

from branchline import branchdata, naming
from branchline.branchdata import DataPlan, ShapeReport
from branchline.config.sizes import SizeSpec, human_bytes
from branchline.errors import BranchlineError, PostgresError, UsageError
from branchline.locking import finish_in_thread
from branchline.postgres import (
    Cluster,
    ClusterState,
    PgBinaries,
    archiver,
    extents,
    reflink,
    roles,
    space,
)
from branchline.postgres.cluster import FAST_SETTINGS
from branchline.postgres.copy import (
    BaseBackup,
    archive_settings,
    clone,
    clone_online,
    make_standby,
    promote_standby,
    restore_to_time,
    standby_is_streaming,
    take_base_backup,
)
from branchline.providers.database import Branch, BranchStatus, GcReport, local_retention, pool
from branchline.providers.database.local_disk import (
    Disk,
    log_once,
    raise_if_disk_full,
    short_of_room,
)
from branchline.providers.database.recorded import (
    branch_from_row,
    checked_names,
    refuse_other_moment,
    require_parent,
)
from branchline.store import Store, locks, resources
from branchline.store import branches as branch_rows
from branchline.store.queries import Conn

PROVIDER = "local"
RESOURCE_KIND = "database_branch"
# Not valid branch names (a '-' never doubles), so no branch's lock clashes with them.
SPARE_LOCK = "spare--"
HISTORY_LOCK = "history--"  # held by a restore while it reads backups and WAL gc may prune

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
# An idle branch is a handful of processes; the logical replication launcher is one
# a branch never uses (about 1.5 MB of its 10 MB, measured: bench/branch_memory.py).
# New WAL segments neither zero-filled nor recycled: on a copy-on-write filesystem
# both write whole 16 MB segments a clone would otherwise own (Postgres' advice for
# such filesystems; a clone owned 16.2 MB, now 0.2 MB).
BRANCH_SETTINGS = {"max_logical_replication_workers": "0", "wal_init_zero": "off",
                 "wal_recycle": "off"}  # fmt: skip
Branching = Literal["auto", "clone", "copy"]
CLONE = "clone"  # copy-on-write clones of the parent's files (XFS reflink, btrfs)
COPY = "copy"  # an online pg_basebackup of the parent


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
        min_free: SizeSpec | None = None,
        branching: Branching = "auto",
        wal_retention: timedelta = timedelta(days=7),
        max_archive_size: SizeSpec | None = None,
    ) -> None:
        self.project = project
        self.branching = branching
        self._clones: bool | None = None  # whether the branches' filesystem can clone
        self._pooled = False  # whether the branches' data was in a pool at the last look
        self.min_free = min_free  # None: 10% of the filesystem, at most 1 GB
        # How long and how big production's restore history may grow (gc prunes it).
        self.retention = local_retention.Retention(
            wal_retention, max_archive_size or local_retention.DEFAULT_LIMIT
        )
        self._said: set[str] = set()  # background warnings already logged
        self.spare_note: str | None = None  # why the last ensure_spare made none
        self.binaries = binaries
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

    @property
    def disk(self) -> Disk:
        return Disk(self.state_dir, self.cluster(self.root), self.archive_dir, self.backups_dir,
                    self.min_free)  # fmt: skip

    def branching_method(self) -> str:
        """How a branch is made here: CLONE where the branches' filesystem can clone
        files (tried once per process), else COPY. `branching = "clone"` where it
        cannot is an error saying how to get a filesystem that can."""
        if self._clones_usable():
            return CLONE
        if self.branching == CLONE:
            raise UsageError(
                f'`branching = "clone"` is set, but the filesystem of {self.state_dir} '
                "cannot clone files (copy-on-write needs XFS made with reflink=1, or btrfs)",
                hint="Make a pool that can (`sudo branchline db pool create --size 20G`), "
                "move the state directory to such a filesystem, or set `branching = "
                '"auto"` in [database.local] to copy with pg_basebackup instead.',
            )
        return COPY

    def _clones_usable(self) -> bool:
        """Whether clones are wanted and the branches' filesystem can make them."""
        if self.branching == COPY:
            return False
        if self._clones is None:
            self._clones = reflink.can_clone(self.state_dir / "branches")
        return self._clones

    def _start_root(self) -> Cluster:
        """Start production (with the current archive command: see Disk.ensure_archiving)."""
        root = self.cluster(self.root)
        self.disk.ensure_archiving()
        root.start()
        return root

    # -- the interface ----------------------------------------------------

    async def init_root(self) -> Branch:
        """Create the root branch (production) with WAL archiving. Idempotent."""
        name = self.root
        async with self._locked(name) as conn:
            row = await branch_rows.get(conn, self.project, name)
            if row is not None and row.status == BranchStatus.READY.value:
                await finish_in_thread(self._start_root)
                branch = await self._branch(conn, name)
            else:
                await self._intend(conn, name, parent=None, expires=None)
                try:
                    await finish_in_thread(self._create_root_cluster)
                except BaseException as exc:
                    await self._undo_create(conn, name)
                    raise_if_disk_full(exc, self.disk, f"create {name!r}")
                    raise
                branch = await self._mark_ready(conn, name, detail={"root": True})
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
            durable=True,
            settings={**LIGHT_SETTINGS, **archive_settings(self.archive_dir, cluster.run_as)},
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
        data: DataPlan | None = None,
    ) -> Branch:
        name, parent = checked_names(name, parent, self.root)
        if at is not None and parent != self.root:
            raise UsageError(
                f"point-in-time copies come only from {self.root!r}, which archives its WAL",
                hint=f"Drop --parent, or use --parent {self.root}.",
            )
        async with contextlib.AsyncExitStack() as stack:
            if at is not None:  # gc prunes no backup or WAL while a restore reads them
                await stack.enter_async_context(self._locked(HISTORY_LOCK))
            return await self._create_locked(name, parent, at, expires, data)

    async def _create_locked(
        self,
        name: str,
        parent: str,
        at: datetime | None,
        expires: datetime | None,
        data: DataPlan | None,
    ) -> Branch:
        async with self._locked(name) as conn:
            row = await branch_rows.get(conn, self.project, name)
            if row is not None and row.status == BranchStatus.READY.value:
                refuse_other_moment(row, at)
                await finish_in_thread(self.cluster(name).start)
                return await self._branch(conn, name)  # idempotent: it is already there
            require_parent(parent, await branch_rows.get(conn, self.project, parent))
            # Refused before anything is made: a copy that would fill the disk takes
            # production down with it (Postgres stops when it cannot write its WAL).
            restorable = await self._restorable(at) if at is not None else None
            method = await finish_in_thread(self.branching_method)
            need = await finish_in_thread(self._need_for_branch, parent, at, method)
            what = f"create branch {name!r} from {parent!r}"
            spare_unused = at is not None or parent != self.root or method == CLONE
            await self._require_room(conn, need, what, spare_unused=spare_unused)
            await self._intend(conn, name, parent=parent, expires=expires)
            try:
                if at is not None and restorable is not None:
                    await self._restore(name, at, *restorable)
                    made_by = "restore"
                elif method == COPY and parent == self.root and await self._adopt_spare(name):
                    made_by = "spare"
                else:
                    made_by = await finish_in_thread(self._clone_sync, parent, name)
                # Passwords of its own: its parent's open nothing here, and its own
                # open nothing else (not the parent, not another branch).
                await finish_in_thread(self._own_credentials, name)
                # Still `creating` and its URI given to nobody: no code of the change
                # has seen production's rows before they are masked or gone.
                shaped = await finish_in_thread(self._shape_sync, name, data or DataPlan())
            except BaseException as exc:
                await self._undo_create(conn, name)
                raise_if_disk_full(exc, self.disk, f"create branch {name!r}")
                raise
            detail: dict[str, Any] = {"restored_to": at.isoformat()} if at else {}
            detail["made_by"] = made_by
            if data is not None:
                detail |= {"data": data.as_dict(), "shaped": shaped.as_dict()}
            return await self._mark_ready(conn, name, detail=detail)

    def _need_for_branch(self, parent: str, at: datetime | None, method: str = COPY) -> int:
        """About what a new branch takes on the disk when made."""
        if at is not None:
            usable = [b for b in self.backups() if b.end_time <= at]
            if not usable:
                return 0  # refused later, saying which moments can be restored
            # Recovery keeps every segment it replays in pg_wal until a restartpoint:
            # all of them from the backup's start, and a new timeline's segment.
            start = usable[-1].start_wal_file
            held = [p.name for p in self.archive_dir.glob("*")]
            replayed = sum(1 for n in held if archiver.SEGMENT_NAME.fullmatch(n) and n >= start)
            # The backup's files are cloned where the disk can (cp --reflink=auto).
            files = 0 if method == CLONE else space.tree_size(usable[-1].path)
            return files + (replayed + 2) * space.WAL_SEGMENT
        if method == CLONE:
            return space.clone_estimate(self.cluster(parent).data_dir)
        spare = self.spare
        if parent == self.root and spare is not None and spare.state() is ClusterState.RUNNING:
            # The spare is already on the disk: promoting it starts a new timeline's
            # segment, and the spare's received WAL stays with it.
            return 2 * space.WAL_SEGMENT
        return space.copy_estimate(self.cluster(parent).data_dir)

    async def _require_room(
        self, conn: Conn, need: int, what: str, *, spare_unused: bool = True
    ) -> None:
        """Refuse `what` when `need` bytes would eat into the reserve; the spare goes
        first when the work does not use it (`spare_unused`) and that is enough."""
        room = await finish_in_thread(self.disk.room)
        if need <= room.usable:
            return
        if spare_unused and await self._drop_spare_for(need - room.usable):
            room = await finish_in_thread(self.disk.room)
            if need <= room.usable:
                return
        rows = await branch_rows.list_all(conn, self.project)
        reclaimable = await finish_in_thread(self._reclaimable, rows)
        raise space.refusal(room, need, what, reclaimable)

    async def _drop_spare_for(self, missing: int) -> bool:
        """Spares go first: a copy that does not use the spare (a restore, another
        parent) may have its room when that is enough; True if it was dropped."""
        spare = self.spare
        if spare is None or not spare.home.exists():
            return False
        size = await finish_in_thread(space.tree_size, spare.home)
        if size < missing:
            return False
        async with self._try_locked(SPARE_LOCK) as conn:
            if conn is None:
                return False  # being adopted or rebuilt right now
            await finish_in_thread(self.drop_spare)
        log_once(self._said, "spare-dropped", f"dropped the spare copy of {self.root} to make "
                 "room for a branch; the next branch is copied instead")  # fmt: skip
        return True

    def _reclaimable(self, rows: list[branch_rows.BranchRow]) -> space.Reclaimable:
        spare, room = self.spare, self.disk.room()
        # gc drops the spare only when the disk is into the reserve (see ensure_spare).
        low = room.free < room.reserve
        spares = [spare.home] if low and spare is not None and spare.home.exists() else []
        return self.disk.reclaimable(
            rows, now=datetime.now(UTC), spares=spares, backups=self.backups(),
            retention=self.retention.age,
        )  # fmt: skip

    async def reclaimable(self) -> space.Reclaimable:
        """What `gc` could free now (shown when a copy is refused for want of room)."""
        async with self.store.connect() as conn:
            rows = await branch_rows.list_all(conn, self.project)
        return await finish_in_thread(self._reclaimable, rows)

    def _clone_sync(self, parent: str, name: str, port: int | None = None) -> str:
        """Make `name` an online copy of `parent`; the way it was made (CLONE, COPY)."""
        source = self._start_root() if parent == self.root else self.cluster(parent)
        source.start()
        target = self.cluster(name)
        method = self.branching_method()
        if method == CLONE:
            clone_online(source, target, settings=self._branch_settings(), port=port)
        else:
            clone(source, target, settings=self._branch_settings(), port=port)
        target.start()
        return method

    def _shape_sync(self, name: str, plan: DataPlan) -> ShapeReport:
        """Make branch `name` hold what `plan` says (see branchline.branchdata): the
        application role does the work, the superuser only drops a database (for
        "empty") and statistics (they sample column values)."""
        report = ShapeReport()
        if not plan.changes_anything:
            return report
        began = time.monotonic()
        cluster = self.cluster(name)
        meta = cluster.meta()
        assert meta.app_user is not None, "a branch has its application role"
        if plan.rows == "empty":
            with _connect(cluster.uri()) as conn:
                branchdata.recreate_database(conn, self.database, meta.app_user)
        else:
            with _connect(cluster.app_uri(self.database)) as conn:
                if plan.rows == "schema":
                    report.emptied = branchdata.clear_rows(conn)
                    changed: list[int] | None = None
                else:
                    changed = branchdata.apply_masks(conn, plan.masks, report)
                    changed += branchdata.refresh_views(conn)
            with _connect(cluster.uri(self.database)) as conn:
                branchdata.forget_statistics(conn, changed)
            if changed:
                with _connect(cluster.app_uri(self.database)) as conn:
                    branchdata.analyze(conn, changed)
        report.seconds = time.monotonic() - began
        return report

    def _branch_settings(self) -> dict[str, str]:
        return {**LIGHT_SETTINGS, **EPHEMERAL_SETTINGS, **BRANCH_SETTINGS}

    async def restore(self, name: str, at: datetime) -> Branch:
        return await self.create_branch(name, self.root, at=at)

    async def _restorable(self, at: datetime) -> tuple[BaseBackup, int]:
        """The backup to start from and the segment size, once the archive is known to
        hold every segment up to now: checked before anything is made, so a restore
        names the segment it lacks (and why) instead of letting recovery time out."""
        now = datetime.now(UTC)
        if at > now:
            raise UsageError(
                f"{at.isoformat()} is in the future", hint="Restore to a moment in the past."
            )
        root = self.cluster(self.root)
        backup = self._backup_before(at)
        size = space.WAL_SEGMENT
        if root.state() is ClusterState.RUNNING:
            # Not a single WAL switch while archiving fails: each one costs production
            # a new segment on a disk that may be full.
            await finish_in_thread(self.disk.refuse_while_failing, "restore to that moment")
            size = await finish_in_thread(archiver.segment_size, root)
            last = await finish_in_thread(self._flush_wal_past)
        else:
            held = sorted(p.name for p in self.archive_dir.glob("*")
                          if archiver.SEGMENT_NAME.fullmatch(p.name))  # fmt: skip
            last = held[-1] if held else backup.start_wal_file
        await finish_in_thread(self.disk.check_restorable, backup, last, size)
        return backup, size

    async def _restore(self, name: str, at: datetime, backup: BaseBackup, size: int) -> None:
        root = self.cluster(self.root)
        meta = root.meta()
        await finish_in_thread(
            restore_to_time,
            backup,
            self.cluster(name),
            archive_dir=self.archive_dir,
            target=at,
            settings=self._branch_settings(),
            superuser=meta.superuser,
            password=meta.password,
            app_user=meta.app_user,
            segment_size=size,
        )

    def _flush_wal_past(self, what: str = "restore to that moment") -> str:
        """Make the archive hold a commit after now: recovery to a moment stops at the
        first commit after it, and fails if the archive ends before one. Returns the
        segment that holds it; fails at once, naming the segment and why, when the
        archiver cannot archive it."""
        root = self._start_root()
        with psycopg.connect(root.uri(), autocommit=True) as conn:
            conn.execute("SELECT pg_current_xact_id()")  # a transaction with an xid commits
            failed = conn.execute("SELECT failed_count FROM pg_stat_archiver").fetchone()
            row = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()
        assert row is not None and failed is not None
        segment = str(row[0])
        self.disk.wait_archived(segment, before=int(failed[0]), what=what)
        return segment

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
        history = name == self.root and self._history_left()
        if row is None and not cluster.home.exists() and not history:
            return False
        await resources.record(conn, self.project, RESOURCE_KIND, name, "deleting")
        if row is not None:
            await branch_rows.update(conn, self.project, name, status=BranchStatus.DELETING.value)
        await finish_in_thread(cluster.destroy)
        if name == self.root:
            # Nothing of a deleted production lingers: its spare, WAL and backups go
            # too. The row goes last, so a crash before it leaves a `deleting` record
            # that gc finishes by coming back here.
            await finish_in_thread(self.drop_spare)
            await finish_in_thread(self._remove_history)
        await branch_rows.delete(conn, self.project, name)
        await resources.record(conn, self.project, RESOURCE_KIND, name, "deleted")
        return True

    def _history_left(self) -> bool:
        return self.archive_dir.exists() or self.backups_dir.exists()

    def _remove_history(self) -> None:
        """Production's WAL archive and base backups, backups first: WAL without a
        backup restores nothing, a backup without its WAL would still be offered."""
        for path in (self.backups_dir, self.archive_dir):
            self._discard(path)

    @property
    def _trash(self) -> Path:
        return self.state_dir / "trash"

    def _discard(self, path: Path) -> None:
        """Remove `path` crash-safely: moved out of sight at once (a half-removed
        backup must never be offered for a restore), then deleted; gc empties what a
        crash left in the trash."""
        self._trash.mkdir(exist_ok=True)
        aside = self._trash / f"{path.parent.name}-{path.name}-{os.urandom(4).hex()}"
        try:
            path.rename(aside)
        except FileNotFoundError:
            return
        shutil.rmtree(aside, ignore_errors=True)

    def _empty_trash(self) -> None:
        for path in self._trash.glob("*") if self._trash.exists() else ():
            shutil.rmtree(path, ignore_errors=True)

    async def reset_branch(self, name: str, *, source: str | None = None) -> Branch:
        """The branch's data replaced by `source`'s current data (default: its
        parent's); same port and application password, so the same URI."""
        name = naming.validate_branch_id(name)
        async with self._locked(name) as conn:
            row = await branch_rows.get(conn, self.project, name)
            if row is None or row.status != BranchStatus.READY.value:
                raise UsageError(
                    f"branch {name!r} does not exist",
                    hint="See `branchline db branches list`.",
                )
            if source is not None:
                row = dataclasses.replace(row, parent=naming.validate_branch_id(source))
            if row.parent is None:
                raise UsageError(f"branch {name!r} has no parent to reset to")
            # A masked (or schema-only) branch stays so: its plan is in its record.
            plan = DataPlan.from_dict(row.detail.get("data"))
            # The old data stays aside until the new copy is ready: a whole copy's room.
            parent_data = self.cluster(row.parent).data_dir
            method = await finish_in_thread(self.branching_method)
            estimate = space.clone_estimate if method == CLONE else space.copy_estimate
            need = await finish_in_thread(estimate, parent_data)
            await self._require_room(conn, need, f"reset branch {name!r}")
            try:
                await finish_in_thread(self._reset_sync, row.parent, name, plan)
            except BaseException as exc:
                raise_if_disk_full(exc, self.disk, f"reset branch {name!r}")
                raise
            return await self._mark_ready(conn, name, detail={"reset_at": _now_iso()})

    def _reset_sync(self, parent: str, name: str, plan: DataPlan | None = None) -> None:
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
            self._shape_sync(name, plan or DataPlan())
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
        """Every branch, with its size measured now (see `_size_now`)."""
        await self._pool_ready()
        async with self.store.connect() as conn:
            rows = await branch_rows.list_all(conn, self.project)
        sizes = await finish_in_thread(lambda: {row.name: self._size_now(row.name) for row in rows})
        return [
            dataclasses.replace(
                branch_from_row(row, self._compute_state(row.name)),
                size_bytes=sizes[row.name],  # None: its cluster is gone
            )
            for row in rows
        ]

    def _size_now(self, name: str) -> int | None:
        """What the branch takes on the disk now, None when its cluster is gone. A
        branch's size is what deleting it would give back: the extents it does not
        share with its parent (a clone shares nearly all until written). The root's is
        everything it holds, shared or not: the clones are copies of it."""
        home = self.cluster(name).home.resolve()  # an adopted spare is a link
        if not home.is_dir():
            return None
        return space.tree_size(home) if name == self.root else extents.own_bytes(home)

    async def connection_uri(self, name: str) -> str:
        await self._pool_ready()
        branch = await self.get_branch(name)
        if branch is None or branch.status is not BranchStatus.READY:
            raise UsageError(
                f"branch {name!r} does not exist", hint="See `branchline db branches list`."
            )
        cluster = self.cluster(name)
        # Like a Neon compute, a stopped branch starts when someone asks for it.
        await finish_in_thread(cluster.start)
        if cluster.meta().app_user is None:  # a cluster made before roles existed
            await finish_in_thread(roles.ensure_app_role, cluster, self.database)
        # The application role: never the superuser, whose password stays here.
        return cluster.app_uri(self.database)

    async def allow_createdb(self, name: str) -> None:
        await self.connection_uri(name)  # ready, running, with its application role
        await finish_in_thread(roles.allow_createdb, self.cluster(name))

    async def schema_dump(self, name: str) -> str:
        from branchline.schemadiff import dump_schema

        uri = await self.connection_uri(name)
        return await finish_in_thread(dump_schema, uri, self.cluster(name).binaries.path("pg_dump"))

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
        second for an empty cluster); promoting a ready standby takes ~0.1 s.

        Never fails, and never starves production: a spare only saves time (the next
        create copies instead), so it is skipped when it would eat into the reserve
        (logged once), dropped first when the disk runs into the reserve, and a
        failure to make one is logged and cleaned up. `spare_note` says which."""
        self.spare_note = None
        await self._pool_ready()
        if self.cluster(self.root).state() is ClusterState.MISSING:
            return False
        if await finish_in_thread(self._clones_usable):
            # A clone is as fast as promoting a spare, and costs no standby.
            if self.spare is not None:
                await self._drop_spare_quietly()
            self.spare_note = "not needed: branches are copy-on-write clones"
            return False
        try:
            return await self._ensure_spare()
        except (BranchlineError, OSError, psycopg.Error) as exc:
            with contextlib.suppress(BranchlineError, OSError):
                await finish_in_thread(self._remove_unused_spares)  # what was half made
            why = "the disk is full" if space.is_disk_full(exc) else str(exc)
            self.spare_note = f"not made: {why}"
            log_once(self._said, "spare-failed", f"the spare copy of {self.root} could not "
                     f"be made ({why}); the next branch is copied instead")  # fmt: skip
            return False

    async def _ensure_spare(self) -> bool:
        async with self._try_locked(SPARE_LOCK) as conn:
            if conn is None:
                return False  # another process is building or adopting it
            spare = self.spare
            room = await finish_in_thread(self.disk.room)
            if spare is not None and room.free < room.reserve:
                # The disk runs into production's reserve: the spare goes first.
                await finish_in_thread(self.drop_spare)
                self.spare_note = "dropped: the disk is into production's reserve"
                log_once(self._said, "spare-dropped", f"dropped the spare copy of {self.root}: "
                         "the disk is into the space kept for production's WAL")  # fmt: skip
                return False
            if (
                spare is not None
                and spare.state() is ClusterState.RUNNING
                and await finish_in_thread(standby_is_streaming, spare)
            ):
                await finish_in_thread(self._remove_unused_spares)
                return False
            root = self.cluster(self.root)
            need = await finish_in_thread(space.copy_estimate, root.data_dir)
            short = await finish_in_thread(short_of_room, self.disk, need)
            if short is not None:
                await finish_in_thread(self.drop_spare)  # a broken one gives its room back
                self.spare_note = f"skipped: it {short}"
                log_once(self._said, "spare-room", f"not preparing a spare copy of {self.root}: "
                         f"it {short}; the next branch is copied instead")  # fmt: skip
                return False
            await finish_in_thread(self._rebuild_spare)
            self._said -= {"spare-room", "spare-failed", "spare-dropped"}  # say it again later
            return True

    def _rebuild_spare(self) -> None:
        self.drop_spare()
        root = self._start_root()
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
            adopted = await finish_in_thread(self._adopt_spare_sync, name)
        # Not refilled here: a command returns when its branch is ready, and a run
        # migrates its branch right now. serve refills it between runs (keep_spare).
        return adopted

    async def _drop_spare_quietly(self) -> None:
        async with self._try_locked(SPARE_LOCK) as conn:
            if conn is not None:
                await finish_in_thread(self.drop_spare)

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

    async def stop_clusters(self) -> list[str]:
        """Stop the servers of every branch and spare, spares first (they stream from
        the root); the data stays and a branch starts again when asked for."""

        def stop_all() -> list[str]:
            branches = sorted((self.state_dir / "branches").glob("*"),
                              key=lambda home: (home.name == self.root, home.name))  # fmt: skip
            adopted = {home.resolve() for home in branches if home.is_symlink()}
            homes = [(f"spare {p.name}", p) for p in sorted(self.spares_dir.glob(f"{self.root}-*"))
                     if p.resolve() not in adopted]  # fmt: skip
            homes += [(home.name, home) for home in branches]  # the root last
            stopped = []
            for name, home in homes:
                cluster = Cluster(home, binaries=self.binaries)
                if home.is_dir() and cluster.state() is ClusterState.RUNNING:
                    cluster.stop()
                    stopped.append(name)
            return stopped

        return await finish_in_thread(stop_all)

    async def aclose(self) -> None:
        """Nothing runs in the background: the spare is refilled by serve's loop
        (`operations.runtime.keep_spare`) or `db gc`, never behind a command."""

    async def storage(self) -> dict[str, Any]:
        """The disk, how branches are made, production's WAL archive and its history,
        for `status` and `/metrics`."""
        await self._pool_ready()

        def gather() -> dict[str, Any]:
            status = self.disk.archive_status()
            branching = CLONE if self._clones_usable() else COPY
            if branching == COPY and self.branching == CLONE:
                branching = "none: clones are set, and this disk cannot make them"
            return {"disk": self.disk.room().as_dict(), "branching": branching,
                    "archive": status.as_dict() if status is not None else None,
                    "history": self._archive_usage().as_dict()}  # fmt: skip

        return await finish_in_thread(gather)

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
        """A base backup of the root, now. Refused while WAL archiving fails (a backup
        is restorable only with the WAL after it) or when it would eat into the
        reserve; it counts as taken once the WAL it ends in is archived."""
        await self._pool_ready()
        root = await finish_in_thread(self._start_root)
        await finish_in_thread(self.disk.refuse_while_failing, "take a base backup")
        clones = await finish_in_thread(self._clones_usable)
        estimate = space.clone_estimate if clones else space.copy_estimate
        need = await finish_in_thread(estimate, root.data_dir)
        async with self.store.connect() as conn:
            await self._require_room(conn, need, f"take a base backup of {self.root!r}")
        try:
            return await finish_in_thread(self._take_backup_sync, True)
        except BaseException as exc:
            raise_if_disk_full(exc, self.disk, f"take a base backup of {self.root!r}")
            raise

    def _take_backup_sync(self, archived: bool = False) -> BaseBackup:
        cluster = self._start_root()
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        self.backups_dir.mkdir(parents=True, exist_ok=True)
        dest = self.backups_dir / stamp
        try:
            backup = take_base_backup(cluster, dest, clones=self._clones_usable())
            if archived:
                self._flush_wal_past("take a base backup")
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)  # half a backup is no backup
            raise
        return backup

    def _backup_before(self, at: datetime) -> BaseBackup:
        usable = [b for b in self.backups() if b.end_time <= at]
        if not usable:
            known = self.backups()
            if not known:
                raise UsageError(
                    f"no base backup of {self.root!r} exists, so no moment can be restored",
                    hint="Run `branchline db init` (a new production), or `branchline db "
                    "backup` to make moments from now on restorable.",
                )
            earliest = known[0].end_time.isoformat()
            raise UsageError(
                f"{at.isoformat()} cannot be restored: the moments of {self.root!r} that can "
                f"be are from {earliest} until now",
                hint=f"The earliest moment you can restore to is {earliest}. Older history "
                f"is pruned by [database.local] {self.retention.describe()}: raise them in "
                "branchline.toml to keep more.",
            )
        return usable[-1]

    # -- garbage collection --------------------------------------------------

    async def gc(
        self,
        *,
        now: datetime | None = None,
        backup_interval: timedelta = timedelta(hours=24),
        backup_retention: timedelta | None = None,
        keep_spare: bool = True,
    ) -> GcReport:
        """Delete expired branches, finish or undo what a crash interrupted, remove
        clusters the store does not know and rows whose cluster is gone, and keep
        the root's base backups fresh and its restore history within
        `wal_retention` and `max_archive_size` (see local_retention)."""
        now = now or datetime.now(UTC)
        backup_retention = self.retention.age if backup_retention is None else backup_retention
        report = GcReport()
        await self._pool_ready()
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
        await finish_in_thread(self._empty_trash)
        report.archive_repaired, gap = await finish_in_thread(self.disk.repair)
        resumed = await finish_in_thread(self.disk.nudge)
        if resumed:
            report.archive_repaired.append(resumed)
        # After a gap in the archive only a backup taken after it restores later moments.
        # A backup at least every `wal_retention`: the WAL from the newest backup on
        # is kept whatever its age, so it bounds how old the archive gets.
        interval = backup_interval
        if backup_retention > timedelta(0):
            interval = min(interval, backup_retention)
        if gap:
            interval = timedelta(0)
        await self._maintain_backups(report, now, interval, backup_retention)
        # Never needs a spare to run: one that cannot be made is a note, not a failure.
        if keep_spare:
            report.spare_rebuilt = await self.ensure_spare()
        if self.spare_note:
            report.notes.append(f"spare copy {self.spare_note}")
        status = await finish_in_thread(self.disk.archive_status)
        if status is not None and status.failing:
            report.notes.append(f"WAL archiving {status.describe()}")
        return report

    async def _remove_strays(self, report: GcReport) -> None:
        async with self.store.connect() as conn:
            known = {row.name: row for row in await branch_rows.list_all(conn, self.project)}
        on_disk = {p.name for p in (self.state_dir / "branches").glob("*") if p.is_dir()}
        for name in sorted(on_disk - set(known)):
            async with self._try_locked(name) as conn:
                if conn is None or await branch_rows.get(conn, self.project, name) is not None:
                    continue
                await finish_in_thread(self.cluster(name).destroy)
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
        if self.root not in known and self.root not in on_disk and self._history_left():
            async with self._try_locked(self.root) as conn:
                # Unlocked and still no row: no init is under way; this is what a
                # deleted production left (init_root clears it too before it starts).
                if (
                    conn is not None
                    and await branch_rows.get(conn, self.project, self.root) is None
                ):
                    await finish_in_thread(self._remove_history)
                    report.archive_pruned.append(
                        f"the WAL archive and backups of the deleted {self.root!r}"
                    )

    async def _maintain_backups(
        self, report: GcReport, now: datetime, interval: timedelta, retention: timedelta
    ) -> None:
        if self.cluster(self.root).state() is ClusterState.MISSING:
            return
        backups = self.backups()
        if not backups or backups[-1].end_time <= now - interval:
            try:
                backups.append(await self.take_backup())
                report.backup_taken = True
            except space.DiskFullError as exc:  # short of room, or archiving fails
                report.notes.append(f"no new base backup: {exc.message}")
        if not backups:
            return
        async with self._try_locked(HISTORY_LOCK) as free:
            if free is None:
                # A restore is reading the backups and WAL: pruning waits for the next
                # pass rather than pull them away from under it.
                report.notes.append(
                    f"pruning the WAL archive of {self.root!r} waits for the next gc: "
                    "a restore from it is under way"
                )
            else:
                keep_from = local_retention.kept_by_age(backups, now, retention)
                backups = await self._drop_backups(report, backups, keep_from, "wal_retention")
                backups = await self._prune_to_size(report, backups)
        usage = await finish_in_thread(self._archive_usage, backups)
        report.archive = usage.as_dict()
        if usage.over:
            report.notes.append(
                f"production's WAL archive and base backups take {usage.describe()} "
                "([database.local] max_archive_size) even with only the newest base backup "
                "kept: raise max_archive_size, or make production's data smaller"
            )

    async def _prune_to_size(self, report: GcReport, backups: list[BaseBackup]) -> list[BaseBackup]:
        """Within max_archive_size: the oldest backups go (and the WAL before the next
        one) while over it; when the only one left and its WAL are too much, a fresh
        backup (if there is room) replaces it, so the WAL before it can go."""
        usage = await finish_in_thread(self._archive_usage, backups)
        while usage.over and len(backups) > 1:
            backups = await self._drop_backups(report, backups, 1, "max_archive_size")
            usage = await finish_in_thread(self._archive_usage, backups)
        if not usage.over:
            return backups
        data = await finish_in_thread(
            space.tree_size, self.cluster(self.root).data_dir, skip=("pg_wal",)
        )
        if not local_retention.fresh_backup_helps(data, usage):
            return backups
        try:
            backups.append(await self.take_backup())
            report.backup_taken = True
        except space.DiskFullError as exc:
            report.notes.append(f"no fresh base backup to shrink the archive: {exc.message}")
            return backups
        return await self._drop_backups(report, backups, len(backups) - 1, "max_archive_size")

    async def _drop_backups(
        self, report: GcReport, backups: list[BaseBackup], keep_from: int, rule: str
    ) -> list[BaseBackup]:
        """Drop `backups[:keep_from]`, then the WAL before the oldest kept one (it can
        never be replayed again); `rule` says why, in the report."""
        for old in backups[:keep_from]:
            await finish_in_thread(self._discard, old.path)
            report.backups_pruned.append(old.path.name)
        kept = backups[keep_from:]
        oldest = kept[0]
        before = await finish_in_thread(local_retention.segment_sizes, self.archive_dir)
        root = self.cluster(self.root)
        await finish_in_thread(
            root.run_tool,
            [root.binaries.path("pg_archivecleanup"), str(self.archive_dir), oldest.start_wal_file],
            what="pg_archivecleanup",
        )
        after = await finish_in_thread(local_retention.segment_sizes, self.archive_dir)
        gone = [name for name in before if name not in after]
        if keep_from or gone:
            freed = human_bytes(sum(before[name] for name in gone))
            report.archive_pruned.append(
                f"{keep_from} base backup(s) and {len(gone)} WAL segment(s) ({freed}) from "
                f"before {oldest.end_time.isoformat()} ({rule})"
            )
        return kept

    def _archive_usage(
        self, backups: list[BaseBackup] | None = None
    ) -> local_retention.ArchiveUsage:
        kept = self.backups() if backups is None else backups
        total = self.disk.room().total  # the pool's size, when the branches live in one
        return local_retention.measure(total, self.archive_dir, kept, self.retention.size)

    # -- internals ----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _locked(self, name: str) -> AsyncIterator[Conn]:
        """The branch's lock: one create/delete/reset of a name at a time. It is held
        on this machine's disk too, so the state database dying cannot free it. The
        pool, if the project has one, is mounted first."""
        await self._pool_ready()
        async with locks.held(self.store, self._lock_key(name), here=self._lock_dir) as conn:
            yield conn

    async def _pool_ready(self) -> None:
        """Before branch data is touched: the project's pool mounted again after a
        restart (`db pool`); a pool made or deleted since the last look means the
        filesystem changed, so whether it can clone is tried again."""
        found = await finish_in_thread(pool.ensure_mounted, self.state_dir)
        if (found is not None) != self._pooled:
            self._pooled = found is not None
            self._clones = None

    def _try_locked(self, name: str) -> contextlib.AbstractAsyncContextManager[Conn | None]:
        """The branch's lock if free: how gc tells work a crash interrupted from work
        still going on."""
        return locks.if_free(self.store, self._lock_key(name), here=self._lock_dir)

    def _lock_key(self, name: str) -> str:
        return f"branchline:branch:{self.project}:{name}"

    @property
    def _lock_dir(self) -> Path:
        return self.state_dir / "locks"

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
            await finish_in_thread(self.cluster(name).destroy)
        await branch_rows.delete(conn, self.project, name)
        await resources.record(conn, self.project, RESOURCE_KIND, name, "failed")

    async def _mark_ready(self, conn: Conn, name: str, *, detail: dict[str, Any]) -> Branch:
        cluster = self.cluster(name)
        size = await finish_in_thread(self._size_now, name)
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
        return branch_from_row(row, self._compute_state(name))

    def _compute_state(self, name: str) -> str:
        return self.cluster(name).state().value


def _connect(uri: str) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(uri, autocommit=True, connect_timeout=10)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()
