"""cleanup: a pull request closed (merged or not), or its preview expired.

    cleanup    stop every service of preview-<n>, delete its DNS records, its
               database branches (pr-<n>, pr-<n>-e2e) and its generated secrets,
               then say so in the PR's comment

Idempotent: running it twice, or on a preview that never finished, is fine.
It shares the preview's concurrency group and cancels a preview still being made.
"""

from __future__ import annotations

from typing import Protocol

from branchline import naming
from branchline.engine.model import Call, Job, Step, Workflow
from branchline.engine.runner import StepContext
from branchline.environment import Environment
from branchline.kit import Kit
from branchline.pipelines.actions import KitAction

NAME = "cleanup"
COMMENT_KEY = "preview"


def group(pr: int) -> str:
    """The concurrency group a preview's runs share: `preview-<n>`."""
    return Environment.preview(pr).name


def workflow(pr: int, *, reason: str = "closed") -> Workflow:
    return Workflow(
        NAME,
        (Job("cleanup", (Step("remove preview", Call("cleanup.run", {"reason": reason})),),
             checkout=False),),
        concurrency_group=group(pr),
        cancel_in_progress=True,
    )  # fmt: skip


class Log(Protocol):
    async def log(self, line: str) -> None: ...


async def teardown(kit: Kit, pr: int, log: Log) -> dict[str, list[str]]:
    """Remove everything preview `pr` may have: what it removed, by kind."""
    environment = Environment.preview(pr)
    await kit.previews.set_status(pr, "deleting")
    removed: dict[str, list[str]] = {"services": [], "dns": [], "branches": [], "secrets": []}
    for service in reversed(kit.config.services_in_deploy_order()):
        if await kit.compute.delete(service.name, environment):
            removed["services"].append(service.name)
    for record in await kit.dns.list_records(environment):
        if await kit.dns.delete_record(record.name, record.type):
            removed["dns"].append(record.name)
    for branch in (naming.branch_for_pr(pr), naming.e2e_branch_for_pr(pr)):
        if await kit.database.delete_branch(branch):
            removed["branches"].append(branch)
    removed["secrets"] = await kit.secrets.drop_preview(pr)
    await kit.previews.set_status(pr, "deleted", {"removed": removed})
    for kind, names in removed.items():
        await log.log(f"removed {kind}: {', '.join(names) or 'none'}")
    return removed


async def run(kit: Kit, ctx: StepContext, *, reason: str) -> None:
    assert ctx.pr is not None, "cleanup runs for a pull request"
    had_preview = await kit.previews.get(ctx.pr) is not None
    removed = await teardown(kit, ctx.pr, ctx)
    if not had_preview and not any(removed.values()):
        return  # the pull request never had a preview: nothing to tell
    what = ", ".join(f"{len(v)} {k}" for k, v in removed.items() if v) or "nothing was left"
    await kit.forge.upsert_comment(
        ctx.pr, COMMENT_KEY,
        f"### Preview removed\n\nThe preview of #{ctx.pr} was removed ({reason}): {what}.\n",
    )  # fmt: skip


ACTIONS: dict[str, KitAction] = {"cleanup.run": run}
