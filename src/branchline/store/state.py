"""Where branchline's control-plane state lives, and getting it running.

By default an embedded Postgres cluster under the project's `.branchline/`
directory, started on demand and left running for the next command;
`BRANCHLINE_DATABASE_URL` points at any other Postgres instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from branchline.errors import StateUnavailableError, StoreError
from branchline.masking import mask_url
from branchline.postgres import Cluster, ClusterState
from branchline.postgres.cluster import SOCKET_FILE
from branchline.postgres.runas import current_run_as
from branchline.store.migrate import Migration, apply_migrations

if TYPE_CHECKING:  # the pool is serve's and the workers': one-shot commands connect directly
    from psycopg_pool import AsyncConnectionPool

logger = logging.getLogger(__name__)
STATE_DIRNAME = ".branchline"
STATE_DATABASE = "branchline"
PROBE_TIMEOUT = 2  # seconds a liveness probe may take (connect and SELECT 1)
KEEP_ALIVE_EVERY = 0.5  # seconds between probes while serve runs
WAIT_LONGEST = 30.0  # the longest pause between tries for an external database


@dataclass(frozen=True)
class StateLocation:
    state_dir: Path  # locks, keys and local artifacts live here in every mode
    external_url: str | None = None

    @property
    def kind(self) -> str:
        return "external" if self.external_url else "embedded"

    @property
    def cluster(self) -> Cluster:
        return Cluster(cluster_home(self.state_dir))

    def project_dir(self, project: str) -> Path:
        """Where one project's clusters, releases and logs live: several projects may
        share a state directory (BRANCHLINE_STATE_DIR) without touching each other."""
        return self.state_dir / "projects" / project


# Where root keeps cluster data when the state directory sits somewhere the
# unprivileged Postgres user cannot enter (a checkout under /root, say).
FALLBACK_CLUSTER_ROOT = Path("/var/lib/branchline/state")


def cluster_home(state_dir: Path) -> Path:
    preferred = state_dir / "postgres"
    run_as = current_run_as()
    if run_as.unreachable_ancestor(preferred) is None:
        return preferred
    digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:16]
    FALLBACK_CLUSTER_ROOT.mkdir(parents=True, exist_ok=True, mode=0o755)
    return FALLBACK_CLUSTER_ROOT / digest


def locate_state(project_root: Path, env: Mapping[str, str] | None = None) -> StateLocation:
    env = os.environ if env is None else env
    state_dir = Path(env.get("BRANCHLINE_STATE_DIR") or project_root / STATE_DIRNAME)
    return StateLocation(state_dir.absolute(), env.get("BRANCHLINE_DATABASE_URL") or None)


@dataclass
class StartReport:
    """What `Store.start` found and did."""

    kind: str
    url: str = field(repr=False)
    was: str  # cluster state before: missing, stopped, running (embedded only)
    seconds: float
    migrations_applied: list[Migration] = field(default_factory=list)

    @property
    def display_url(self) -> str:
        return mask_url(self.url)


class Store:
    """The control-plane state database. Construction does no I/O."""

    def __init__(self, location: StateLocation) -> None:
        self.location = location
        self._url: str | None = location.external_url
        self._pool: tuple[asyncio.AbstractEventLoop, AsyncConnectionPool[Any]] | None = None
        # Set by `keep_alive` while the database does not answer: connections are then
        # refused at once (StateUnavailableError) instead of waiting on the pool.
        self.unavailable: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise StoreError("the state database has not been started yet")
        return self._url

    async def start(self) -> StartReport:
        """Start the embedded cluster if needed, then apply pending migrations."""
        began = time.monotonic()
        was = "external"
        if self.location.external_url is None:
            was = await asyncio.to_thread(self._start_embedded)
        applied = await self._migrate()
        return StartReport(self.location.kind, self.url, was, time.monotonic() - began, applied)

    def _start_embedded(self) -> str:
        cluster = self.location.cluster
        with state_lock(self.location.state_dir):
            was = cluster.state()
            if was is ClusterState.MISSING:
                # Workers, the server and the CLI all connect to it.
                cluster.init(durable=True, settings={"max_connections": "300"})
            if was is not ClusterState.RUNNING:
                cluster.start()
            if was is not ClusterState.RUNNING:
                # Idempotent: also repairs a first start that died before this point.
                _create_database(cluster.uri("postgres"), STATE_DATABASE)
        self._url = cluster.uri(STATE_DATABASE)
        return was.value

    async def _migrate(self) -> list[Migration]:
        async with self.connect() as conn:
            return await apply_migrations(conn)

    @contextlib.asynccontextmanager
    async def connect(
        self, *, dedicated: bool = False
    ) -> AsyncIterator[psycopg.AsyncConnection[tuple[object, ...]]]:
        """An autocommit connection; callers open transactions where they need them.
        Inside `pooled()` it comes from the pool, unless `dedicated` (LISTEN needs
        a connection of its own)."""
        if self.unavailable is not None:
            raise StateUnavailableError(
                f"the state database at {mask_url(self.url)} does not answer ({self.unavailable})"
            )
        pool = self._pool
        if pool is not None and not dedicated and pool[0] is asyncio.get_running_loop():
            from psycopg_pool import PoolTimeout

            async with contextlib.AsyncExitStack() as stack:
                try:
                    conn = await stack.enter_async_context(pool[1].connection())
                except (PoolTimeout, psycopg.OperationalError) as exc:
                    raise StoreError(
                        f"cannot get a connection to the state database at "
                        f"{mask_url(self.url)}: {_first_line(exc)}"
                    ) from exc
                yield conn
            return
        try:
            conn = await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, application_name="branchline", connect_timeout=10
            )
        except psycopg.OperationalError as exc:
            raise StoreError(
                f"cannot connect to the state database at {mask_url(self.url)}: {_first_line(exc)}"
            ) from exc
        async with conn:
            yield conn

    @contextlib.asynccontextmanager
    async def pooled(self, max_size: int = 20) -> AsyncIterator[Store]:
        """Share a pool of connections for the duration (workers, servers, benchmarks);
        one-shot commands connect directly. Bound to the running event loop."""
        if self._pool is not None:
            yield self  # already pooled by an outer block
            return
        from psycopg_pool import AsyncConnectionPool, PoolTimeout

        pool: AsyncConnectionPool[psycopg.AsyncConnection[tuple[object, ...]]] = (
            AsyncConnectionPool(
                self.url,
                min_size=1,
                max_size=max_size,
                kwargs={"autocommit": True, "application_name": "branchline"},
                open=False,
            )
        )
        try:
            await pool.open(wait=True, timeout=30)
        except PoolTimeout as exc:
            raise StoreError(
                f"cannot connect to the state database at {mask_url(self.url)}"
            ) from exc
        self._pool = (asyncio.get_running_loop(), pool)
        try:
            yield self
        finally:
            self._pool = None
            await pool.close()

    async def probe(self) -> str | None:
        """None when the state database answers a query now; else why not."""
        try:
            async with asyncio.timeout(PROBE_TIMEOUT + 1):
                conn = await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, application_name="branchline-probe",
                    connect_timeout=PROBE_TIMEOUT,
                )  # fmt: skip
                async with conn:
                    await conn.execute("SELECT 1")
        except (psycopg.Error, OSError, TimeoutError) as exc:
            return _first_line(exc)
        return None

    async def wait_available(self, every: float = KEEP_ALIVE_EVERY) -> None:
        """Return once the state database answers (at once when it does)."""
        while self.unavailable is not None or await self.probe() is not None:
            await asyncio.sleep(every)

    async def keep_alive(self, every: float = KEEP_ALIVE_EVERY) -> None:
        """Watch the state database for as long as serve runs: when it stops
        answering, mark it unavailable (requests get StateUnavailableError at once),
        start the embedded cluster again (an external one is waited for, with
        backoff), and say so in the log. Never raises: traffic must not depend on it."""
        pause = every
        lost_at: float | None = None
        while True:
            why = await self.probe()
            if why is not None and lost_at is None:
                # Once more before saying so: a probe cut short (this process was held,
                # the machine is swamped) is not a dead database.
                why = await self.probe()
            if why is None:
                if lost_at is not None:
                    await self._drop_dead_connections()
                    logger.warning(
                        "the state database answers again after %.1f s; workers reconnect",
                        time.monotonic() - lost_at,
                    )
                lost_at, self.unavailable, pause = None, None, every
                await asyncio.sleep(every)
                continue
            if lost_at is None:
                lost_at = time.monotonic()
                logger.warning(
                    "the state database at %s does not answer (%s): the edge and DNS keep "
                    "routing from their last known routes; the API answers 503 meanwhile",
                    mask_url(self.url), why,
                )  # fmt: skip
            self.unavailable = why
            if self.location.external_url is None:
                try:
                    began = time.monotonic()
                    was = await asyncio.to_thread(self._start_embedded)
                    if was != ClusterState.RUNNING.value:
                        logger.warning(
                            "the embedded state database was %s: started again in %.1f s",
                            was, time.monotonic() - began,
                        )  # fmt: skip
                        continue  # probed again at once
                except Exception as exc:  # its log says more; try again
                    logger.warning(
                        "the embedded state database could not be started again: %s "
                        "(see %s); trying again in %.0f s",
                        mask_url(_first_line(exc)), self.location.cluster.log_file, pause,
                    )  # fmt: skip
            else:
                logger.warning(
                    "waiting for the external state database (BRANCHLINE_DATABASE_URL, %s); "
                    "next try in %.0f s", mask_url(self.url), pause,
                )  # fmt: skip
            await asyncio.sleep(pause)
            pause = min(pause * 2, WAIT_LONGEST)

    async def _drop_dead_connections(self) -> None:
        """The pool's idle connections died with the old server: checked and replaced
        now, rather than each failing the request that draws it."""
        pool = self._pool
        if pool is not None and pool[0] is asyncio.get_running_loop():
            with contextlib.suppress(psycopg.Error):
                await pool[1].check()

    def stop(self) -> bool:
        """Stop the embedded cluster and remove its socket directory (one a killed
        cluster left behind too); False when there was nothing to stop."""
        if self.location.external_url is not None:
            raise StoreError(
                "the state lives in an external Postgres (BRANCHLINE_DATABASE_URL)",
                hint="branchline only stops the embedded cluster it started itself.",
            )
        cluster = self.location.cluster
        with state_lock(self.location.state_dir):
            running = cluster.postmaster_pid() is not None
            if running:
                cluster.stop()
            # The next start makes it again; a stopped cluster leaves nothing in /tmp.
            if (cluster.home / SOCKET_FILE).exists():  # else it was never ours
                shutil.rmtree(cluster.socket_dir, ignore_errors=True)
            return running


@contextlib.contextmanager
def state_lock(state_dir: Path) -> Iterator[None]:
    """Serialise cluster creation and start-up between branchline processes."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / "state.lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _create_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
