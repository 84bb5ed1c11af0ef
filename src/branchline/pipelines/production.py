"""production: after testing passes on the production branch, a gated rollout.

    start           record the rollout (the deployment history)
    dns             ensure and verify the production records (api.<zone>, ...)
    build           every service first: a failure stops before the database is touched
    preflight       migrate a throw-away copy of production, start the *live* release
                    of each service against it: old code that breaks on the new schema
                    stops the rollout (unless [production] allow_breaking_migrations)
    restore point   a base backup, and the exact time, just before migrating
    migrate         production
    deploy          each service in order, health-checked; on a failure every service
                    switched in this rollout is rolled back (newest first) and an
                    issue says what happened and what to do next
    finish          the rollout succeeded

Runs in a queue, never cancelled: a newer merge waits for the running rollout.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from branchline import migrations
from branchline.engine.checkout import checked_out
from branchline.engine.model import Call, Job, RunIf, Step, Workflow
from branchline.engine.runner import StepContext
from branchline.environment import Environment
from branchline.errors import BranchlineError
from branchline.kit import Kit
from branchline.pipelines import posting
from branchline.pipelines.actions import KitAction, migrate_branch
from branchline.providers.compute import TrialRuns, UnhealthyError
from branchline.providers.database import Backups

NAME = "production"
ENVIRONMENT = Environment.production()
STATUS_CONTEXT = "branchline/production"


def workflow() -> Workflow:
    def step(name: str, action: str) -> Step:
        # Not cancellable: a rollout never stops between migrating and deploying.
        return Step(name, Call(action), cancellable=False)

    rollout = Job(
        "rollout",
        (
            step("start", "production.start"),
            step("dns", "production.dns"),
            step("build", "production.build"),
            step("preflight", "production.preflight"),
            step("restore point", "production.restore_point"),
            step("migrate", "production.migrate"),
            step("deploy", "production.deploy"),
            step("finish", "production.finish"),
        ),
        checkout=False,
    )
    failed = Job(
        "report failure", (step("record", "production.failed"),),
        needs=("rollout",), run_if=RunIf.FAILURE, checkout=False,
    )  # fmt: skip
    return Workflow(NAME, (rollout, failed), concurrency_group=NAME, cancel_in_progress=False)


def _sha(ctx: StepContext) -> str:
    if not ctx.sha:
        raise BranchlineError("a production rollout needs a commit")
    return ctx.sha


async def _note(kit: Kit, ctx: StepContext, **detail: Any) -> None:
    await kit.rollouts.note(ctx.run_id, **detail)


async def _detail(kit: Kit, ctx: StepContext) -> dict[str, Any]:
    row = await kit.rollouts.get(ctx.run_id)
    return dict(row.detail) if row else {}


# -- steps --------------------------------------------------------------------------


async def start(kit: Kit, ctx: StepContext) -> None:
    await kit.rollouts.start(ctx.run_id, sha=_sha(ctx), triggered_by=ctx.triggered_by)
    await posting.status(kit, ctx, _sha(ctx), STATUS_CONTEXT, "pending", "rolling out")
    await posting.deployment(kit, ctx, ENVIRONMENT, "in_progress", "rolling out")
    await ctx.log(f"rollout of {_sha(ctx)[:12]} to production started")


async def dns(kit: Kit, ctx: StepContext) -> None:
    hosts = kit.hosts(ENVIRONMENT)
    for host in hosts.values():
        await kit.dns.ensure_record(host, "CNAME", "@", proxied=True, environment=ENVIRONMENT)
    for host in hosts.values():
        result = await kit.dns.verify(host, type="CNAME")
        if not result.ok:
            raise BranchlineError(
                f"the production record {host} did not resolve after {result.attempts} "
                "attempts" + (f" ({result.error})" if result.error else ""),
                hint="Check that the zone's DNS server answers (locally: `branchline edge` "
                f"runs); `branchline dns verify {host}` asks again.",
            )
        await ctx.log(f"dns {host} resolves")


async def build(kit: Kit, ctx: StepContext) -> None:
    missing = await kit.secrets.missing(ENVIRONMENT.name)
    if missing:
        raise BranchlineError(
            f"production secrets are not set: {', '.join(missing)}",
            hint=f"Set them with `branchline secret set {missing[0]} --env production`.",
        )
    releases = {}
    for service in kit.config.services_in_deploy_order():
        release = await kit.compute.build(service.name, _sha(ctx))
        releases[service.name] = release.name
        await ctx.log(f"built {release.name}")
    await _note(kit, ctx, releases=releases)


async def preflight(kit: Kit, ctx: StepContext) -> None:
    if ctx.repo is None:
        raise BranchlineError("a rollout needs the project's repository")
    compute = kit.compute
    live = {
        d.service: d.release
        for d in await kit.compute.list_deployments(ENVIRONMENT)
        if d.status == "live"
    }

    async def old_code_on_new_schema(branch: str) -> dict[str, str]:
        if not isinstance(compute, TrialRuns):
            return {service: "not checked: this compute provider has no trial runs"
                    for service in live}  # fmt: skip
        uri = await kit.database.connection_uri(branch)
        env = await kit.deployment_env(ENVIRONMENT, database_url=uri)
        results = await asyncio.gather(*(
            compute.trial(service, ENVIRONMENT, release, env) for service, release in live.items()
        ))  # fmt: skip
        verdicts = {}
        for (service, release), result in zip(live.items(), results, strict=True):
            verdicts[service] = "ok" if result.healthy else result.verdict
            await ctx.log(f"live {release.name} on the migrated copy: {verdicts[service]}")
        return verdicts

    lines: list[str] = []
    async with checked_out(ctx.repo, _sha(ctx), prepare=kit.sandbox.hand_over) as checkout:
        result = await migrations.preflight(
            kit.config, kit.database, on_line=lines.append, cwd=kit.in_checkout(checkout),
            check=old_code_on_new_schema, parent=await _production_branch(kit),
            sandbox=kit.sandbox,
        )  # fmt: skip
    for line in lines[-40:]:
        await ctx.log(line)
    if not result.ok:
        await _note(kit, ctx, preflight={"ok": False, "error": result.error})
        raise BranchlineError(
            f"the migrations fail on a copy of production: {result.error}"
            + (f" (statement: {result.failing_statement})" if result.failing_statement else ""),
            hint="Production was not touched. Fix the migration and merge again.",
        )
    verdicts: dict[str, str] = result.check or {}
    compatible = all(v == "ok" or v.startswith("not checked") for v in verdicts.values())
    await _note(kit, ctx, preflight={
        "ok": True, "compatible": compatible, "live_releases": verdicts,
        "schema_changes": result.schema_changes,
    })  # fmt: skip
    await ctx.log(f"schema changes: {json.dumps(result.schema_changes, sort_keys=True)}")
    if not compatible and not kit.config.production.allow_breaking_migrations:
        broken = ", ".join(f"{s} ({v})" for s, v in verdicts.items() if v != "ok")
        raise BranchlineError(
            f"the live release breaks on the migrated schema: {broken}; a code-only rollback "
            "would be impossible after this migration",
            hint="Make the migration backward compatible (expand, then contract), or set "
            "`allow_breaking_migrations = true` under [production] to roll out anyway.",
        )
    await ctx.log("migration is backward compatible" if compatible else
                  "migration breaks the live release: allowed by the config")  # fmt: skip


async def restore_point(kit: Kit, ctx: StepContext) -> None:
    if isinstance(kit.database, Backups):  # the cloud keeps its own history
        backup = await kit.database.take_backup()
        await ctx.log(f"base backup taken ({backup.end_time.isoformat()})")
    moment = datetime.now(UTC).isoformat()
    await _note(kit, ctx, restore_point=moment)
    await ctx.log(f"restore point: {moment}")


async def _production_branch(kit: Kit) -> str:
    branch = await kit.database_branch(ENVIRONMENT)
    assert branch is not None, "production always has a branch"
    return branch


async def migrate(kit: Kit, ctx: StepContext) -> None:
    await migrate_branch(kit, ctx, name=await _production_branch(kit))


async def deploy(kit: Kit, ctx: StepContext) -> None:
    env = await kit.deployment_env(ENVIRONMENT)
    switched: list[str] = []
    for position, service in enumerate(kit.config.services_in_deploy_order()):
        release = await kit.compute.build(service.name, _sha(ctx))
        try:
            deployment = await kit.compute.deploy(
                service.name, ENVIRONMENT, release, env, position=position
            )
        except BranchlineError as exc:
            await ctx.log(f"{service.name} {release.name} failed: {exc.message}")
            health = exc.health if isinstance(exc, UnhealthyError) else {}
            await _roll_back(kit, ctx, service.name, release.name, exc.message, health, switched)
            raise BranchlineError(
                f"{service.name} failed its health check; rolled back "
                f"{', '.join(switched) or 'nothing (it was the first service)'}",
                hint="The incident issue says what happened and what to do next: "
                "`branchline issues list`.",
            ) from None
        switched.append(service.name)
        await _note(kit, ctx, switched=switched)
        await ctx.log(f"{service.name}: {release.name} live at {deployment.url}")


async def _roll_back(
    kit: Kit, ctx: StepContext, failed: str, release: str, error: str,
    health: Mapping[str, Any], switched: list[str],
) -> None:  # fmt: skip
    rolled_back: list[dict[str, str]] = []
    for name in reversed(switched):  # newest first
        try:
            back = await kit.compute.rollback(name, ENVIRONMENT)
            rolled_back.append({"service": name, "to": back.release.name, "health": "ok"})
            await ctx.log(f"rolled back {name} to {back.release.name} (healthy)")
        except BranchlineError as exc:
            rolled_back.append({"service": name, "to": "-", "health": exc.message})
            await ctx.log(f"could not roll back {name}: {exc.message}")
    detail = await _detail(kit, ctx)
    issue = await kit.forge.create_issue(
        f"Production rollout of {_sha(ctx)[:8]} failed: {failed} unhealthy",
        incident_body(
            sha=_sha(ctx), run_id=ctx.run_id, failed=failed, release=release, error=error,
            health=health, rolled_back=rolled_back,
            compatible=bool(detail.get("preflight", {}).get("compatible", True)),
            restore_point=str(detail.get("restore_point") or ""),
        ),
        ["incident", "production"],
    )  # fmt: skip
    await kit.rollouts.finish(
        ctx.run_id, "rolled_back", failed_service=failed, error=error, health=dict(health),
        rolled_back=rolled_back, issue=issue,
    )  # fmt: skip
    await ctx.log(f"opened issue #{issue}")


async def finish(kit: Kit, ctx: StepContext) -> None:
    await kit.rollouts.finish(ctx.run_id, "success")
    await posting.status(kit, ctx, _sha(ctx), STATUS_CONTEXT, "success", "live in production")
    await posting.deployment(kit, ctx, ENVIRONMENT, "success", "live in production")
    await ctx.log("production rollout succeeded")
    for issue in await posting.close_incidents(kit, ctx):
        await ctx.log(f"closed incident issue #{issue}: production is healthy again")


async def failed(kit: Kit, ctx: StepContext) -> None:
    jobs = await ctx.jobs()
    rollout = next((j for j in jobs if j.name == "rollout"), None)
    error = (rollout.error if rollout else None) or "failed"
    before = await kit.rollouts.get(ctx.run_id)
    detail = dict(before.detail) if before else {}
    opened = detail.get("issue")
    # Stopped at a deadline, or after the restore point (the database may be half
    # migrated), with no issue yet: someone must look, and needs the way back.
    stuck = rollout is not None and rollout.error_code == "timed_out"
    if opened is None and ctx.sha and (stuck or detail.get("restore_point")):
        opened = await kit.forge.create_issue(
            f"Production rollout of {ctx.sha[:8]} stopped: {error}",
            stopped_body(sha=ctx.sha, run_id=ctx.run_id, error=error,
                         restore_point=str(detail.get("restore_point") or "")),
            ["incident", "production"],
        )  # fmt: skip
        await ctx.log(f"opened issue #{opened}")
    extra = {"issue": opened} if opened is not None else {}
    await kit.rollouts.finish(ctx.run_id, "failed", error=error, **extra)
    row = await kit.rollouts.get(ctx.run_id)
    if ctx.sha:
        state = "rolled back" if row and row.status == "rolled_back" else "stopped"
        await posting.status(kit, ctx, ctx.sha, STATUS_CONTEXT, "failure", f"{state}: {error}")
        await posting.deployment(kit, ctx, ENVIRONMENT, "failure", f"{state}: {error}")


# -- the incident issue ---------------------------------------------------------------


def incident_body(
    *,
    sha: str,
    run_id: int,
    failed: str,
    release: str,
    error: str,
    health: Mapping[str, Any],
    rolled_back: list[dict[str, str]],
    compatible: bool,
    restore_point: str,
) -> str:
    """What failed, what was done, and the next step of the reference's decision tree."""
    lines = [
        f"The production rollout of `{sha[:12]}` (run {run_id}) stopped: **{failed}** "
        f"(`{release}`) did not pass its health check. It never received traffic; "
        "the previous release kept serving.",
        "",
        f"Error: {error}",
        "",
    ]
    attempts = health.get("attempts") or []
    if attempts:
        lines += _attempts_table(attempts)
        lines.append(f"\nVerdict: {health.get('verdict', '')}\n")
    if rolled_back:
        lines.append("Rolled back automatically, newest first:")
        lines += [f"- {r['service']} -> `{r['to']}` (health: {r['health']})" for r in rolled_back]
    else:
        lines.append(f"Nothing else had been switched: {failed} was the first service.")
    lines += ["", "## Next step", ""]
    if compatible:
        lines += [
            "The migration is backward compatible (the live release passed its health "
            "check on a migrated copy before the rollout), so the code-only rollback above "
            "is complete: production serves the previous releases on the migrated database. "
            f"Fix {failed} and merge again. To see what serves production:",
            "",
            "    branchline deployments list --env production",
        ]
    else:
        lines += [
            "The migration is NOT backward compatible: the previous release may fail on "
            "the new schema. Restore the database to the moment before the migration, then "
            "redeploy:",
            "",
            f'    branchline restore --to "{restore_point}"',
            "    branchline rollback --all --env production",
        ]
    return "\n".join(lines) + "\n"


def stopped_body(*, sha: str, run_id: int, error: str, restore_point: str) -> str:
    """A rollout that stopped in a step (at its deadline, say): what is known, and
    how to go back when the database was being migrated."""
    lines = [
        f"The production rollout of `{sha[:12]}` (run {run_id}) stopped: {error}.",
        "",
        "No service was switched: the previous releases keep serving. Later rollouts "
        "are no longer blocked by this one.",
        "",
        "## Next step",
        "",
    ]
    if restore_point:
        lines += [
            "It stopped after the restore point, so the migration may have run in part. "
            "Check the schema; if it is broken, restore the database to the moment "
            "before the migration, then redeploy:",
            "",
            f'    branchline restore --to "{restore_point}"',
            "    branchline rollback --all --env production",
        ]
    else:
        lines.append(
            "It stopped before the restore point: production's database was not touched. "
            "Find what the step waited for (`branchline runs logs "
            f"{run_id}`), fix it and merge again."
        )
    return "\n".join(lines) + "\n"


def _attempts_table(attempts: list[dict[str, Any]]) -> list[str]:
    """Each attempt: its answer (a redirect's Location too), why it failed, and the
    start of what the release answered."""
    lines = ["| attempt | at | answer | why | body (first 300 bytes) |", "|---|---|---|---|---|"]
    for attempt in attempts:
        answer = str(attempt.get("display"))
        if attempt.get("location"):
            answer += f" → `{_cell(str(attempt['location']))}`"
        body = f"`{_cell(str(attempt['body']))}`" if attempt.get("body") else ""
        lines.append(
            f"| {attempt.get('number')} | {float(attempt.get('at') or 0):.1f} s | {answer} "
            f"| {_cell(str(attempt.get('reason') or ''))} | {body} |"
        )
    return lines


def _cell(text: str) -> str:
    """Text that stays in its table cell: one line, no column bar, no backtick."""
    return " ".join(text.split()).replace("|", "\\|").replace("`", "'")


ACTIONS: dict[str, KitAction] = {
    "production.start": start,
    "production.dns": dns,
    "production.build": build,
    "production.preflight": preflight,
    "production.restore_point": restore_point,
    "production.migrate": migrate,
    "production.deploy": deploy,
    "production.finish": finish,
    "production.failed": failed,
}
