"""Recording a GitHub delivery: the one home of what a webhook and `branchline ci`
both do with a parsed event (the pull request's row mirrored, an approval noted,
the event recorded once under its delivery id), in one transaction."""

from __future__ import annotations

from branchline import events
from branchline.store import approvals
from branchline.store import forge as forge_rows
from branchline.store.queries import Conn


def pr_state(change: events.PullRequestChanged) -> str:
    """The pull request's state after this change: open, closed or merged."""
    if change.action != "closed":
        return "open"
    return "merged" if change.merged else "closed"


async def record_github(
    conn: Conn, project: str, event: events.Event, *, delivery_id: str, source: str,
    head_repo: str = "", approve: bool = True,
) -> forge_rows.EventRow | None:  # fmt: skip
    """The new event row, or None when this delivery was recorded before. `approve`:
    an approval label counts as such (False when the code host confirms the labeller
    may approve, later)."""
    async with conn.transaction():
        if isinstance(event, events.PullRequestChanged):
            await forge_rows.mirror_pr(
                conn, project, number=event.number, title=event.title,
                head=event.head_branch, base=event.base_branch, sha=event.head_sha,
                state=pr_state(event), fork=event.fork, head_repo=head_repo,
            )  # fmt: skip
        if isinstance(event, events.PullRequestApproved) and approve:
            await approvals.approve(conn, project, event.number, event.sha, event.by)
        return await forge_rows.record(conn, project, event, delivery_id=delivery_id, source=source)
