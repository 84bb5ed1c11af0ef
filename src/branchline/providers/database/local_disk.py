"""The local provider's disk rules: room checks before a copy, what `gc` could free,
the health of production's WAL archive, and its repair.

Production is never the one starved: a branch, the spare or a base backup that
would eat into the reserve (`[database.local] min_free`) is refused, the spare is
dropped first when the disk runs low, and archiving failures stop `db backup`
and are named by `db restore` instead of making it wait.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import psycopg

from branchline.config.sizes import SizeSpec, human_bytes
from branchline.errors import PostgresError
from branchline.postgres import Cluster, ClusterState, archiver, extents, space
from branchline.postgres.copy import BaseBackup, archive_settings
from branchline.providers.database import pool
from branchline.store import branches as branch_rows

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Disk:
    """What the checks need to know of the provider's layout."""

    state_dir: Path
    root: Cluster
    archive_dir: Path
    backups_dir: Path
    min_free: SizeSpec | None

    def room(self) -> space.Room:
        """The room branches have: on the state directory's disk, or in the project's
        pool, which can hold no more than what the disk under its sparse image can
        still give it (and whose reserve is taken from the pool's own size)."""
        found = pool.load(self.state_dir)
        if found is None or not pool.is_mounted(found):
            return space.measure(self.state_dir, self.min_free)
        inside = space.measure(found.mount, self.min_free)
        return dataclasses.replace(inside, free=min(inside.free, pool.room(found)))

    def branch_home(self, name: str) -> Path:
        return self.state_dir / "branches" / name

    # -- what gc could give back ------------------------------------------------

    def reclaimable(
        self,
        rows: list[branch_rows.BranchRow],
        *,
        now: datetime,
        spares: list[Path],
        backups: list[BaseBackup],
        retention: timedelta = timedelta(days=7),
    ) -> space.Reclaimable:
        items: list[tuple[str, int]] = []
        known = {row.name for row in rows}
        expired = [
            r.name
            for r in rows
            if r.expires_at is not None and r.expires_at <= now and r.parent is not None
        ]
        if expired:
            # What deleting them gives back: not the extents a clone shares.
            size = sum(extents.own_bytes(self.branch_home(n).resolve()) for n in expired)
            items.append((f"{len(expired)} expired branch(es)", size))
        homes = self.state_dir / "branches"
        strays = [p for p in homes.glob("*") if p.name not in known] if homes.exists() else []
        if strays:
            items.append(("clusters no record explains", sum(space.tree_size(p) for p in strays)))
        if spares:
            items.append(("the spare copy", sum(space.tree_size(p) for p in spares)))
        old = [b for b in backups[:-1] if b.end_time <= now - retention]
        if old:
            items.append((f"{len(old)} old backup(s)", sum(space.tree_size(b.path) for b in old)))
        leftovers = archiver.temp_files(self.archive_dir) if self.archive_dir.exists() else []
        if leftovers:
            items.append(("archive leftovers", sum(p.stat().st_size for p in leftovers)))
        return space.Reclaimable(tuple(i for i in items if i[1] > 0))

    # -- the archive ----------------------------------------------------------------

    def ensure_archiving(self) -> bool:
        """Give a root made by an older branchline (plain `cp`, which leaves partial
        segments on a full disk) the atomic archive command; True if it changed."""
        root = self.root
        if not root.exists():
            return False
        meta = root.meta()
        wanted = archive_settings(self.archive_dir, root.run_as)
        if all(meta.settings.get(k) == v for k, v in wanted.items()):
            return False
        root.write_meta(meta.with_settings({**meta.settings, **wanted}))
        root.rewrite_managed_conf()
        if root.state() is ClusterState.RUNNING:
            with psycopg.connect(root.uri(), autocommit=True, connect_timeout=5) as conn:
                conn.execute("SELECT pg_reload_conf()")  # archive_command needs no restart
        return True

    def archive_status(self) -> archiver.ArchiveStatus | None:
        """None when production is not running (nothing is being archived)."""
        if self.root.state() is not ClusterState.RUNNING:
            return None
        try:
            return archiver.read_status(self.root)
        except psycopg.Error:
            return None

    def refuse_while_failing(self, what: str) -> None:
        """Backups and restores need the archive to be current: refused, naming the
        segment that could not be archived and why, while archiving fails."""
        status = self.archive_status()
        if status is not None and status.failing:
            raise ArchiveFailingError(
                f"cannot {what}: WAL archiving of production is failing: segment "
                f"{status.last_failed_wal} could not be archived ({status.describe()})",
                hint="Backups and restores need the WAL after them in the archive. Make room "
                "on the disk (`branchline db gc`, delete branches you no longer need); "
                "archiving resumes by itself within a minute. `branchline status` shows it.",
            )

    def repair(self) -> tuple[list[str], bool]:
        """Clear what failed or killed archive attempts left: temporary files, and
        partial segments (what a plain `cp` left on a full disk), copied again from
        production's pg_wal while it still holds them. Returns what was done, and
        whether the archive has a gap no copy can fill (then only a base backup taken
        after it makes later moments restorable)."""
        done: list[str] = []
        gap = False
        if not self.archive_dir.exists():
            return done, gap
        for path in archiver.temp_files(self.archive_dir):
            path.unlink(missing_ok=True)
            done.append(f"removed the unfinished archive copy {path.name}")
        running = self.root.state() is ClusterState.RUNNING
        size = archiver.segment_size(self.root) if running else space.WAL_SEGMENT
        for name, held in archiver.partial_segments(self.archive_dir, size):
            what = f"the partial archived segment {name} ({held} of {size} bytes)"
            if archiver.recopy(self.root.data_dir / "pg_wal" / name, self.archive_dir, size):
                self.root.run_as.own(self.archive_dir / name)
                done.append(f"replaced {what} from production's pg_wal")
            else:
                (self.archive_dir / name).unlink(missing_ok=True)
                done.append(f"removed {what}: production no longer holds it")
                gap = True
        return done, gap

    def nudge(self, timeout: float = 5.0) -> str | None:
        """Wake a failing archiver when there is room again (it retries by itself only
        once a minute, or at the next segment): a reload sets its latch. Returns what
        happened when it resumed."""
        status = self.archive_status()
        if status is None or not status.failing:
            return None
        with psycopg.connect(self.root.uri(), autocommit=True, connect_timeout=5) as conn:
            conn.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self.archive_status()
            if now is not None and not now.failing:
                return (
                    f"WAL archiving resumed after {status.failed_count} failed attempt(s) "
                    f"(last archived {now.last_archived_wal})"
                )
            time.sleep(0.1)
        return None

    def check_restorable(self, backup: BaseBackup, last: str, size: int) -> None:
        """Every segment from the backup's start to `last` is whole in the archive."""
        problem = archiver.first_problem(self.archive_dir, backup.start_wal_file, last, size)
        if problem is None:
            return
        name, why = problem
        status = self.archive_status()
        failing = f" WAL archiving is failing: {status.describe()}." if status and status.failing \
            else ""  # fmt: skip
        raise ArchiveFailingError(
            f"cannot restore to that moment: WAL segment {name} is needed and {why}.{failing}",
            hint="Make room on the disk (`branchline db gc`); archiving resumes by itself and "
            "copies the segment again while production still holds it. Moments before "
            f"{name} was written can be restored now.",
        )

    def wait_archived(
        self, segment: str, before: int, what: str = "restore to that moment", timeout: float = 30.0
    ) -> None:
        """Wait until `segment` is archived; fail at once, naming the segment and why,
        when the archiver fails again (`before`: its failed_count when we asked) or
        its log says so (a command that cannot even start is not counted)."""
        deadline = time.monotonic() + timeout
        log = self.root.log_file
        offset = log.stat().st_size if log.exists() else 0
        while time.monotonic() < deadline:
            status = archiver.read_status(self.root)
            if status.last_archived_wal is not None and status.last_archived_wal >= segment:
                return
            said = archiver.new_failure(log, offset)
            if (status.failing and status.failed_count > before) or said:
                failed = status.last_failed_wal if status.failing else segment
                raise ArchiveFailingError(
                    f"cannot {what}: WAL segment {failed} could not be archived "
                    f"({status.reason or said or 'see the cluster log'}); "
                    f"the archive ends at {status.last_archived_wal or 'no segment'}",
                    hint="Make room on the disk (`branchline db gc`, delete branches you "
                    "no longer need); archiving resumes by itself within a minute; then try "
                    "again. `branchline status` shows it.",
                )
            time.sleep(0.05)
        raise PostgresError(
            f"WAL segment {segment} was not archived within {timeout:.0f} s",
            hint=f"See {self.root.log_file} for the archive command's errors.",
        )


class ArchiveFailingError(space.DiskFullError):
    """Production's WAL archive is behind: backups and restores past it cannot work."""

    code = "archive_failing"


def log_once(flag: set[str], key: str, message: str) -> None:
    """Say `message` once per process (a background refill retries often)."""
    if key not in flag:
        flag.add(key)
        logger.warning(message)


def short_of_room(disk: Disk, need: int) -> str | None:
    room = disk.room()
    if need <= room.usable:
        return None
    return (
        f"needs about {human_bytes(need)}, {human_bytes(room.free)} free, "
        f"{human_bytes(room.reserve)} kept for production's WAL"
    )


def raise_if_disk_full(exc: BaseException, disk: Disk, what: str) -> None:
    """A full disk met while doing `what` is raised as a clear error (from `exc`);
    anything else is left for the caller to re-raise."""
    if isinstance(exc, space.DiskFullError) or not space.is_disk_full(exc):
        return
    raise space.disk_full(disk.state_dir, what, space.Reclaimable(), disk.min_free) from exc
