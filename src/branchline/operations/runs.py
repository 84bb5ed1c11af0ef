"""Runs by hand: cancel one (its `always` jobs still run) or run it again."""

from __future__ import annotations

from branchline.engine.engine import Engine
from branchline.kit import Kit
from branchline.operations.previews import Started
from branchline.pipelines.dispatch import replan


async def cancel(engine: Engine, run_id: int, by: str) -> Started:
    """`by`: who asks (every step the cancel stops says so in its log)."""
    done = await engine.cancel(run_id, by=by)
    return Started("cancel requested" if done else "the run was over", run_id, done)


async def rerun(kit: Kit, engine: Engine, run_id: int) -> Started:
    """The same workflow on the same commit, planned again from that commit's
    branchline.toml (as read now: a fixed config takes effect)."""
    run = await engine.get_run(run_id)
    return Started("rerun started", await engine.rerun(run_id, workflow=await replan(kit, run)))
