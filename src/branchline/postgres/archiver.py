"""The WAL archive of a cluster: the commands Postgres runs, whether archiving is
failing (and why), and what the archive holds (segments, gaps, partial leftovers)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from branchline.errors import PostgresError
from branchline.postgres import archive_wal
from branchline.postgres.cluster import Cluster
from branchline.postgres.runas import RunAs
from branchline.postgres.space import WAL_SEGMENT

SCRIPT = Path(archive_wal.__file__)
SEGMENT_NAME = archive_wal.SEGMENT_NAME
_REASON = re.compile(re.escape(archive_wal.PREFIX) + r" (could not archive .*)")
KEEP_FOR_WAL = 2 * WAL_SEGMENT
_TEMP = re.compile(r"\.[0-9A-Za-z.]+\.\d+\.tmp")


def python(run_as: RunAs) -> str:
    """An interpreter the cluster's user can run: ours when it can (not a virtualenv's
    link to it: archiving must outlive a reinstall), else the system's."""
    candidates = [Path(sys.executable).resolve(), Path(sys.executable),
                  Path("/usr/bin/python3"), Path("/usr/local/bin/python3")]  # fmt: skip
    for candidate in candidates:
        if _runnable(run_as, candidate):
            return str(candidate)
    raise PostgresError(
        f"no Python interpreter that the Postgres user {run_as.name!r} may run was found "
        "for production's WAL archive command",
        hint=f"Install python3 (/usr/bin/python3), or make {sys.executable} and its "
        "directories readable by that user.",
    )


def _runnable(run_as: RunAs, path: Path) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    if not run_as.switches:
        return os.access(path, os.X_OK)
    for each in (path, path.resolve()):
        if run_as.unreachable_ancestor(each) is not None:
            return False
    return bool(st.st_mode & 0o001 or (st.st_uid == run_as.uid and st.st_mode & 0o100))


def install_script(directory: Path) -> Path:
    """A copy of the archive script next to the archives (readable by the cluster's
    user), so the command keeps working whatever happens to branchline's install."""
    target = directory / "archive_wal.py"
    text = SCRIPT.read_bytes()
    try:
        if target.read_bytes() == text:
            return target
    except OSError:
        pass
    directory.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(text)
    tmp.chmod(0o644)
    tmp.replace(target)
    return target


def archive_command(script: Path, archive_dir: Path, run_as: RunAs) -> str:
    """An argument list; Postgres runs it through a shell, so each of our own paths is
    quoted, and %p / %f are file names Postgres makes."""
    args = [python(run_as), "-I", str(script), "archive", str(archive_dir)]
    # Room for production to open its next segments comes before an archived copy.
    return " ".join(shlex.quote(a) for a in args) + f" %p %f {KEEP_FOR_WAL}"


def restore_command(script: Path, archive_dir: Path, segment_size: int, run_as: RunAs) -> str:
    args = [python(run_as), "-I", str(script), "restore", str(archive_dir)]
    head = " ".join(shlex.quote(a) for a in args)
    return f"{head} %f %p {int(segment_size)}"


@dataclass(frozen=True)
class ArchiveStatus:
    """pg_stat_archiver, the segments waiting in pg_wal, and the last reason given."""

    archived_count: int
    last_archived_wal: str | None
    last_archived_time: datetime | None
    failed_count: int
    last_failed_wal: str | None
    last_failed_time: datetime | None
    pending: int  # segments in pg_wal still waiting to be archived
    wal_bytes: int  # the size of pg_wal
    reason: str | None = None

    @property
    def failing(self) -> bool:
        """The last attempt failed (a success since clears it)."""
        if self.last_failed_time is None:
            return False
        return self.last_archived_time is None or self.last_failed_time > self.last_archived_time

    def describe(self) -> str:
        if not self.failing:
            return f"ok (last archived {self.last_archived_wal or 'none yet'})"
        why = f": {self.reason}" if self.reason else ""
        return (
            f"failing since {self.last_failed_time:%Y-%m-%d %H:%M:%S} UTC on segment "
            f"{self.last_failed_wal}{why}; last archived {self.last_archived_wal or 'none'}, "
            f"{self.pending} segment(s) waiting in pg_wal"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "failing": self.failing,
            "archived_count": self.archived_count,
            "last_archived_wal": self.last_archived_wal,
            "last_archived_time": _iso(self.last_archived_time),
            "failed_count": self.failed_count,
            "last_failed_wal": self.last_failed_wal,
            "last_failed_time": _iso(self.last_failed_time),
            "pending_segments": self.pending,
            "wal_bytes": self.wal_bytes,
            "reason": self.reason,
        }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def read_status(cluster: Cluster) -> ArchiveStatus:
    """The archiver's state of a running cluster (superuser queries)."""
    with psycopg.connect(cluster.uri(), autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT archived_count, last_archived_wal, last_archived_time, failed_count, "
            "last_failed_wal, last_failed_time, "
            "(SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%%.ready'), "
            "(SELECT coalesce(sum(size), 0) FROM pg_ls_waldir()) "
            "FROM pg_stat_archiver"
        ).fetchone()
    assert row is not None
    status = ArchiveStatus(int(row[0]), row[1], row[2], int(row[3]), row[4], row[5],
                           int(row[6]), int(row[7]))  # fmt: skip
    if status.failing:
        status = ArchiveStatus(**{**status.__dict__, "reason": failure_reason(cluster)})
    return status


def failure_reason(cluster: Cluster, size: int = 200_000) -> str | None:
    """The last reason the archive script gave in the cluster's log."""
    try:
        with cluster.log_file.open("rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - size))
            tail = fh.read().decode(errors="replace")
    except OSError:
        return None
    found = _REASON.findall(tail)
    if found:
        return str(found[-1]).strip()
    if "archive command failed" in tail:
        return "the archive command failed (see the cluster's log)"
    return None


def new_failure(log: Path, offset: int) -> str | None:
    """A failure of the archive command logged after `offset`: its reason, if any."""
    try:
        with log.open("rb") as fh:
            fh.seek(offset)
            text = fh.read(1_000_000).decode(errors="replace")
    except OSError:
        return None
    found = _REASON.findall(text)
    if found:
        return str(found[-1]).strip()
    for line in text.splitlines():
        if "archive command failed" in line or "archive command was terminated" in line:
            return line.split("] ", 1)[-1].strip()
    return None


def segment_size(cluster: Cluster) -> int:
    try:
        with psycopg.connect(cluster.uri(), autocommit=True, connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT setting::bigint * 1 FROM pg_settings WHERE name = 'wal_segment_size'"
            ).fetchone()
    except psycopg.Error:
        return WAL_SEGMENT
    return int(row[0]) if row else WAL_SEGMENT


# -- segment names ----------------------------------------------------------------


def next_segment(name: str, size: int = WAL_SEGMENT) -> str:
    """The segment after `name` on the same timeline."""
    timeline, log, seg = int(name[:8], 16), int(name[8:16], 16), int(name[16:], 16)
    per_log = 0x100000000 // size
    seg += 1
    if seg >= per_log:
        log, seg = log + 1, 0
    return f"{timeline:08X}{log:08X}{seg:08X}"


def first_problem(
    archive_dir: Path, first: str, last: str, size: int = WAL_SEGMENT
) -> tuple[str, str] | None:
    """The first segment from `first` to `last` (inclusive, one timeline) that the
    archive lacks or holds only partly, and why; None when all are whole."""
    name = first
    while True:
        path = archive_dir / name
        try:
            held = path.stat().st_size
        except FileNotFoundError:
            return name, "it is not in the archive"
        if held != size:
            return name, f"the archive holds only {held} of its {size} bytes (a partial copy)"
        if name >= last:
            return None
        name = next_segment(name, size)


def partial_segments(archive_dir: Path, size: int = WAL_SEGMENT) -> list[tuple[str, int]]:
    """Segments in the archive whose size is not a segment's."""
    found = []
    for path in sorted(archive_dir.glob("*")):
        if SEGMENT_NAME.fullmatch(path.name):
            held = path.stat().st_size
            if held != size:
                found.append((path.name, held))
    return found


WAL_PAGE = 8192  # XLOG_BLCKSZ as built by every packaged Postgres


def recopy(source: Path, archive_dir: Path, size: int, page: int = WAL_PAGE) -> bool:
    """Archive `source` (a segment in pg_wal) again, replacing a partial copy; False
    when pg_wal no longer holds it whole. Every page's header must name its own place
    in this segment: one Postgres recycles while we read is caught, not archived."""
    name = source.name
    dest = archive_dir / name
    try:
        if source.stat().st_size != size:
            return False
    except OSError:
        return False  # recycled or removed: pg_wal no longer holds it
    partial = dest.with_name(f".{name}.partial-before-repair")
    if dest.exists():
        dest.replace(partial)
    try:
        if archive_wal.archive(archive_dir, source, name, KEEP_FOR_WAL) != 0:
            raise OSError(f"cannot copy {source}")
        if not _pages_belong(dest, name, size, page):
            raise OSError(f"{source} was recycled while being copied")
    except OSError:
        dest.unlink(missing_ok=True)
        if partial.exists():
            partial.replace(dest)
        return False
    partial.unlink(missing_ok=True)
    return True


def _pages_belong(path: Path, name: str, size: int, page: int) -> bool:
    """xlp_pageaddr (8 bytes at offset 8 of each page header) is the page's own
    address: segment number * size + offset. Pages after a WAL switch are zeros (a
    recycled file is never zeroed: its old pages keep their old addresses)."""
    segno = int(name[8:16], 16) * (0x100000000 // size) + int(name[16:], 16)
    start = segno * size
    with path.open("rb") as fh:
        for offset in range(0, size, page):
            fh.seek(offset)
            header = fh.read(16)
            if header == bytes(16):
                continue
            if int.from_bytes(header[8:16], "little") != start + offset:
                return False
    return True


def temp_files(archive_dir: Path) -> list[Path]:
    """Temporary files of archive attempts that were killed."""
    return [p for p in archive_dir.glob(".*.tmp") if _TEMP.fullmatch(p.name)]


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
