"""cleanup: a pull request closed (merged or not), or its preview expired.

    cleanup    run [preview] predestroy (the PR's own hook, while its services and
               database are still there), stop every service of preview-<n>, delete
               its DNS records, its database branches (pr-<n>, pr-<n>-e2e) and its
               generated secrets, then say so in the PR's comment

Idempotent: running it twice, or on a preview that never finished, is fine.
It shares the preview's concurrency group and cancels a preview still being made.
"""

from __future__ import annotations

from branchline import naming
from branchline.engine.model import Call, Job, Step, Workflow
from branchline.engine.runner import StepContext
from branchline.environment import Environment
from branchline.errors import BranchlineError
from branchline.kit import Kit
from branchline.pipelines import posting
from branchline.pipelines.actions import KitAction, Log, run_hook

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


async def remove_running(kit: Kit, environment: Environment) -> dict[str, list[str]]:
    """Stop `environment`'s services (the last deployed first) and remove its DNS
    records: what was removed, by kind."""
    removed: dict[str, list[str]] = {"services": [], "dns": []}
    for service in reversed(kit.config.services_in_deploy_order()):
        if await kit.compute.delete(service.name, environment):
            removed["services"].append(service.name)
    for record in await kit.dns.list_records(environment):
        if await kit.dns.delete_record(record.name, record.type):
            removed["dns"].append(record.name)
    return removed


async def teardown(kit: Kit, pr: int, log: Log) -> dict[str, list[str]]:
    """Remove everything preview `pr` may have: what it removed, by kind."""
    environment = Environment.preview(pr)
    row = await kit.previews.get(pr)
    await kit.previews.set_status(pr, "deleting")
    await predestroy(kit, pr, row.sha if row is not None else None, log)
    removed = {**await remove_running(kit, environment), "branches": [], "secrets": []}
    for branch in (naming.branch_for_pr(pr), naming.e2e_branch_for_pr(pr)):
        if await kit.database.delete_branch(branch):
            removed["branches"].append(branch)
    removed["secrets"] = await kit.secrets.drop_preview(pr)
    await kit.previews.set_status(pr, "deleted", {"removed": removed})
    for kind, names in removed.items():
        await log.log(f"removed {kind}: {', '.join(names) or 'none'}")
    return removed


async def predestroy(kit: Kit, pr: int, sha: str | None, log: Log) -> None:
    """`[preview] predestroy` from the preview's last commit, against its branch, while
    its services still run. Its failure is logged, never fatal: the preview goes."""
    hook = kit.config.preview.predestroy
    branch = naming.branch_for_pr(pr)
    if hook is None:
        return
    if sha is None or await kit.database.get_branch(branch) is None:
        await log.log(f"predestroy: skipped, preview-{pr} has no database branch left")
        return
    try:
        # The preview's own secrets, as its services and its seed had them.
        secrets = await kit.secrets.get_all(Environment.preview(pr).name)
        code = await run_hook(
            kit, log, repo=kit.repo, sha=sha, branch=branch, command=hook, what="predestroy",
            timeout=kit.config.preview.hook_timeout.total_seconds(), secrets=secrets,
        )  # fmt: skip
    except BranchlineError as exc:
        await log.log(f"predestroy could not run: {exc.message} ({exc.hint})")
        return
    if code != 0:
        await log.log(f"predestroy failed (exit code {code}); removing preview-{pr} anyway")


async def run(kit: Kit, ctx: StepContext, *, reason: str) -> None:
    assert ctx.pr is not None, "cleanup runs for a pull request"
    had_preview = await kit.previews.get(ctx.pr) is not None
    removed = await teardown(kit, ctx.pr, ctx)
    if not had_preview and not any(removed.values()):
        return  # the pull request never had a preview: nothing to tell
    await posting.deployment(kit, ctx, Environment.preview(ctx.pr), "inactive")
    if await kit.forge.pull_request(ctx.pr) is None:
        return  # a preview deployed by hand, with no pull request to comment on
    what = ", ".join(f"{len(v)} {k}" for k, v in removed.items() if v) or "nothing was left"
    await kit.forge.upsert_comment(
        ctx.pr, COMMENT_KEY,
        f"### Preview removed\n\nThe preview of #{ctx.pr} was removed ({reason}): {what}.\n",
    )  # fmt: skip


ACTIONS: dict[str, KitAction] = {"cleanup.run": run}
