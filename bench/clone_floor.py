"""Helpers of `bench/branch_create.py`: a loop-mounted reflink XFS to branch on, a
steady writer on the parent, pgbench data, and the raw floors of a branch (the steps
a branch is made of, done by hand, with no store and no provider around them).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from branchline.postgres import Cluster
from branchline.postgres.cluster import free_port
from branchline.postgres.copy import basebackup_args, password_env

MB = 1024 * 1024
# pg_database_size of a pgbench database: about 7.5 MB of catalog and 15 MB per scale
# step (100,000 accounts), measured with `pgbench -i -I dtGvp`, Postgres 15.
PGBENCH_BASE_MB = 7.5
PGBENCH_MB_PER_SCALE = 14.95
# The clone's own server: off the parent's port, socket and WAL archive.
COPY_SETTINGS = {
    "fsync": "off",
    "archive_mode": "off",
    "listen_addresses": "127.0.0.1",
    "log_line_prefix": "%m [%p] ",
    "log_timezone": "UTC",
}


# -- the filesystem ------------------------------------------------------------


@dataclass(frozen=True)
class Xfs:
    image: Path
    mount: Path


def mount_xfs(work: Path, size_gb: int) -> Xfs | str:
    """A sparse image formatted as XFS with reflink, loop-mounted under `work`; or
    why none can be made here."""
    if os.geteuid() != 0:
        return "not-root"
    mkfs = shutil.which("mkfs.xfs", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if mkfs is None:
        return "no-mkfs.xfs"
    if shutil.disk_usage(work).free < size_gb * 1024 * MB:
        return f"under-{size_gb}GB-free-for-its-image"  # sparse, but a run may fill it
    image, mount = work / "xfs.img", work / "xfs"
    with image.open("wb") as fh:
        fh.truncate(size_gb * 1024 * MB)
    done = subprocess.run([mkfs, "-q", "-m", "reflink=1", str(image)], capture_output=True,
                          text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        image.unlink()
        return "mkfs.xfs-failed"
    mount.mkdir()
    done = subprocess.run(["mount", "-o", "loop", str(image), str(mount)], capture_output=True,
                          text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        mount.rmdir()
        image.unlink()
        return "mount-failed"
    mount.chmod(0o755)
    return Xfs(image, mount)


def unmount_xfs(xfs: Xfs) -> str | None:
    """Unmount and remove the image; what went wrong, if anything."""
    problem = None
    for args in (["umount", str(xfs.mount)], ["umount", "-l", str(xfs.mount)]):
        if subprocess.run(args, capture_output=True, check=False).returncode == 0:
            break
        problem = "busy: lazily unmounted"
        time.sleep(1)
    else:
        problem = "could not unmount"
    with contextlib.suppress(OSError):
        xfs.mount.rmdir()
    xfs.image.unlink(missing_ok=True)
    return problem


# -- data and load --------------------------------------------------------------


def pgbench_scale(size_mb: int) -> int:
    return max(1, round((size_mb - PGBENCH_BASE_MB) / PGBENCH_MB_PER_SCALE))


def _pgbench(cluster: Cluster) -> list[str]:
    meta = cluster.meta()
    return [cluster.binaries.path("pgbench"), "-h", "127.0.0.1", "-p", str(meta.port),
            "-U", meta.superuser]  # fmt: skip


def fill(cluster: Cluster, database: str, size_mb: int) -> int:
    """`pgbench -i` at the scale that makes about `size_mb`; pg_database_size after."""
    cluster.run_tool(
        [
            *_pgbench(cluster),
            "-i",
            "-q",
            "-s",
            str(pgbench_scale(size_mb)),
            "--init-steps=dtGvp",
            database,
        ],
        what="pgbench -i",
        env=password_env(cluster),
    )
    with psycopg.connect(cluster.uri(database), autocommit=True) as conn:
        conn.execute("CHECKPOINT")
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    assert row is not None
    return int(row[0])


class Writer:
    """pgbench's TPC-B-like transactions (3 UPDATEs and an INSERT each), one client
    without pause, against the parent while a branch is made. `tps` is what it
    committed while it ran."""

    def __init__(self, cluster: Cluster, database: str, log: Path) -> None:
        self.cluster, self.database, self.log = cluster, database, log
        self.process: subprocess.Popen[bytes] | None = None
        self.tps = 0.0
        self._began = 0.0
        self._commits = 0

    def _commit_count(self) -> int:
        with psycopg.connect(self.cluster.uri(self.database), autocommit=True) as conn:
            conn.execute("SELECT pg_stat_force_next_flush()")
            row = conn.execute(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
            ).fetchone()
        assert row is not None
        return int(row[0])

    def __enter__(self) -> Writer:
        run_as = self.cluster.run_as
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    *_pgbench(self.cluster),
                    "-n",
                    "-c",
                    "1",
                    "-T",
                    "86400",
                    "-b",
                    "tpcb-like",
                    self.database,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**_clean_env(), **password_env(self.cluster)},
                user=run_as.uid,
                group=run_as.gid,
                extra_groups=run_as.extra_groups,
            )
        time.sleep(1.0)  # under way before anything is timed
        if self.process.poll() is not None:
            raise RuntimeError(f"the writer exited at once; see {self.log}")
        self._began, self._commits = time.perf_counter(), self._commit_count()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        alive = self.process.poll() is None
        if alive and exc[0] is None:
            elapsed = time.perf_counter() - self._began
            self.tps = (self._commit_count() - self._commits) / elapsed
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if not alive and exc[0] is None:
            raise RuntimeError(f"the writer died while it was needed; see {self.log}")


# -- raw floors -------------------------------------------------------------------


def as_user(cluster: Cluster, args: list[str]) -> subprocess.CompletedProcess[str]:
    run_as = cluster.run_as
    return subprocess.run(args, capture_output=True, text=True, check=False, user=run_as.uid,
                          group=run_as.gid, extra_groups=run_as.extra_groups)  # fmt: skip


def _checked(done: subprocess.CompletedProcess[str], what: str) -> None:
    """A failed copy fails the bench, except for files that went away while they were
    copied (a live cluster removes old pg_xact or stats files; the WAL replay of the
    copy does not need them)."""
    if done.returncode == 0:
        return
    real = [line for line in done.stderr.splitlines() if "No such file or directory" not in line]
    if real:
        raise RuntimeError(f"{what} failed: {done.stderr[-800:]}")


def raw_copy(cluster: Cluster, dest: Path) -> float:
    """`cp -a` (no reflink: a real copy) of base/ and global/ after a CHECKPOINT, then
    `sync`: what copying the parent's data costs on this disk."""
    with psycopg.connect(cluster.uri(), autocommit=True) as conn:
        conn.execute("CHECKPOINT")
    subprocess.run(["sync"], check=True)  # nothing of earlier work left to flush
    dest.mkdir()
    cluster.run_as.own(dest)
    try:
        began = time.perf_counter()
        src = cluster.data_dir
        _checked(as_user(cluster, ["cp", "-a", "--reflink=never", str(src / "base"),
                                   str(src / "global"), str(dest)]), "cp -a")  # fmt: skip
        subprocess.run(["sync"], check=True)
        return time.perf_counter() - began
    finally:
        shutil.rmtree(dest)


def raw_basebackup(cluster: Cluster, dest: Path) -> float:
    """The copy method's floor, as the clone's is: `pg_basebackup` as branchline calls
    it, then the copy started with `postgres -D` until `SELECT 1` answers."""
    dest.mkdir()
    cluster.run_as.own(dest)
    process: subprocess.Popen[bytes] | None = None
    try:
        began = time.perf_counter()
        cluster.run_tool(
            basebackup_args(cluster, dest / "data", durable=False),
            what="pg_basebackup",
            env=password_env(cluster),
        )
        process = _start_copy(cluster, dest)
        _wait_answers(process, dest, cluster)
        return time.perf_counter() - began
    finally:
        _stop_copy(process)
        Cluster(dest).destroy()


@dataclass
class ClonePhases:
    """Where the time of one clone goes, in seconds. The four from start-up on come
    from the copy's log (millisecond stamps) and are 0 when a line is missing."""

    backup_start: float = 0.0  # pg_backup_start(fast): the checkpoint (a restartpoint on a standby)
    files: float = 0.0  # reflink copy of the data directory but pg_wal
    backup_stop: float = 0.0  # pg_backup_stop
    wal: float = 0.0  # reflink copy of pg_wal (and pg_control, from a standby), backup_label
    startup: float = 0.0  # the server's first log line .. redo starts
    replay: float = 0.0  # redo starts .. redo done (to the end of the backup and the WAL)
    end_recovery: float = 0.0  # redo done .. ready (the end-of-recovery checkpoint)
    # ready .. SELECT 1 answered (create_branch: waiting for ready, the branch's own
    # passwords, its store row, then the SELECT)
    after_ready: float = 0.0
    total: float = 0.0
    own: dict[str, float] = field(default_factory=dict)  # create_branch's own steps

    @property
    def before_server(self) -> float:
        """Everything before the copy's server logs its first line (by hand: the first
        four phases and spawning it)."""
        return self.total - self.startup - self.replay - self.end_recovery - self.after_ready


def _log_times(log: Path) -> dict[str, float]:
    """Unix times of the start-up milestones in a log written with '%m' prefixes."""
    marks = {"starting PostgreSQL": "start", "redo starts at": "redo",
             "redo done at": "done", "ready to accept connections": "ready"}  # fmt: skip
    found: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in log.read_text(errors="replace").splitlines():
            for text, key in marks.items():
                if text in line and key not in found:
                    stamp = " ".join(line.split()[:2])
                    with contextlib.suppress(ValueError):
                        when = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f")
                        found[key] = when.replace(tzinfo=UTC).timestamp()
    return found


def log_phases(log: Path, answered: float, into: ClonePhases) -> None:
    """Split the server's life until `SELECT 1` answered (a Unix time) by the
    milestones of its log; from its first line on, so that a server a provider
    spawned (at a moment not known here) is split as one spawned here."""
    marks = _log_times(log)
    start = marks.get("start", answered)
    redo = marks.get("redo", start)
    done = marks.get("done", redo)
    ready = marks.get("ready", answered)
    into.startup = max(0.0, redo - start)
    into.replay = max(0.0, done - redo)
    into.end_recovery = max(0.0, ready - done)
    into.after_ready = max(0.0, answered - ready)


def _clone_tree(cluster: Cluster, src: Path, dest: Path, names: list[str], what: str) -> None:
    if names:
        args = ["cp", "-a", "--reflink=always", *(str(src / n) for n in names), str(dest)]
        _checked(as_user(cluster, args), what)


def raw_clone(source: Cluster, dest: Path, *, from_standby: bool) -> ClonePhases:
    """A clone branch made by hand from the running `source` (the parent, or a
    streaming standby of it): pg_backup_start; reflink copy of the data directory
    but pg_wal, postmaster.pid and postmaster.opts (and standby.signal: the copy is a
    primary); pg_backup_stop; reflink copy of pg_wal (from a standby pg_control
    too, last: its minimum recovery point is where that backup ends); backup_label;
    `postgres -D` on a port of its own with fsync=off, until `SELECT 1` answers
    (as the superuser the copy carries). The copy is stopped and removed before
    returning."""
    src, data = source.data_dir, dest / "data"
    skip = {"pg_wal", "postmaster.pid", "postmaster.opts", "standby.signal"}
    last = ["global/pg_control"] if from_standby else []
    dest.mkdir()
    source.run_as.own(dest)
    data.mkdir(mode=0o700)
    source.run_as.own(data)
    phases = ClonePhases()
    process: subprocess.Popen[bytes] | None = None
    try:
        began = time.perf_counter()
        with psycopg.connect(source.uri(), autocommit=True) as conn:
            conn.execute("SELECT pg_backup_start('branchline-bench', true)")
            t1 = time.perf_counter()
            names = sorted({p.name for p in src.iterdir()} - skip)
            _clone_tree(source, src, data, names, "reflink copy of the data directory")
            if last:
                (data / last[0]).unlink()
            t2 = time.perf_counter()
            row = conn.execute(
                "SELECT labelfile, spcmapfile FROM pg_backup_stop(wait_for_archive => false)"
            ).fetchone()
            t3 = time.perf_counter()
        assert row is not None
        _clone_tree(source, src, data, ["pg_wal"], "reflink copy of pg_wal")
        if last:
            _clone_tree(source, src, data / "global", last, "copy of pg_control")
        for name, text in (("backup_label", row[0]), ("tablespace_map", row[1])):
            if text:
                (data / name).write_text(text)
                source.run_as.own(data / name)
        t4 = time.perf_counter()
        process = _start_copy(source, dest)
        _wait_answers(process, dest, source)
        answered = time.time()
        t5 = time.perf_counter()
        phases.backup_start, phases.files, phases.backup_stop = t1 - began, t2 - t1, t3 - t2
        phases.wal, phases.total = t4 - t3, t5 - began
        log_phases(dest / "postgres.log", answered, phases)
        return phases
    finally:
        _stop_copy(process)
        Cluster(dest).destroy()  # anything of it still running, and its files


def _stop_copy(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGQUIT)  # immediate: the copy is thrown away
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _start_copy(source: Cluster, dest: Path) -> subprocess.Popen[bytes]:
    sockets = dest / "s"
    sockets.mkdir(mode=0o700)
    source.run_as.own(sockets)
    settings = {**COPY_SETTINGS, "port": str(free_port()), "unix_socket_directories": str(sockets)}
    args = [source.binaries.path("postgres"), "-D", str(dest / "data")]
    for key, value in settings.items():
        args += ["-c", f"{key}={value}"]
    run_as = source.run_as
    with (dest / "postgres.log").open("ab") as log:
        process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=_clean_env(),
            user=run_as.uid, group=run_as.gid, extra_groups=run_as.extra_groups,
        )  # fmt: skip
    (dest / "port").write_text(settings["port"])
    return process


def _wait_answers(process: subprocess.Popen[bytes], dest: Path, source: Cluster,
                  timeout: float = 300.0) -> None:  # fmt: skip
    """Until the copy's postmaster says ready (postmaster.pid) and answers SELECT 1,
    as a primary (a copy of a standby too: it ended recovery)."""
    port = (dest / "port").read_text()
    pidfile = dest / "data" / "postmaster.pid"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = (dest / "postgres.log").read_text(errors="replace")[-800:]
            raise RuntimeError(f"the clone exited during start-up: {tail}")
        with contextlib.suppress(OSError):
            lines = pidfile.read_text().splitlines()
            if len(lines) >= 8 and lines[7].strip() == "ready":
                meta = source.meta()  # the copy holds the same roles and passwords
                with psycopg.connect(host="127.0.0.1", port=port, user=meta.superuser,
                                     password=meta.password, dbname="postgres",
                                     connect_timeout=10) as conn:  # fmt: skip
                    row = conn.execute("SELECT 1, pg_is_in_recovery()").fetchone()
                if row is None or row[1]:
                    raise RuntimeError(f"the clone in {dest} opened still in recovery")
                return
        time.sleep(0.002)
    raise RuntimeError(f"the clone in {dest} did not open within {timeout:.0f} s")


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}
