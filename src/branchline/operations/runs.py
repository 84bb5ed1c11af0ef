"""Runs by hand: cancel one (its `always` jobs still run) or run it again."""

from __future__ import annotations

from branchline.engine.engine import Engine
from branchline.operations.previews import Started


async def cancel(engine: Engine, run_id: int) -> Started:
    done = await engine.cancel(run_id)
    return Started("cancel requested" if done else "the run was over", run_id, done)


async def rerun(engine: Engine, run_id: int) -> Started:
    return Started("rerun started", await engine.rerun(run_id))
