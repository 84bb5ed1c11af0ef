"""preview: after testing succeeds for a pull request, its live environment.

    require tests   fail fast when the testing run's report is missing
    still open      the PR may have closed meanwhile: then create nothing
    reserve         at most [preview] max_live previews (refused with a comment)
    secrets         preview-<n>'s generated secrets (AUTH_SECRET), made once
    branch          pr-<n>, copied from production on the first preview, holding what
                    [preview] data says (masked rows, the schema only, a fresh database)
                    before the PR's code runs
    prepare         at once: migrate pr-<n> from the PR's commit (on every update) and
                    then, on a branch not seeded yet, run [preview] seed; build every
                    service; create and verify a DNS record per service
                    (api-preview-<n>.<zone>)
    deploy          start every service, health-checked, then route to it
    finish          the PR still open? comment with the URLs; closed: undo all

One run per pull request at a time; a newer commit (or the PR closing) cancels it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from branchline import naming
from branchline.branchdata import DataPlan, plan_for
from branchline.engine.model import Call, Job, RunIf, Step, Workflow
from branchline.engine.runner import StepContext
from branchline.environment import Environment
from branchline.errors import BranchlineError
from branchline.kit import Kit
from branchline.pipelines import cleanup, posting
from branchline.pipelines.actions import KitAction, migrate_branch, seed_branch, shaped
from branchline.pipelines.testing import NAME as TESTING
from branchline.pipelines.testing import REPORT
from branchline.providers.database import schema_diff
from branchline.providers.forge import PullRequest

NAME = "preview"
COMMENT_KEY = cleanup.COMMENT_KEY
MAX_DIFF_LINES = 120
# Jobs that ended so are not a preview's failure to comment on: refused for lack of
# room (its own comment says so), or interrupted (a crash: reconcile makes it again).
NOT_A_FAILURE = ("refused", "interrupted")


class PreviewClosedError(BranchlineError):
    default_hint = "Nothing is left of this preview; reopen the pull request to get one."
    code = "closed"


class PreviewRefusedError(BranchlineError):
    default_hint = "Close a pull request with a preview, or raise [preview] max_live."
    code = "refused"


def workflow(pr: int) -> Workflow:
    Environment.preview(pr)  # a valid pull request number, or a clear error

    def call(step: str, action: str, **params: Any) -> Step:
        return Step(step, Call(action, params))

    steps = (
        call("require tests", "preview.require_tested"),
        call("still open", "preview.check_open"),
        call("reserve", "preview.reserve"),
        call("secrets", "preview.secrets"),
        call("branch", "preview.branch"),
        call("prepare", "preview.prepare"),
        call("deploy", "preview.deploy"),
        call("finish", "preview.finish"),
    )
    failed = Job(
        "report failure", (call("comment", "preview.failed"),),
        needs=("preview",), run_if=RunIf.FAILURE, checkout=False,
    )  # fmt: skip
    return Workflow(
        NAME, (Job("preview", steps, checkout=False), failed),
        concurrency_group=cleanup.group(pr), cancel_in_progress=True,
    )  # fmt: skip


# -- actions ---------------------------------------------------------------------------


def _pr(ctx: StepContext) -> int:
    if ctx.pr is None or ctx.sha is None:
        raise BranchlineError("a preview runs for a pull request's commit")
    return ctx.pr


async def require_tested(kit: Kit, ctx: StepContext) -> None:
    report = await ctx.artifact(REPORT, workflow=TESTING, sha=ctx.sha)
    jobs = json.loads(report).get("jobs", {})
    await ctx.log(f"tested in run {json.loads(report).get('run_id')}: {_summary(jobs)}")


async def _open_pr(kit: Kit, ctx: StepContext) -> PullRequest | None:
    found = await kit.forge.pull_request(_pr(ctx))
    return found if found is not None and found.is_open else None


async def check_open(kit: Kit, ctx: StepContext) -> None:
    pr = await _open_pr(kit, ctx)
    if pr is None:
        raise PreviewClosedError(f"pull request #{ctx.pr} is no longer open; nothing created")
    if pr.head_sha != ctx.sha:
        raise PreviewClosedError(
            f"pull request #{ctx.pr} moved on to {pr.head_sha[:8]}; this preview of "
            f"{(ctx.sha or '')[:8]} is superseded",
            hint="The newer commit's testing run makes its preview.",
        )
    if not await kit.may_preview(pr, ctx.sha or ""):
        raise PreviewRefusedError(
            f"pull request #{ctx.pr} comes from a fork and {(ctx.sha or '')[:8]} is not "
            "approved: its code gets no secrets and no preview",
            hint=f"A writer approves it: `branchline pr approve {ctx.pr}` (or the "
            "`safe-to-preview` label on GitHub).",
        )


async def reserve(kit: Kit, ctx: StepContext) -> None:
    pr = _pr(ctx)
    limits = kit.config.preview
    reserved, others = await kit.previews.reserve(
        pr, sha=ctx.sha or "", max_live=limits.max_live, ttl_seconds=limits.ttl.total_seconds()
    )
    if not reserved:
        listed = ", ".join(f"#{n}" for n in others)
        await kit.forge.upsert_comment(
            pr, COMMENT_KEY,
            f"### Preview not created\n\nAll {limits.max_live} preview places are taken "
            f"({listed}). Close one of those pull requests, or raise `max_live` under "
            "[preview] in branchline.toml, then push again.\n",
        )  # fmt: skip
        raise PreviewRefusedError(f"all {limits.max_live} preview places are taken ({listed})")
    await ctx.log(f"preview-{pr} reserved; it expires {limits.ttl} after its last update")
    await posting.deployment(kit, ctx, Environment.preview(pr), "in_progress", "building")


async def ensure_secrets(kit: Kit, ctx: StepContext) -> None:
    created = await kit.secrets.ensure_generated(_pr(ctx))
    await ctx.log(f"generated: {', '.join(created)}" if created else "secrets already in place")


async def ensure_branch(kit: Kit, ctx: StepContext) -> None:
    name = naming.branch_for_pr(_pr(ctx))
    plan = plan_for(kit.config, kit.config.preview.data)
    existing = await kit.database.get_branch(name)
    if existing is not None and existing.status.value == "ready":
        await ctx.log(f"branch {name} exists (created {existing.created_at:%Y-%m-%d %H:%M})")
        made_with = DataPlan.from_dict(existing.detail.get("data"))
        if made_with != plan:
            # Its data is the preview's own by now (what reviewers did in it): kept.
            await ctx.log(
                f"{name} holds {made_with.describe()}; [preview] data and [database.mask] now "
                f"ask for {plan.describe()}: close and reopen the pull request to remake it"
            )
        return
    branch = await kit.database.create_branch(name, kit.config.database.parent, data=plan)
    await ctx.log(f"branch {branch.name} copied from {branch.parent}")
    await ctx.log(f"{branch.name} holds {plan.describe()}{shaped(branch.detail)}")


async def ensure_dns(kit: Kit, ctx: StepContext) -> None:
    environment = Environment.preview(_pr(ctx))
    for host in kit.hosts(environment).values():
        await kit.dns.ensure_record(host, "CNAME", "@", proxied=True, environment=environment)
    for host in kit.hosts(environment).values():
        result = await kit.dns.verify(host, type="CNAME")
        if not result.ok:
            raise BranchlineError(
                f"the DNS record {host} did not resolve after {result.attempts} attempts"
                + (f" ({result.error})" if result.error else ""),
                hint="Check that the zone's DNS server answers (locally: `branchline edge` "
                f"runs); `branchline dns verify {host}` asks again.",
            )
        await ctx.log(f"dns {host} resolves ({result.attempts} attempts, {result.elapsed:.2f} s)")


async def prepare(kit: Kit, ctx: StepContext) -> None:
    """Migrating, building and DNS do not depend on each other: done side by side."""

    branch = naming.branch_for_pr(_pr(ctx))

    async def build_all() -> None:
        for release in await asyncio.gather(
            *(kit.compute.build(s, ctx.sha or "") for s in kit.config.services)
        ):
            await ctx.log(f"built {release.name}")

    async def migrate_then_seed() -> None:
        await migrate_branch(kit, ctx, name=branch)
        await seed_once(kit, ctx, branch)

    await asyncio.gather(migrate_then_seed(), build_all(), ensure_dns(kit, ctx))


async def seed_once(kit: Kit, ctx: StepContext, branch: str) -> None:
    """`[preview] seed`, after the migrations, on a branch it has not run on yet (like
    a review app's `postdeploy`, once per preview; a failed seed runs again on the
    next commit)."""
    seed = kit.config.preview.seed
    if seed is None:
        return
    made = await kit.database.get_branch(branch)
    if made is not None and made.detail.get("seeded_at"):
        await ctx.log(f"{branch} was seeded at {made.detail['seeded_at']}: not again")
        return
    await seed_branch(kit, ctx, name=branch, command=list(seed),
                      timeout=kit.config.preview.hook_timeout.total_seconds())  # fmt: skip


async def deploy(kit: Kit, ctx: StepContext) -> None:
    pr = _pr(ctx)
    if not kit.edge_port and kit.config.compute.provider == "local":
        # Local services are reached through branchline's edge; Cloudflare's Workers
        # through Cloudflare's.
        raise BranchlineError(
            "the edge is not running, so a preview could not be reached",
            hint="Start it with `branchline edge` (the CLI does so when it runs pipelines).",
        )
    environment = Environment.preview(pr)
    env = await kit.deployment_env(environment)
    services = kit.config.services_in_deploy_order()
    # A preview has no traffic to protect: every service builds and starts at once
    # (production deploys one by one, in order).
    releases = await asyncio.gather(*(kit.compute.build(s.name, ctx.sha or "") for s in services))
    outcomes = await asyncio.gather(*(
        kit.compute.deploy(s.name, environment, release, env, position=position)
        for position, (s, release) in enumerate(zip(services, releases, strict=True))
    ), return_exceptions=True)  # fmt: skip
    for service, release, outcome in zip(services, releases, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            await ctx.log(f"{service.name}: {release.name} failed: {outcome}")
        else:
            await ctx.log(f"{service.name}: {release.name} live at {outcome.url}")
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


async def finish(kit: Kit, ctx: StepContext) -> None:
    pr = _pr(ctx)
    if await _open_pr(kit, ctx) is None:
        # Closed while the preview was being made: what was just made must go too.
        await cleanup.teardown(kit, pr, ctx)
        raise PreviewClosedError(f"pull request #{pr} closed during its preview; removed it")
    environment = Environment.preview(pr)
    deployments = {
        d.service: d for d in await kit.compute.list_deployments(environment) if d.status == "live"
    }
    report = json.loads(await ctx.artifact(REPORT, workflow=TESTING, sha=ctx.sha))
    diff = await schema_diff(kit.database, kit.config.database.parent, naming.branch_for_pr(pr))
    rows = [
        (name, environment.worker_name(name), kit.url(host),
         deployments[name].release.name if name in deployments else "-")
        for name, host in kit.hosts(environment).items()
    ]  # fmt: skip
    body = comment_body(
        pr=pr, sha=ctx.sha or "", services=rows, branch=naming.branch_for_pr(pr),
        tests=report.get("jobs", {}), diff=diff,
    )  # fmt: skip
    await kit.forge.upsert_comment(pr, COMMENT_KEY, body)
    await kit.previews.set_status(
        pr, "live", {"sha": ctx.sha, "urls": {name: url for name, _w, url, _r in rows}}
    )
    await posting.deployment(kit, ctx, environment, "success", "preview live")
    for name, _worker, url, _release in rows:
        await ctx.log(f"{name}: {url}")


async def failed(kit: Kit, ctx: StepContext) -> None:
    pr = _pr(ctx)
    if await _open_pr(kit, ctx) is None:
        return  # closed: cleanup speaks for it
    if any(job.error_code in NOT_A_FAILURE for job in await ctx.jobs()):
        return
    row = await kit.previews.get(pr)
    if row is not None and row.status == "creating":
        await kit.previews.set_status(pr, "failed")
    await posting.deployment(kit, ctx, Environment.preview(pr), "failure", "preview failed")
    await kit.forge.upsert_comment(
        pr, COMMENT_KEY,
        f"### Preview failed\n\nThe preview of {(ctx.sha or '')[:8]} failed; see "
        f"`branchline runs show {ctx.run_id}`. A new commit tries again.\n",
    )  # fmt: skip


# -- the comment ---------------------------------------------------------------------


def _summary(jobs: Mapping[str, str]) -> str:
    return ", ".join(f"{name} {status}" for name, status in sorted(jobs.items())) or "no jobs"


def comment_body(
    *,
    pr: int,
    sha: str,
    services: list[tuple[str, str, str, str]],  # service, worker name, URL, release
    branch: str,
    tests: Mapping[str, str],
    diff: str,
) -> str:
    """The sticky preview comment (markdown), rewritten on every update."""
    lines = [
        f"### Preview of #{pr} is live",
        "",
        f"Commit `{sha[:12]}` · database branch `{branch}`",
        "",
        "| service | URL | worker | release |",
        "|---|---|---|---|",
        *(f"| {s} | {url} | `{worker}` | `{release}` |" for s, worker, url, release in services),
        "",
        f"Tests: {_summary(tests)}",
        "",
    ]
    if diff:
        shown = diff.splitlines()
        cut = len(shown) > MAX_DIFF_LINES
        lines += [
            f"Schema changes against production ({len(shown)} lines"
            + (f", first {MAX_DIFF_LINES} shown" if cut else "") + "):",
            "",
            "```diff",
            *shown[:MAX_DIFF_LINES],
            "```",
        ]  # fmt: skip
    else:
        lines.append("Schema: the same as production.")
    return "\n".join(lines) + "\n"


ACTIONS: dict[str, KitAction] = {
    "preview.require_tested": require_tested,
    "preview.check_open": check_open,
    "preview.reserve": reserve,
    "preview.secrets": ensure_secrets,
    "preview.branch": ensure_branch,
    "preview.dns": ensure_dns,
    "preview.prepare": prepare,
    "preview.deploy": deploy,
    "preview.finish": finish,
    "preview.failed": failed,
}
