"""Running the pipelines: an engine with every pipeline action, its workers, the
dispatcher and the periodic reconcile, for `branchline serve`, `branchline worker`
and the CLI commands that wait for what they started."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from branchline.config import Config, load_config
from branchline.engine.engine import Engine, EngineOptions
from branchline.errors import ConfigError
from branchline.kit import Kit
from branchline.masking import mask_url
from branchline.operations.reconcile import reconcile
from branchline.pipelines import catalog
from branchline.pipelines.dispatch import Dispatcher, Started, secrets_for, settle
from branchline.providers.database import SpareKeeper
from branchline.secrets import ValueSealer
from branchline.store import Store
from branchline.store import runs as run_rows

logger = logging.getLogger(__name__)
LOOP_WATCH_EVERY = 0.05  # seconds between the loop watch's ticks
LOOP_STALL = 0.1  # a tick this late means the loop was held
CONFIG_WATCH_EVERY = 1.0  # seconds between looks at branchline.toml
SPARE_EVERY = 5.0  # seconds between looks at the spare copy, while no run works
RESTART_FIRST, RESTART_LAST = 1.0, 30.0  # backoff bounds when the workers stop


@dataclass
class Pipelines:
    kit: Kit
    engine: Engine
    dispatcher: Dispatcher

    async def run_until_settled(
        self,
        *,
        concurrency: int = 4,
        on_started: Callable[[Started], Awaitable[None]] | None = None,
        on_tick: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Work the queue here until every event is handled and every run is over."""
        worker = asyncio.create_task(
            self.engine.run_worker(concurrency=concurrency, install_signal_handlers=False)
        )
        try:
            await settle(self.dispatcher, on_started=on_started, on_tick=on_tick)
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker

    async def run_forever(
        self,
        *,
        concurrency: int = 2,
        every: float = 0.2,
        reconcile_every: float = 60.0,
        install_signal_handlers: bool = True,
    ) -> None:
        """Reconcile, then work the queue, dispatch events, expire previews and
        reconcile again now and then, until interrupted. A watch on the event loop
        says when anything held it (job heartbeats share it). The state database may
        die meanwhile: the worker is started again once it answers, and the first
        reconcile waits for it."""
        beside = [
            asyncio.create_task(self._first_reconcile_then_dispatch(every, reconcile_every)),
            asyncio.create_task(watch_loop()),
            asyncio.create_task(self.watch_config()),
            asyncio.create_task(keep_spare(self.kit)),
        ]
        try:
            await self._work_forever(concurrency, install_signal_handlers)
        finally:
            for task in beside:
                task.cancel()
            for task in beside:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def watch_config(self, every: float = CONFIG_WATCH_EVERY) -> None:
        """Take a changed branchline.toml without a restart. An invalid one is
        refused (the previous config stays, the log says why); the tables serve was
        started with wait for a restart, and the log says so."""
        path = self.kit.config.path
        seen = self.kit.config.digest  # a change while serve started counts too
        while True:
            await asyncio.sleep(every)
            now = await asyncio.to_thread(_fingerprint, path)
            if now == seen:
                continue
            seen = now
            try:
                newer = await asyncio.to_thread(load_config, path)
            except ConfigError as exc:
                logger.warning(
                    "branchline.toml changed but is not valid; the previous config stays: "
                    "%s (%s)", exc.message, exc.hint,
                )  # fmt: skip
                continue
            pending = self.kit.reload(newer)
            logger.info("branchline.toml changed: reloaded")
            if pending:
                logger.warning(
                    "branchline.toml changed [%s]: that takes effect when serve restarts",
                    "], [".join(pending),
                )

    async def reconcile(self) -> None:
        began = time.monotonic()
        found = await reconcile(self.kit, engine=self.engine)
        for finding in found:
            logger.warning("reconcile: %s", finding.describe())
        logger.info(
            "reconcile pass: %d finding(s) in %.0f ms", len(found), (time.monotonic() - began) * 1e3
        )

    async def _work_forever(self, concurrency: int, install_signal_handlers: bool) -> None:
        """procrastinate's worker ends when its connections break (the state database
        died): start it again, with backoff, until cancelled. Its jobs that were
        running are recovered by the next one (their heartbeat went silent)."""
        delay = RESTART_FIRST
        while True:
            began = time.monotonic()
            try:
                await self.engine.run_worker(
                    concurrency=concurrency, install_signal_handlers=install_signal_handlers
                )
                return  # stopped on purpose (a signal)
            except Exception as exc:
                if time.monotonic() - began > RESTART_LAST:
                    delay = RESTART_FIRST  # it worked for a while: a fresh failure
                logger.warning(
                    "job workers stopped (%s); starting them again in %.0f s once the state "
                    "database answers", _short(exc), delay,
                )  # fmt: skip
            await asyncio.sleep(delay)
            await self.kit.store.wait_available()
            delay = min(delay * 2, RESTART_LAST)

    async def _first_reconcile_then_dispatch(self, every: float, reconcile_every: float) -> None:
        while True:
            try:
                await self.reconcile()
                break
            except Exception as exc:  # the state database may be restarting: try again
                logger.warning("reconcile failed: %s; trying again", _short(exc))
                await asyncio.sleep(RESTART_FIRST)
                await self.kit.store.wait_available()
        await self._dispatch_forever(every, reconcile_every)

    async def _dispatch_forever(self, every: float, reconcile_every: float) -> None:
        last_reconcile = time.monotonic()
        ticks = 0
        while True:
            try:
                if ticks % 50 == 0:  # TTLs are hours: checking every few seconds is plenty
                    await self.dispatcher.expire_previews()
                await self.dispatcher.dispatch_pending()
                if time.monotonic() - last_reconcile > reconcile_every:
                    last_reconcile = time.monotonic()
                    await self.reconcile()
            except Exception as exc:  # the state database may be restarting: try again
                logger.warning("dispatch failed: %s", _short(exc))
                await self.kit.store.wait_available()
            ticks += 1
            await asyncio.sleep(every)


async def keep_spare(kit: Kit, every: float = SPARE_EVERY) -> None:
    """Refill the database provider's spare copy while no run works: a branch takes
    it and leaves the refill to this loop, so a run's migration never shares the
    machine with a whole copy of production (3.2 s beside a refill, 0.4 s alone)."""
    database = kit.database
    if not isinstance(database, SpareKeeper):
        return
    while True:
        await asyncio.sleep(every)
        try:
            async with kit.store.connect() as conn:
                busy = await run_rows.active_runs(conn, kit.project)
            if not busy:
                await database.ensure_spare()
        except Exception as exc:  # the state database may be restarting: next time
            logger.warning("keeping the spare copy failed: %s", _short(exc))


def _short(exc: BaseException) -> str:
    """An error's first line, masked: procrastinate's and psycopg's run on."""
    text = str(exc).strip() or type(exc).__name__
    return mask_url(" ".join(text.split()))[:300]


def _fingerprint(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None  # moved away while an editor saves it: looked at again next time


async def watch_loop(every: float = LOOP_WATCH_EVERY, limit: float = LOOP_STALL) -> None:
    """Log whenever the event loop was held longer than `limit`: a tick due after
    `every` came that much late. Nothing may hold it (the lint in the tests looks for
    blocking calls); this says when something did anyway, and for how long."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + every
        await asyncio.sleep(every)
        late = loop.time() - due
        if late > limit:
            logger.warning(
                "event loop stalled for %.0f ms: job heartbeats and the API waited",
                late * 1e3,
            )


def configured(options: EngineOptions, config: Config) -> EngineOptions:
    """`options` with the project's `[limits]` and `[retention]`."""
    limits, kept = config.limits, config.retention
    return dataclasses.replace(
        options, step_log=limits.step_log, step_timeout=limits.step_timeout.total_seconds(),
        retain_runs=kept.runs.total_seconds(), retain_logs=kept.logs.total_seconds(),
        retain_artifacts=kept.artifacts.total_seconds(),
    )  # fmt: skip


@contextlib.asynccontextmanager
async def open_pipelines(
    config: Config,
    store: Store,
    *,
    edge_port: int | None,
    dns_port: int | None,
    options: EngineOptions | None = None,
    edge_bind: str | None = None,
) -> AsyncIterator[Pipelines]:
    kit = Kit.build(config, store, edge_port=edge_port, dns_port=dns_port, edge_bind=edge_bind)
    engine = Engine(
        store, project=config.project.name, actions=catalog.bound(kit), secrets=secrets_for(kit),
        options=configured(options or EngineOptions(), config), sandbox=kit.sandbox,
        sealer=ValueSealer(kit.secrets),
    )  # fmt: skip
    try:
        async with engine.open():
            yield Pipelines(kit, engine, Dispatcher(kit, engine))
    finally:
        await kit.aclose()
