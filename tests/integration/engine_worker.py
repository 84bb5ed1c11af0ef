"""A worker process for engine tests:
`python -m tests.integration.engine_worker URL PROJECT [CHECKOUTS DIRECTORY]`."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from pathlib import Path

from branchline.engine.engine import Engine, EngineOptions
from branchline.store import Store, locate_state

FAST = EngineOptions(grace=1.0, heartbeat=0.5, stalled_after=2.0, recover_every=0.5, poll=0.5)


async def main(url: str, project: str, workdir: str | None = None) -> None:
    store = Store(locate_state(Path("/"), {"BRANCHLINE_DATABASE_URL": url}))
    await store.start()
    options = dataclasses.replace(FAST, workdir=Path(workdir) if workdir else None)
    engine = Engine(store, project=project, options=options)
    async with engine.open():
        await engine.run_worker(concurrency=2)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
