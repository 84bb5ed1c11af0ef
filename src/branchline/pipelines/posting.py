"""What pipelines tell the code host besides comments, in one place: commit statuses
linked to the run's page, the environments on the host's own pages (when it shows
them: `DeploymentTracker`), and incident issues closed once production is well."""

from __future__ import annotations

from branchline.engine.runner import StepContext
from branchline.environment import Environment
from branchline.kit import Kit
from branchline.providers.forge import DeploymentState, DeploymentTracker

INCIDENT_CLOSED = "issue_closed"


async def status(
    kit: Kit, ctx: StepContext, sha: str, context: str, state: str, description: str
) -> None:
    """Commit `sha`'s status `context`, linked to this run's page."""
    await kit.forge.set_status(sha, context, state, kit.run_url(ctx.run_id), description)


async def deployment(
    kit: Kit, ctx: StepContext, environment: Environment, state: DeploymentState,
    description: str | None = None,
) -> None:  # fmt: skip
    """`environment`'s deployment of this run's commit is now `state` (success carries
    the environment's URL); nothing for a host that shows no environments."""
    forge = kit.forge
    if not isinstance(forge, DeploymentTracker):
        return
    sha = ctx.sha or ""
    if not sha and state != "inactive":
        return  # nothing deployed to speak of
    url = kit.environment_url(environment) if state == "success" else None
    await forge.deployment_status(
        environment.name, sha=sha, ref=ctx.ref or sha, state=state, url=url,
        log_url=kit.run_url(ctx.run_id), description=description,
    )  # fmt: skip


async def close_incidents(kit: Kit, ctx: StepContext) -> list[int]:
    """Close the incident issues earlier rollouts opened: production is well again.
    Each is closed once (the rollout remembers it), so a retried step closes none twice."""
    closed: list[int] = []
    for rollout in await kit.rollouts.history(Environment.production().name):
        issue = rollout.detail.get("issue")
        if rollout.run_id is None or rollout.run_id == ctx.run_id or issue is None:
            continue
        if rollout.detail.get(INCIDENT_CLOSED):
            continue
        await kit.forge.close_issue(
            int(issue),
            f"Production is healthy again: the rollout of {(ctx.sha or '')[:8]} (run "
            f"{ctx.run_id}) succeeded.",
        )
        await kit.rollouts.note(rollout.run_id, **{INCIDENT_CLOSED: True})
        closed.append(int(issue))
    return closed
