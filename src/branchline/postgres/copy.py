"""Copies of a running cluster: online clones, base backups, point-in-time restores.

All of them use `pg_basebackup`, which copies a consistent image of a live
cluster (open transactions, writes in flight) without stopping it. Passwords
travel in PGPASSWORD, never on a command line.
"""

from __future__ import annotations

import json
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
from branchline.postgres import archive_wal, archiver
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


def take_base_backup(cluster: Cluster, dest: Path) -> BaseBackup:
    """A durable base backup of the running `cluster` into `dest` (which must not exist)."""
    dest.mkdir(parents=True)
    cluster.run_as.own(dest)
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
    child.run_tool(["cp", "-a", str(backup.data_dir), str(child.data_dir)], what="copy backup")
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
