"""Previews by hand: close one (its cleanup run removes everything) and record a
push for a testing run, as the API's buttons do."""

from __future__ import annotations

from dataclasses import dataclass

from branchline.engine.engine import Engine
from branchline.environment import Environment
from branchline.errors import UsageError
from branchline.kit import Kit
from branchline.pipelines import cleanup
from branchline.providers.forge import LocalPullRequests


@dataclass(frozen=True)
class Started:
    """What an action set going: said in a sentence, the run (if any), and whether
    anything was done (False: there was nothing to do)."""

    message: str
    run_id: int | None = None
    done: bool = True


async def close(kit: Kit, engine: Engine, pr: int, *, by: str = "api") -> Started:
    """Remove preview `pr` (the pull request stays as it is)."""
    Environment.preview(pr)  # a clear error for a number no pull request can have
    run_id = await engine.submit(
        cleanup.workflow(pr, reason=f"closed from the {by}"), triggered_by=by, pr=pr
    )
    return Started(f"preview-{pr} is being removed", run_id)


async def record_push(kit: Kit, branch: str, *, source: str = "api") -> Started:
    """Record a push of `branch`'s head, as a git hook would: a testing run follows."""
    if not isinstance(kit.forge, LocalPullRequests):
        raise UsageError(
            "this code host records pushes itself (its webhooks deliver them)",
            hint="Push to the repository; the webhook starts the testing run.",
        )
    recorded = await kit.forge.push(branch, source=source)
    return Started("push recorded" if recorded.event else "recorded before")
