"""How much of the disk production's restore history takes, and what may go.

The history is the WAL archive (`wal-archive/<root>/`) and the base backups
(`backups/<root>/<ts>/`). WAL is only useful from the oldest kept backup on, so it
is pruned with the backups: `[database.local] wal_retention` drops what is older
than that, and `max_archive_size` drops the oldest backups (and the WAL before the
next one) while both together take more than it allows. `gc` does both.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from branchline.config.durations import format_duration
from branchline.config.sizes import SizeSpec, human_bytes
from branchline.postgres import archiver, extents, space
from branchline.postgres.copy import BaseBackup

DEFAULT_LIMIT = SizeSpec(fraction=0.10)  # as `[database.local] max_archive_size` says


@dataclass(frozen=True)
class Retention:
    """The two rules, as configured."""

    age: timedelta = timedelta(days=7)
    size: SizeSpec = DEFAULT_LIMIT

    def describe(self) -> str:
        return f"wal_retention {format_duration(self.age)}, max_archive_size {self.size}"


@dataclass(frozen=True)
class ArchiveUsage:
    """What the restore history takes now, against its limit."""

    wal_bytes: int
    backup_bytes: int
    limit_bytes: int
    backups: int
    oldest_restorable: datetime | None  # the end of the oldest kept base backup

    @property
    def total(self) -> int:
        return self.wal_bytes + self.backup_bytes

    @property
    def over(self) -> bool:
        return self.total > self.limit_bytes

    def as_dict(self) -> dict[str, object]:
        return {
            "bytes": self.total,
            "limit_bytes": self.limit_bytes,
            "wal_bytes": self.wal_bytes,
            "backup_bytes": self.backup_bytes,
            "backups": self.backups,
            "oldest_restorable": self.oldest_restorable.isoformat()
            if self.oldest_restorable
            else None,
        }

    def describe(self) -> str:
        return f"{human_bytes(self.total)} of {human_bytes(self.limit_bytes)}"


def measure(
    disk_total: int, archive_dir: Path, backups: list[BaseBackup], limit: SizeSpec
) -> ArchiveUsage:
    """The history's size against `limit` (a share of `disk_total`, the size of the
    branches' filesystem). A backup counts its own bytes: one made of clones shares
    its blocks with production until production writes them."""
    return ArchiveUsage(
        wal_bytes=space.tree_size(archive_dir),
        backup_bytes=sum(extents.own_bytes(b.path) for b in backups),
        limit_bytes=limit.of(disk_total),
        backups=len(backups),
        oldest_restorable=backups[0].end_time if backups else None,
    )


def kept_by_age(backups: list[BaseBackup], now: datetime, age: timedelta) -> int:
    """The index of the oldest backup to keep: the newest one at least `age` old
    (a restore to `now - age` starts from it) and every younger one."""
    cutoff = now - age
    older = sum(1 for b in backups if b.end_time <= cutoff)
    return max(0, older - 1)


def segment_sizes(archive_dir: Path) -> dict[str, int]:
    """The archived segments, by name, and the bytes each takes."""
    sizes = {}
    for path in archive_dir.glob("*") if archive_dir.exists() else ():
        if archiver.SEGMENT_NAME.fullmatch(path.name):
            try:
                sizes[path.name] = path.stat().st_blocks * 512
            except OSError:
                continue  # removed meanwhile
    return sizes


def fresh_backup_helps(data_bytes: int, usage: ArchiveUsage) -> bool:
    """Whether a new base backup (about `data_bytes`) in place of the only one and its
    WAL is worth taking: it must leave much less behind, or it would be taken again
    at every gc while production's data alone is over the limit."""
    after = data_bytes + 2 * space.WAL_SEGMENT
    return after < usage.total and (after <= usage.limit_bytes or 2 * after <= usage.total)
