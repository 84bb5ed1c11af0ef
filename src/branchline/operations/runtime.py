"""Running the pipelines: an engine with every pipeline action, its workers, the
dispatcher and the periodic reconcile, for `branchline serve`, `branchline worker`
and the CLI commands that wait for what they started."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from branchline.config import Config
from branchline.engine.engine import Engine, EngineOptions
from branchline.kit import Kit
from branchline.masking import mask_url
from branchline.operations.reconcile import reconcile
from branchline.pipelines import catalog
from branchline.pipelines.dispatch import Dispatcher, Started, secrets_for, settle
from branchline.secrets import ValueSealer
from branchline.store import Store

logger = logging.getLogger(__name__)


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
        reconcile again now and then, until interrupted."""
        await self.reconcile()
        dispatching = asyncio.create_task(self._dispatch_forever(every, reconcile_every))
        try:
            await self.engine.run_worker(
                concurrency=concurrency, install_signal_handlers=install_signal_handlers
            )
        finally:
            dispatching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dispatching

    async def reconcile(self) -> None:
        for finding in await reconcile(self.kit, engine=self.engine):
            logger.warning("reconcile: %s", finding.describe())

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
                logger.warning("dispatch failed: %s", mask_url(str(exc)))
            ticks += 1
            await asyncio.sleep(every)


@contextlib.asynccontextmanager
async def open_pipelines(
    config: Config,
    store: Store,
    *,
    edge_port: int | None,
    dns_port: int | None,
    options: EngineOptions | None = None,
) -> AsyncIterator[Pipelines]:
    kit = Kit.build(config, store, edge_port=edge_port, dns_port=dns_port)
    engine = Engine(
        store, project=config.project.name, actions=catalog.bound(kit), secrets=secrets_for(kit),
        options=options, sandbox=kit.sandbox, sealer=ValueSealer(kit.secrets),
    )  # fmt: skip
    try:
        async with engine.open():
            yield Pipelines(kit, engine, Dispatcher(kit, engine))
    finally:
        await kit.aclose()
