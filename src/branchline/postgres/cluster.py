"""One Postgres cluster in a directory of its own: initdb, start, stop, status.

A cluster home holds `data/` (PGDATA), `cluster.json` (superuser, password,
port; mode 0600) and `postgres.log`. The server is started directly, never
through a shell (pg_ctl builds a shell command line from paths), listens on
127.0.0.1 on a free port, and keeps its socket in a private short directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from urllib.parse import quote

from branchline import processes
from branchline.errors import PostgresError
from branchline.postgres.binaries import PgBinaries, find_binaries
from branchline.postgres.runas import RunAs, current_run_as

SUPERUSER = "branchline"
MANAGED_CONF = "branchline.conf"
SOCKET_FILE = "socket-dir"
START_ATTEMPTS = 5  # a free port can be taken between choosing and binding it

# Throw-away clusters (tests, previews) trade crash safety for speed.
FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


class ClusterState(Enum):
    MISSING = "missing"  # no data directory
    STOPPED = "stopped"  # initialised, no live postmaster
    RUNNING = "running"  # postmaster up and accepting connections


@dataclass(frozen=True)
class ClusterMeta:
    """What branchline knows of a cluster; the settings are applied at every start."""

    superuser: str
    password: str  # new and random per cluster: never the parent's, never handed out
    port: int
    settings: Mapping[str, str] = field(default_factory=dict)
    # The application role: what apps, tests and migrations connect as. Not a
    # superuser; owns the app database; its password is the cluster's own too.
    app_user: str | None = None
    app_password: str | None = None

    def with_port(self, port: int) -> ClusterMeta:
        return replace(self, port=port)

    def with_settings(self, settings: Mapping[str, str]) -> ClusterMeta:
        return replace(self, settings=dict(settings))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As Postgres binds: a port whose old connections linger in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


_SETTING_NAME = re.compile(r"[a-z_][a-z0-9_.]*")


def _conf_value(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _conf_line(name: str, value: str) -> str:
    if not _SETTING_NAME.fullmatch(name):
        raise PostgresError(f"invalid Postgres setting name {name!r}")
    return f"{name} = {_conf_value(value)}"


class Cluster:
    """A Postgres cluster rooted at `home`. Construction does no I/O."""

    def __init__(
        self,
        home: Path,
        *,
        binaries: PgBinaries | None = None,
        run_as: RunAs | None = None,
    ) -> None:
        self.home = Path(home).absolute()
        self._binaries = binaries
        self._run_as = run_as

    # -- layout -----------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def log_file(self) -> Path:
        return self.home / "postgres.log"

    @property
    def meta_file(self) -> Path:
        return self.home / "cluster.json"

    @property
    def socket_dir(self) -> Path:
        # Unix socket paths are limited to ~107 bytes, so not under `home`. The
        # choice is remembered in `home`, so a home renamed while its server runs
        # (a spare adopted as a branch) still knows where its socket is.
        try:
            return Path((self.home / SOCKET_FILE).read_text().strip())
        except OSError:
            digest = hashlib.sha256(str(self.home).encode()).hexdigest()[:16]
            return Path(tempfile.gettempdir()) / f"branchline-pg-{digest}"

    @property
    def binaries(self) -> PgBinaries:
        if self._binaries is None:
            self._binaries = find_binaries()
        return self._binaries

    @property
    def run_as(self) -> RunAs:
        if self._run_as is None:
            self._run_as = current_run_as()
        return self._run_as

    # -- state ------------------------------------------------------------

    def exists(self) -> bool:
        # PG_VERSION appears early in initdb: a crash during it leaves the marker too.
        return (self.data_dir / "PG_VERSION").exists() and not self._initializing.exists()

    @property
    def _initializing(self) -> Path:
        return self.home / ".initializing"

    def meta(self) -> ClusterMeta:
        try:
            raw = json.loads(self.meta_file.read_text())
            settings = {str(k): str(v) for k, v in raw.get("settings", {}).items()}
            return ClusterMeta(
                raw["superuser"], raw["password"], int(raw["port"]), settings,
                raw.get("app_user"), raw.get("app_password"),
            )  # fmt: skip
        except (OSError, ValueError, KeyError) as exc:
            raise PostgresError(
                f"cluster metadata {self.meta_file} is unreadable: {exc}",
                hint="If the cluster is disposable, delete its directory and start again.",
            ) from exc

    def write_meta(self, meta: ClusterMeta) -> None:
        """Replace the metadata atomically: a crash never leaves half a file."""
        self.home.mkdir(parents=True, exist_ok=True)
        tmp = self.meta_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(
                {
                    "superuser": meta.superuser,
                    "password": meta.password,
                    "port": meta.port,
                    "settings": dict(meta.settings),
                    "app_user": meta.app_user,
                    "app_password": meta.app_password,
                },
                fh,
            )
        tmp.replace(self.meta_file)

    def postmaster_pid(self) -> int | None:
        """The live postmaster's pid, or None."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            pid = int(lines[0])
        except (OSError, ValueError, IndexError):
            return None
        # After a reboot the stale file's pid may belong to another process: only a
        # postgres started with this data directory counts.
        return pid if process_alive(pid) and _is_our_postmaster(pid, self.data_dir) else None

    def _ready(self) -> bool:
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        # Line 8 of postmaster.pid is the postmaster status (Postgres 10+).
        return len(lines) >= 8 and lines[7].strip() == "ready"

    def state(self) -> ClusterState:
        if not self.exists():
            return ClusterState.MISSING
        if self.postmaster_pid() is not None and self._ready():
            return ClusterState.RUNNING
        return ClusterState.STOPPED

    # -- lifecycle --------------------------------------------------------

    def init(
        self,
        *,
        settings: Mapping[str, str] | None = None,
        durable: bool = True,
    ) -> None:
        """Create the cluster (initdb). Idempotent: an existing cluster is left as it is."""
        if self.exists():
            return
        if self.data_dir.exists():
            # A crash during an earlier initdb: start over.
            shutil.rmtree(self.data_dir)
        self.home.mkdir(parents=True, exist_ok=True)
        self.run_as.check_reachable(self.home)
        self.run_as.own(self.home)
        extra = dict(settings or {})
        if not durable:
            extra = {**FAST_SETTINGS, **extra}
        meta = ClusterMeta(SUPERUSER, secrets.token_urlsafe(24), free_port(), extra)
        self._initializing.touch()
        pwfile = self.home / ".initdb-password"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(meta.password + "\n")
        self.run_as.own(pwfile)
        try:
            self.run_tool(
                [
                    self.binaries.path("initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    meta.superuser,
                    f"--pwfile={pwfile}",
                    "--auth-host=scram-sha-256",
                    # No `trust` anywhere: a password over the socket too (its
                    # directory is private to the cluster's user besides).
                    "--auth-local=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    *([] if durable else ["--no-sync"]),
                ],
                what="initdb",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(f"\n# Written by branchline.\ninclude_if_exists = '{MANAGED_CONF}'\n")
        self.write_meta(meta)
        self._initializing.unlink()  # complete: data, settings and metadata all written

    def start(self, *, timeout: float = 30.0) -> ClusterMeta:
        """Start the cluster if it is not running; return its connection facts."""
        self._require_exists()
        if self.state() is ClusterState.RUNNING:
            return self.meta()
        # One starter at a time, across threads and processes: two postmasters
        # racing for one data directory would make one of them fail.
        with self._start_lock():
            return self._start_locked(timeout)

    def _require_exists(self) -> None:
        if not self.exists():
            raise PostgresError(
                f"no cluster in {self.home}",
                hint="Create it first (`branchline db init` or `db branches create`), "
                "or clean up what is left of it with `branchline db gc`.",
            )

    def _start_locked(self, timeout: float) -> ClusterMeta:
        self._require_exists()  # destroyed while this start waited for the lock
        if self.state() is ClusterState.RUNNING:
            return self.meta()
        self._reap_dead_postmaster()
        if self.postmaster_pid() is not None:
            # Starting up or shutting down: wait for it to settle.
            self._wait_ready(timeout, process=None)
            return self.meta()
        self._prepare_socket_dir()
        self._no_trust()
        meta = self.meta()
        attempt = 0
        settle_until = time.monotonic() + timeout
        while attempt < START_ATTEMPTS:
            if attempt > 0 or not port_is_free(meta.port):
                meta = meta.with_port(free_port())
                self.write_meta(meta)
            self._write_managed_conf(meta)
            offset = self._log_size()
            process = self._spawn_postmaster()
            try:
                self._wait_ready(timeout, process=process, log_offset=offset)
                return meta
            except _PortTakenError:
                attempt += 1
            except _OldProcessesError:
                # A killed postmaster's children still hold its shared memory for a
                # moment after it died; they exit on their own.
                if time.monotonic() > settle_until:
                    raise PostgresError(
                        f"old server processes of {self.home} still hold its shared memory",
                        hint="Stop them (they belong to the cluster's user), then retry.",
                    ) from None
                time.sleep(0.2)
        raise PostgresError(
            f"the cluster in {self.home} found no free port after {START_ATTEMPTS} tries",
            hint=f"See {self.log_file}.",
        )

    @contextlib.contextmanager
    def _start_lock(self) -> Iterator[None]:
        try:
            fh = (self.home / "start.lock").open("a")
        except FileNotFoundError:
            self._require_exists()  # destroyed meanwhile: say so clearly
            raise
        with fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def stop(self, *, timeout: float = 30.0) -> None:
        """Fast shutdown; escalates to immediate, then SIGKILL. No-op when not running."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            if _wait_gone(pid, wait):
                self._remove_socket_dir()
                return
        raise PostgresError(f"postmaster {pid} of {self.home} did not stop")

    def _remove_socket_dir(self) -> None:
        """A stopped server's socket directory goes (a start makes a fresh one): a
        machine that starts and stops many clusters keeps no trail in its TMPDIR."""
        path = self.socket_dir
        if path.name.startswith("branchline-pg-") and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)

    def destroy(self) -> None:
        """Stop and remove everything the cluster owns. No-op when already gone.
        A home that is a link (an adopted spare) goes with the directory it names."""
        if self.home.is_dir():
            # A start under way in another thread or process ends first, so that its
            # postmaster is seen and stopped, not left running with its files gone;
            # the files go under the lock too, so that a start waiting on it finds
            # the cluster gone rather than half removed.
            with self._start_lock():
                self._stop_every_postmaster()
                self._remove_files()
        else:
            self._stop_every_postmaster()
            self._remove_files()

    def _stop_every_postmaster(self) -> None:
        """Stop the recorded postmaster, then any other still running on the data
        directory: one whose starter was killed before it wrote postmaster.pid is
        known only by its arguments."""
        self.stop()
        names = {str(self.data_dir), str(self.data_dir.resolve())}  # a spare's link too
        strays = {p for name in names for p in processes.running_with_arguments("postgres", name)}
        for pid in strays:
            for sig, wait in ((signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                if _wait_gone(pid, wait):
                    break

    def _remove_files(self) -> None:
        socket_dir = self.socket_dir
        if self.home.is_symlink():
            target = self.home.resolve()
            self.home.unlink()
            shutil.rmtree(target, ignore_errors=True)
        else:
            shutil.rmtree(self.home, ignore_errors=True)
        shutil.rmtree(socket_dir, ignore_errors=True)

    # -- connections ------------------------------------------------------

    def uri(self, dbname: str = "postgres") -> str:
        """The superuser's URI: for branchline's own work on the cluster only."""
        meta = self.meta()
        return (
            f"postgresql://{quote(meta.superuser, safe='')}:{quote(meta.password, safe='')}"
            f"@127.0.0.1:{meta.port}/{quote(dbname, safe='')}"
        )

    def app_uri(self, dbname: str) -> str:
        """The application role's URI: what apps, tests and migrations are given."""
        meta = self.meta()
        if meta.app_user is None or meta.app_password is None:
            raise PostgresError(
                f"the cluster in {self.home} has no application role yet",
                hint="Its branch is being made; try again in a moment.",
            )
        return (
            f"postgresql://{quote(meta.app_user, safe='')}:{quote(meta.app_password, safe='')}"
            f"@127.0.0.1:{meta.port}/{quote(dbname, safe='')}"
        )

    # -- internals --------------------------------------------------------

    def _prepare_socket_dir(self) -> None:
        """A private directory for the socket. One that is not ours (another user made
        it first, or a symlink planted there) is never used: a fresh one is made."""
        path = self.socket_dir
        owner = self.run_as.uid if self.run_as.uid is not None else os.getuid()
        try:
            st = os.lstat(path)
            ours = stat.S_ISDIR(st.st_mode) and st.st_uid in (owner, os.getuid())
        except FileNotFoundError:
            ours = False
        if not ours:
            path = Path(tempfile.mkdtemp(prefix="branchline-pg-"))
        path.chmod(0o700)
        self.run_as.own(path)
        (self.home / SOCKET_FILE).write_text(str(path))

    def _no_trust(self) -> None:
        """Clusters made before every login needed a password let local connections in
        with `trust`: they ask for the password from now on."""
        hba = self.data_dir / "pg_hba.conf"
        try:
            text = hba.read_text()
        except OSError:
            return
        lines = text.splitlines()
        hardened = [
            re.sub(r"\btrust\s*$", "scram-sha-256", line) if not line.lstrip().startswith("#")
            else line
            for line in lines
        ]  # fmt: skip
        if hardened != lines:
            hba.write_text("\n".join(hardened) + "\n")
            self.run_as.own(hba)

    def rewrite_managed_conf(self) -> None:
        """Bring the settings file in line with the metadata (read at the next start)."""
        self._write_managed_conf(self.meta())

    def _write_managed_conf(self, meta: ClusterMeta) -> None:
        lines = [
            "# Managed by branchline; rewritten at every start.",
            "listen_addresses = '127.0.0.1'",
            "log_timezone = 'UTC'",  # backup_label times are parsed as UTC
            f"port = {meta.port}",
            f"unix_socket_directories = {_conf_value(str(self.socket_dir))}",
            *(_conf_line(key, value) for key, value in meta.settings.items()),
        ]
        conf = self.data_dir / MANAGED_CONF
        conf.write_text("\n".join(lines) + "\n")
        self.run_as.own(conf)

    def _spawn_postmaster(self) -> subprocess.Popen[bytes]:
        log = self.log_file.open("ab")
        try:
            return subprocess.Popen(
                [self.binaries.path("postgres"), "-D", str(self.data_dir)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives branchline; not killed by ^C
                env=_clean_env(),
                user=self.run_as.uid,
                group=self.run_as.gid,
                extra_groups=self.run_as.extra_groups,
            )
        finally:
            log.close()

    def _reap_dead_postmaster(self) -> None:
        """A postmaster that died as our child stays a zombie until reaped, and Postgres
        takes a zombie's pid in postmaster.pid for a running server."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)

    def _log_size(self) -> int:
        try:
            return self.log_file.stat().st_size
        except OSError:
            return 0

    def _wait_ready(
        self, timeout: float, process: subprocess.Popen[bytes] | None, log_offset: int = 0
    ) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.005
        while time.monotonic() < deadline:
            if self._ready() and self.postmaster_pid() is not None:
                return
            if process is not None and process.poll() is not None:
                tail = self._log_tail(since=log_offset)  # only this start's lines
                if "could not bind" in tail or "Address already in use" in tail:
                    raise _PortTakenError()
                if "pre-existing shared memory block" in tail or (
                    'lock file "postmaster.pid" already exists' in tail
                ):
                    raise _OldProcessesError()
                raise PostgresError(
                    f"Postgres in {self.home} exited during start-up (code {process.returncode})",
                    hint=f"Its log ends with: {tail[-500:].strip() or '(empty)'}",
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        raise PostgresError(
            f"Postgres in {self.home} was not ready within {timeout:.0f} s",
            hint=f"See {self.log_file}.",
        )

    def _log_tail(self, size: int = 4000, since: int = 0) -> str:
        try:
            with self.log_file.open("rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(since, fh.tell() - size))
                return fh.read().decode(errors="replace")
        except OSError:
            return ""

    def run_tool(self, args: list[str], *, what: str, env: Mapping[str, str] | None = None) -> None:
        """Run a Postgres tool as the cluster's user; a failure raises with its output."""
        result = subprocess.run(
            args,
            capture_output=True,
            text=True,
            check=False,
            env={**_clean_env(), **(env or {})},
            cwd=self.home,
            user=self.run_as.uid,
            group=self.run_as.gid,
            extra_groups=self.run_as.extra_groups,
        )
        if result.returncode != 0:
            raise PostgresError(
                f"{what} failed for {self.home} (exit {result.returncode})",
                hint=(result.stderr or result.stdout).strip()[-800:] or "no output",
            )


class _PortTakenError(Exception):
    pass


class _OldProcessesError(Exception):
    pass


def _clean_env() -> dict[str, str]:
    # Postgres must not inherit PG* variables aimed at some other server.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.setdefault("LC_ALL", "C")
    return env


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not processes.is_zombie(pid)  # our own exited child is not alive


def _is_our_postmaster(pid: int, data_dir: Path) -> bool:
    cmdline = processes.command_line(pid)
    if cmdline is None:
        return False
    return any(part.endswith("postgres") for part in cmdline[:1]) and (
        str(data_dir) in cmdline or str(data_dir.resolve()) in cmdline
    )


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap if it is our child
        if not process_alive(pid):
            return True
        time.sleep(0.02)
    return not process_alive(pid)
