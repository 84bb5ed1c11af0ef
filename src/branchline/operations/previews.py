"""Previews by hand: close one (its cleanup run removes everything) and record a
push for a testing run, as the API's buttons do."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from branchline import events
from branchline.environment import Environment
from branchline.errors import UsageError
from branchline.kit import Kit
from branchline.pipelines import cleanup
from branchline.providers.forge import LocalPullRequests
from branchline.store import forge as forge_rows

if TYPE_CHECKING:  # `branchline status` lists environments without the job queue
    from branchline.engine.engine import Engine


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


async def approve(kit: Kit, pr: int, *, by: str) -> Started:
    """Approve a fork's pull request at its head commit: once its tests pass (or now,
    if they have), its preview is made with the preview's secrets."""
    pull = await kit.forge.pull_request(pr)
    if pull is None or not pull.is_open:
        raise UsageError(f"there is no open pull request #{pr}", hint="See `branchline pr list`.")
    if isinstance(kit.forge, LocalPullRequests):
        recorded = await kit.forge.approve_pr(pr, by)
        fresh = recorded.event is not None
    else:
        fresh = await kit.approvals.approve(pr, pull.head_sha, by)
        if fresh:
            async with kit.store.connect() as conn:
                await forge_rows.record(
                    conn, kit.project, events.PullRequestApproved(pr, pull.head_sha, by),
                    delivery_id=f"approval-{kit.project}-{pr}-{pull.head_sha}", source="api",
                )  # fmt: skip
    said = "approved" if fresh else "approved before"
    return Started(f"pull request #{pr} {said} at {pull.head_sha[:12]}", done=fresh)


async def record_push(kit: Kit, branch: str, *, source: str = "api") -> Started:
    """Record a push of `branch`'s head, as a git hook would: a testing run follows."""
    if not isinstance(kit.forge, LocalPullRequests):
        raise UsageError(
            "this code host records pushes itself (its webhooks deliver them)",
            hint="Push to the repository; the webhook starts the testing run.",
        )
    recorded = await kit.forge.push(branch, source=source)
    return Started("push recorded" if recorded.event else "recorded before")
