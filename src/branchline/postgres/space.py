"""Disk space: how much a copy will need, how much is free, and the reserve that
only production's WAL may use.

A full disk is the one fault that takes production down by itself (Postgres
PANICs when it cannot write WAL), so everything branchline makes on the disk -
branches, the spare, base backups - is checked first and refused while it would
eat into the reserve. A disk that fills anyway is reported as such, with what to
do, never as a bug.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from branchline.config.sizes import SizeSpec, human_bytes
from branchline.errors import BranchlineError, UsageError

DEFAULT_RESERVE_SHARE = 0.10
DEFAULT_RESERVE_CAP = 1024**3
WAL_SEGMENT = 16 * 1024**2  # Postgres' default; a cluster's own is read where it matters
_DISK_FULL_TEXTS = ("No space left on device", "could not extend file", "Disk quota exceeded")


class DiskFullError(UsageError):
    """Not enough free disk for what was asked, or the disk filled while doing it."""

    code = "disk_full"
    default_hint = (
        "Free space on the filesystem, run `branchline db gc`, or lower `[database.local] "
        "min_free`."
    )


@dataclass(frozen=True)
class Room:
    """The filesystem holding `path`: its size, what is free, and the reserve."""

    path: Path
    total: int
    free: int  # available to an unprivileged writer (what Postgres gets)
    reserve: int

    @property
    def usable(self) -> int:
        """What may be spent without touching the reserve."""
        return max(0, self.free - self.reserve)

    def as_dict(self) -> dict[str, int | str]:
        return {"path": str(self.path), "total_bytes": self.total, "free_bytes": self.free,
                "reserve_bytes": self.reserve}  # fmt: skip


def default_reserve(total: int) -> int:
    return min(int(total * DEFAULT_RESERVE_SHARE), DEFAULT_RESERVE_CAP)


def measure(path: Path, min_free: SizeSpec | None = None) -> Room:
    """The room on the filesystem of `path` (or of its nearest existing ancestor)."""
    probe = Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    st = os.statvfs(probe)
    total = st.f_blocks * st.f_frsize
    reserve = min_free.of(total) if min_free is not None else default_reserve(total)
    return Room(Path(path), total, st.f_bavail * st.f_frsize, reserve)


@dataclass(frozen=True)
class Reclaimable:
    """What `branchline db gc` could give back now, item by item."""

    items: tuple[tuple[str, int], ...] = ()

    @property
    def total(self) -> int:
        return sum(size for _what, size in self.items)

    def describe(self) -> str:
        if not self.items:
            return "`branchline db gc` would free nothing now"
        parts = ", ".join(f"{what} {human_bytes(size)}" for what, size in self.items)
        return f"`branchline db gc` could free about {human_bytes(self.total)} ({parts})"


def refusal(room: Room, need: int, what: str, reclaimable: Reclaimable) -> DiskFullError:
    return DiskFullError(
        f"not enough disk space to {what}: it needs about {human_bytes(need)}, and "
        f"{human_bytes(room.free)} is free on {room.path}, of which {human_bytes(room.reserve)} "
        "is kept for production's WAL ([database.local] min_free)",
        hint=_hint(reclaimable),
    )


def require(room: Room, need: int, what: str, reclaimable: Reclaimable) -> None:
    """Refuse (DiskFullError) when `need` bytes would eat into the reserve."""
    if need > room.usable:
        raise refusal(room, need, what, reclaimable)


def _hint(reclaimable: Reclaimable) -> str:
    return (
        f"{reclaimable.describe()[0].upper()}{reclaimable.describe()[1:]}. Or delete branches "
        "you no longer need (`branchline db branches list`), free space on that filesystem, "
        "or lower `[database.local] min_free` in branchline.toml."
    )


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` (an OSError, a failed tool, a Postgres error) is a full disk."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if getattr(exc, "sqlstate", None) == "53100":  # psycopg's DiskFull
        return True
    text = str(exc) + (exc.hint if isinstance(exc, BranchlineError) else "")
    return any(marker in text for marker in _DISK_FULL_TEXTS)


def disk_full(path: Path, what: str, reclaimable: Reclaimable,
              min_free: SizeSpec | None = None) -> DiskFullError:  # fmt: skip
    """The error for a disk that filled while doing `what`."""
    room = measure(path, min_free)
    return DiskFullError(
        f"the disk filled while trying to {what}: {human_bytes(room.free)} is free on "
        f"{room.path} now (production's WAL keeps {human_bytes(room.reserve)}, "
        "[database.local] min_free); what was half made has been removed",
        hint=_hint(reclaimable),
    )


def walk(path: Path, *, skip: tuple[str, ...] = ()) -> Iterator[os.DirEntry[str]]:
    """Every file and directory under `path` (symlinks not followed), leaving out
    top-level entries in `skip`; what vanishes while walked is passed over (files come
    and go in a live data directory)."""
    try:
        entries = list(os.scandir(path))
    except OSError:
        return
    for entry in entries:
        if entry.name in skip:
            continue
        yield entry
        try:
            below = entry.is_dir(follow_symlinks=False)
        except OSError:
            continue
        if below:
            yield from walk(Path(entry.path))


def tree_size(path: Path, *, skip: tuple[str, ...] = ()) -> int:
    """Bytes allocated under `path` (like `du`), leaving out top-level entries in `skip`."""
    total = 0
    for entry in walk(path, skip=skip):
        try:
            if entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_blocks * 512
        except OSError:
            continue
    return total


def copy_estimate(data_dir: Path, segment: int = WAL_SEGMENT) -> int:
    """What an online copy of the cluster in `data_dir` takes on the disk: its data
    (the parent's WAL history is not copied), the two segments the copy's own pg_wal
    holds once it runs, and the two its checkpoint and switch add to the parent's
    pg_wal (kept for copies: wal_keep_size) and two more to the WAL archive.
    Measured on a 768 MB XFS disk: a spare of a fresh production cost 110-126 MB."""
    return tree_size(data_dir, skip=("pg_wal",)) + 6 * segment


# A clone's own cost per file: an inode and its extent map (XFS: 512-byte inodes, and
# the map fits in it for the few extents a data file has); a block each is generous.
CLONE_FILE_COST = 4096


def clone_estimate(data_dir: Path, segment: int = WAL_SEGMENT) -> int:
    """What a copy-on-write clone (reflink, FICLONE) of the cluster in `data_dir` takes
    on the disk when made: its files share every extent with the parent until one side
    writes, so only their metadata, plus the WAL both sides write around the copy (as
    in copy_estimate: six segments). Later writes un-share extents; they are counted
    as the branch's own bytes (`extents.own_bytes`) like any other growth."""
    return file_count(data_dir) * CLONE_FILE_COST + 6 * segment


def file_count(path: Path) -> int:
    """Files and directories under `path` (each costs an inode in a clone)."""
    return sum(1 for _entry in walk(path))
