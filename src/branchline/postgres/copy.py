"""Copies of a running cluster: online copies, base backups, point-in-time restores.

A copy is a consistent image of a live cluster (open transactions, writes in
flight) made without stopping it, in one of two ways: `pg_basebackup`, which
reads every byte over a replication connection (time grows with the data), or,
where the filesystem can clone files, the backup API around copy-on-write clones
of the data directory (`clone_online`: the same fraction of a second at any size).
Passwords travel in PGPASSWORD, never on a command line.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from branchline.errors import PostgresError
from branchline.postgres import archive_wal, archiver, reflink
from branchline.postgres.cluster import Cluster, ClusterMeta, free_port
from branchline.postgres.runas import RunAs
from branchline.postgres.space import WAL_SEGMENT


def basebackup_args(parent: Cluster, target: Path, *, durable: bool) -> list[str]:
    meta = parent.meta()
    return [
        parent.binaries.path("pg_basebackup"),
        "--pgdata",
        str(target),
        "--host",
        "127.0.0.1",
        "--port",
        str(meta.port),
        "--username",
        meta.superuser,
        "--no-password",
        "--wal-method=stream",  # the copy carries the WAL it needs to be consistent
        "--checkpoint=fast",
        "--no-manifest",
        *([] if durable else ["--no-sync"]),
    ]


def password_env(cluster: Cluster) -> dict[str, str]:
    return {"PGPASSWORD": cluster.meta().password, "PGAPPNAME": "branchline"}


def clone(
    parent: Cluster,
    child: Cluster,
    *,
    settings: Mapping[str, str],
    durable: bool = False,
    port: int | None = None,
) -> ClusterMeta:
    """Make `child` (not yet existing) a copy of the running `parent`."""
    if child.data_dir.exists():
        shutil.rmtree(child.data_dir)  # left by a crash during an earlier copy
    child.home.mkdir(parents=True, exist_ok=True)
    child.run_as.own(child.home)
    child.run_tool(
        basebackup_args(parent, child.data_dir, durable=durable),
        what="pg_basebackup",
        env=password_env(parent),
    )
    source = parent.meta()
    # Roles and their passwords come with the data: the copy opens with its parent's
    # until `roles.replace_passwords` gives it its own (once it runs).
    meta = ClusterMeta(source.superuser, source.password, port or free_port(), dict(settings),
                       source.app_user, source.app_password)  # fmt: skip
    child.write_meta(meta)
    return meta


# What a copy of a data directory leaves out (as pg_basebackup does): the server's
# own runtime files, and the contents of directories only a running server fills.
# pg_replslot above all: a copied slot would hold the copy's WAL forever.
_NOT_COPIED = ("pg_wal", "postmaster.pid", "postmaster.opts", "backup_label",
               "tablespace_map", "standby.signal", "recovery.signal")  # fmt: skip
_COPIED_EMPTY = ("pg_replslot", "pg_dynshmem", "pg_notify", "pg_serial", "pg_snapshots",
                 "pg_stat_tmp", "pg_subtrans")  # fmt: skip
_WAL_EMPTY = ("archive_status", "summaries")


@dataclass
class CloneTimes:
    """Where the time of a clone went, in seconds (for benchmarks and the log)."""

    backup_start: float = 0.0  # pg_backup_start: the parent's checkpoint
    files: float = 0.0  # cloning the data files
    backup_stop: float = 0.0  # pg_backup_stop and cloning the WAL
    files_cloned: int = 0


def clone_online(
    parent: Cluster,
    child: Cluster,
    *,
    settings: Mapping[str, str],
    port: int | None = None,
    times: CloneTimes | None = None,
) -> ClusterMeta:
    """Make `child` (not yet existing) a copy of the running `parent` from clones of
    its files, on a filesystem that can clone (see `reflink.can_clone`).

    The backup API makes the copy consistent however the parent is written to
    meanwhile: between pg_backup_start and pg_backup_stop full pages are logged, and
    the copy, started with the returned backup label, replays the WAL from the
    backup's checkpoint past its end before it accepts connections. A temporary
    replication slot keeps that WAL on the parent until the copy has cloned it."""
    if child.data_dir.exists():
        shutil.rmtree(child.data_dir)  # left by a crash during an earlier copy
    child.home.mkdir(parents=True, exist_ok=True)
    child.run_as.own(child.home)
    clone_data(parent, child.data_dir, times=times)
    source = parent.meta()
    # Roles and their passwords come with the data, as with pg_basebackup.
    meta = ClusterMeta(source.superuser, source.password, port or free_port(), dict(settings),
                       source.app_user, source.app_password)  # fmt: skip
    child.write_meta(meta)
    return meta


def clone_data(parent: Cluster, target: Path, *, times: CloneTimes | None = None) -> None:
    """Clone the running `parent`'s data directory into `target` (which must not
    exist) as a consistent backup: its files, its WAL and the backup label."""
    times = times if times is not None else CloneTimes()
    slot = f"branchline_clone_{os.urandom(6).hex()}"
    with psycopg.connect(parent.uri(), autocommit=True, connect_timeout=10) as conn:
        new_api = conn.info.server_version >= 150000
        began = time.monotonic()
        conn.execute("SELECT pg_create_physical_replication_slot(%s, true, true)", (slot,))
        start = "SELECT pg_backup_start(%s, true)" if new_api else \
            "SELECT pg_start_backup(%s, true, false)"  # fmt: skip
        stop = "SELECT labelfile, spcmapfile FROM pg_backup_stop(false)" if new_api else \
            "SELECT labelfile, spcmapfile FROM pg_stop_backup(false, false)"  # fmt: skip
        conn.execute(start, ("branchline clone",))
        times.backup_start = time.monotonic() - began
        began = time.monotonic()
        try:
            times.files_cloned = reflink.clone_tree(
                parent.data_dir, target, skip=_NOT_COPIED, emptied=_COPIED_EMPTY,
                skip_file=("pg_internal.init",),
            )  # fmt: skip
        except BaseException:
            with contextlib.suppress(psycopg.Error):
                conn.execute(stop)  # the parent's backup mode ends with this session anyway
            raise
        times.files = time.monotonic() - began
        began = time.monotonic()
        row = conn.execute(stop).fetchone()
        assert row is not None
        label, tablespace_map = str(row[0]), row[1]
        # Every WAL segment from the backup's checkpoint on, the stop record included
        # (pg_backup_stop switched to a new segment, so it is written out).
        _clone_wal(parent.data_dir / "pg_wal", target / "pg_wal")
        times.backup_stop = time.monotonic() - began
    _write_owned(parent, target / "backup_label", label)
    if tablespace_map:
        _write_owned(parent, target / "tablespace_map", str(tablespace_map))


def _clone_wal(source: Path, target: Path) -> None:
    # The copy archives nothing of its parent's: no .ready/.done markers.
    reflink.clone_tree(source, target, emptied=_WAL_EMPTY)
    for partial in target.glob("xlogtemp.*"):
        partial.unlink(missing_ok=True)


def _write_owned(cluster: Cluster, path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o600)
    cluster.run_as.own(path)


def make_standby(parent: Cluster, child: Cluster, *, settings: Mapping[str, str]) -> None:
    """Make `child` a streaming standby of `parent`: a spare copy that stays current
    and becomes a branch in a fraction of a second when promoted."""
    clone(parent, child, settings=settings)
    source = parent.meta()
    conninfo = make_conninfo(
        host="127.0.0.1",
        port=source.port,
        user=source.superuser,
        password=source.password,  # the same password the copy itself holds
        application_name="branchline-spare",
    )
    child.write_meta(child.meta().with_settings({**settings, "primary_conninfo": conninfo}))
    marker = child.data_dir / "standby.signal"
    marker.touch()
    child.run_as.own(marker)
    child.start()


def promote_standby(
    parent: Cluster, child: Cluster, *, settings: Mapping[str, str], timeout: float = 10.0
) -> None:
    """Let the standby `child` catch up with everything `parent` has written so far,
    then promote it to a writable cluster of its own."""
    with psycopg.connect(parent.uri(), autocommit=True, connect_timeout=5) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    target = str(row[0])
    deadline = time.monotonic() + timeout
    with psycopg.connect(child.uri(), autocommit=True, connect_timeout=5) as conn:
        while True:
            caught_up = conn.execute(
                "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)
            ).fetchone()
            if caught_up is not None and caught_up[0]:
                break
            if time.monotonic() > deadline:
                raise PostgresError(f"the spare copy in {child.home} fell behind its parent")
            time.sleep(0.005)
        promoted = conn.execute("SELECT pg_promote(true, %s)", (int(timeout),)).fetchone()
    if promoted is None or promoted[0] is not True:
        raise PostgresError(f"the spare copy in {child.home} did not promote")
    # No longer a standby: forget the parent's connection for future starts.
    child.write_meta(child.meta().with_settings(settings))
    child.rewrite_managed_conf()


def standby_is_streaming(child: Cluster) -> bool:
    try:
        with psycopg.connect(child.uri(), autocommit=True, connect_timeout=3) as conn:
            row = conn.execute(
                "SELECT pg_is_in_recovery() AND EXISTS "
                "(SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')"
            ).fetchone()
    except psycopg.Error:
        return False
    return row is not None and row[0] is True


@dataclass(frozen=True)
class BaseBackup:
    """A base backup of a cluster: the starting point of a point-in-time restore."""

    path: Path  # holds data/ and backup.json
    start_wal_file: str
    start_time: datetime
    end_time: datetime  # the earliest moment a restore from it can reach

    @property
    def data_dir(self) -> Path:
        return self.path / "data"

    @property
    def size_bytes(self) -> int:
        return directory_size(self.data_dir)

    def as_dict(self) -> dict[str, str]:
        return {
            "path": str(self.path),
            "start_wal_file": self.start_wal_file,
            "start_time": self.start_time.isoformat(),
            "end_time": self.end_time.isoformat(),
        }

    @classmethod
    def load(cls, path: Path) -> BaseBackup:
        raw = json.loads((path / "backup.json").read_text())
        return cls(
            path,
            raw["start_wal_file"],
            datetime.fromisoformat(raw["start_time"]),
            datetime.fromisoformat(raw["end_time"]),
        )


_WAL_FILE = re.compile(r"START WAL LOCATION: \S+ \(file ([0-9A-F]{24})\)")
_START_TIME = re.compile(r"START TIME: (.+)")


def take_base_backup(cluster: Cluster, dest: Path, *, clones: bool = False) -> BaseBackup:
    """A durable base backup of the running `cluster` into `dest` (which must not exist):
    clones of its files where the filesystem can (`clones`: they share their blocks
    with the cluster until it writes), else a pg_basebackup copy."""
    dest.mkdir(parents=True)
    cluster.run_as.own(dest)
    if clones:
        clone_data(cluster, dest / "data")
        _sync_filesystem(dest)
    else:
        cluster.run_tool(
            basebackup_args(cluster, dest / "data", durable=True),
            what="pg_basebackup",
            env=password_env(cluster),
        )
    end_time = _server_now(cluster)
    label = (dest / "data" / "backup_label").read_text()
    wal = _WAL_FILE.search(label)
    started = _START_TIME.search(label)
    if wal is None or started is None:
        raise PostgresError(f"unexpected backup_label in {dest}: {label[:200]!r}")
    start_time = datetime.strptime(started.group(1).strip(), "%Y-%m-%d %H:%M:%S %Z").replace(
        tzinfo=UTC
    )
    backup = BaseBackup(dest, wal.group(1), start_time, end_time)
    (dest / "backup.json").write_text(json.dumps(backup.as_dict()))
    return backup


def _sync_filesystem(path: Path) -> None:
    """Make what was written under `path` durable: one syncfs of its filesystem (a
    clone's blocks are already on the disk; its metadata may not be)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        _syncfs(fd)
    finally:
        os.close(fd)


def _syncfs(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def archive_settings(archive_dir: Path, run_as: RunAs) -> dict[str, str]:
    """WAL archiving into `archive_dir`: what makes point-in-time restore possible.
    Each segment is written atomically by branchline's archive script (see
    `archive_wal`), which lives next to the archive."""
    script = archiver.install_script(archive_dir.parent)
    return {
        "wal_level": "replica",
        "archive_mode": "on",
        "archive_command": archiver.archive_command(script, archive_dir, run_as),
        "archive_timeout": "60s",
    }


def restore_to_time(
    backup: BaseBackup,
    child: Cluster,
    *,
    archive_dir: Path,
    target: datetime,
    settings: Mapping[str, str],
    superuser: str,
    password: str,
    app_user: str | None = None,
    timeout: float = 120.0,
    segment_size: int = WAL_SEGMENT,
) -> ClusterMeta:
    """Start `child` from `backup` plus archived WAL replayed up to exactly `target`."""
    if child.data_dir.exists():
        shutil.rmtree(child.data_dir)
    child.home.mkdir(parents=True, exist_ok=True)
    child.run_as.own(child.home)
    # A clone where the filesystem can (a restore of any size in a moment), else a copy.
    child.run_tool(["cp", "-a", "--reflink=auto", str(backup.data_dir), str(child.data_dir)],
                   what="copy backup")  # fmt: skip
    signal_file = child.data_dir / "recovery.signal"
    signal_file.touch()
    child.run_as.own(signal_file)
    recovery = {
        "restore_command": archiver.restore_command(
            archiver.install_script(archive_dir.parent), archive_dir, segment_size, child.run_as
        ),
        "recovery_target_time": target.astimezone(UTC).isoformat(sep=" "),
        "recovery_target_action": "promote",
    }
    meta = ClusterMeta(superuser, password, free_port(), {**settings, **recovery}, app_user)
    child.write_meta(meta)
    meta = child.start(timeout=timeout)
    _wait_promoted(child, timeout)
    # Recovery is over (recovery.signal is gone); keep the settings clean for restarts.
    final = meta.with_settings(settings)
    child.write_meta(final)
    return final


def _wait_promoted(cluster: Cluster, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cluster.postmaster_pid() is None:
            break
        try:
            with psycopg.connect(cluster.uri(), connect_timeout=5) as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            if row is not None and row[0] is False:
                return
        except psycopg.OperationalError:
            pass
        time.sleep(0.05)
    raise PostgresError(
        f"point-in-time recovery in {cluster.home} did not finish{_recovery_failure(cluster)}",
        hint="The target may lie beyond the archived WAL: `branchline status` shows the "
        "archive; take a base backup (`branchline db backup`) to restore later moments.",
    )


def _recovery_failure(cluster: Cluster) -> str:
    """Why recovery stopped, from the cluster's log: the archive script's last word
    about a segment, and Postgres' FATAL line."""
    try:
        lines = cluster.log_file.read_text(errors="replace").splitlines()[-200:]
    except OSError:
        return ""
    said = [line for line in lines if line.startswith(archive_wal.PREFIX)]
    fatal = [line.split("FATAL:", 1)[1].strip() for line in lines if "FATAL:" in line]
    parts = [*(said[-1:]), *(fatal[-1:])]
    return (": " + "; ".join(parts)) if parts else ""


def _server_now(cluster: Cluster) -> datetime:
    with psycopg.connect(cluster.uri()) as conn:
        row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    value = row[0]
    assert isinstance(value, datetime)
    return value


def directory_size(path: Path) -> int:
    """Bytes on disk under `path` (allocated blocks, like `du`)."""
    total = 0
    for entry in path.rglob("*"):
        try:
            if entry.is_file() and not entry.is_symlink():
                total += entry.stat().st_blocks * 512
        except OSError:
            continue  # files come and go in a live data directory
    return total
