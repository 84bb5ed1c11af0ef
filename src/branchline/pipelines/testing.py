"""testing: every push and every pull request update.

    database   copy production into an ephemeral branch (pr-8-1a2b3c4d) holding what the
               jobs' `data` asks for (masked rows, the schema only, a fresh
               database), migrate it, then run their `seed` command if any
    <tests>    each [tests.<job>] in parallel, when its paths changed; jobs with
               `database` get the branch's DATABASE_URL, `own_branch` ones (E2E)
               a branch of their own (pr-8-e2e)
    cleanup    always: delete the ephemeral branches, even after a failure
    report     always: the commit status, and on success the artifact a preview needs

One run per pull request (or branch) at a time: a newer commit cancels the older run.
"""

from __future__ import annotations

import json

from branchline import naming
from branchline.config import Config, JobConfig, ServiceConfig
from branchline.engine.model import Call, Command, Job, RunIf, Step, Workflow
from branchline.engine.runner import StepContext
from branchline.kit import Kit
from branchline.pipelines import posting
from branchline.pipelines.actions import DATABASE_URL, KitAction

NAME = "testing"
REPORT = "testing-report"  # the artifact the preview pipeline requires
EPHEMERAL_HOURS = 24.0  # a branch a crash left behind expires (gc deletes it)
RESERVED = ("database", "cleanup", "report")


def workflow(
    config: Config, *, sha: str, pr: int | None = None, branch: str | None = None,
    prefix: str = "",
) -> Workflow:  # fmt: skip
    """The testing run of `sha`, for pull request `pr` or a push to `branch`."""
    if pr is not None:
        ephemeral, e2e = naming.branch_for_pr_commit(pr, sha), naming.e2e_branch_for_pr(pr)
        group = f"testing-pr-{pr}"
    else:
        assert branch is not None, "a testing run is for a pull request or a branch"
        ephemeral = naming.branch_for_push(branch, sha)
        e2e, group = naming.e2e_branch_for(ephemeral), f"testing-{naming.slug(branch)}"
    shared = [s for s in config.tests.values() if s.database and not s.own_branch]
    # The shared branch's role may create databases when a job on it asks for that.
    createdb = any(s.createdb for s in shared)
    status = Step("status", Call("forge.status", {"state": "pending", "description": "testing"}))
    database = Job(
        "database",
        (status, *_branch_steps(ephemeral, shared[0] if shared else None, createdb=createdb)),
        checkout=False,
    )
    tests = [job for spec in config.tests.values() for job in _test_jobs(config, spec, e2e, prefix)]
    names = ("database", *(job.name for job in tests))
    cleanup = Job(
        "cleanup",
        (Step("delete branches", Call("branch.delete", {"names": [ephemeral, e2e]})),),
        needs=names, run_if=RunIf.ALWAYS, checkout=False,
    )  # fmt: skip
    report = Job(
        "report",
        (Step("report", Call("testing.report", {"tests": list(names)})),),
        needs=(*names, "cleanup"), run_if=RunIf.ALWAYS, checkout=False,
    )  # fmt: skip
    return Workflow(
        NAME, (database, *tests, cleanup, report),
        concurrency_group=group, cancel_in_progress=True,
    )  # fmt: skip


def _test_jobs(config: Config, spec: JobConfig, e2e_branch: str, prefix: str) -> list[Job]:
    if not spec.per_service:
        return [_test_job(config, spec, e2e_branch, prefix)]
    # The reference runs unit tests only for the services whose files changed.
    return [
        _test_job(config, spec, e2e_branch, prefix, service)
        for service in config.services_in_deploy_order()
    ]


def _test_job(
    config: Config, spec: JobConfig, e2e_branch: str, prefix: str,
    service: ServiceConfig | None = None,
) -> Job:  # fmt: skip
    name = spec.name if spec.name not in RESERVED else f"test-{spec.name}"
    args = tuple(spec.command)
    paths = spec.paths
    env: dict[str, str] = {}
    if service is not None:
        name = f"{name}-{service.name}"
        args = tuple(
            a.replace("{service_path}", service.path).replace("{service}", service.name)
            for a in args
        )
        paths = (*service.paths, *spec.paths)
        env["BRANCHLINE_SERVICE"] = service.name
    command = Command(
        args=args,
        env=env,
        cwd=prefix.rstrip("/") or None,
        timeout=spec.timeout.total_seconds(),
        secrets=tuple(config.secrets.test.names),
        env_from={"DATABASE_URL": f"{name}:{DATABASE_URL}" if spec.own_branch else DATABASE_URL}
        if spec.database
        else {},
    )
    steps: list[Step] = []
    needs: tuple[str, ...] = ()
    if spec.own_branch:
        steps += _branch_steps(
            e2e_branch, spec, createdb=spec.createdb, publish=f"{name}:{DATABASE_URL}"
        )
    elif spec.database:
        needs = ("database",)
    steps.append(Step(name, command))
    return Job(name, tuple(steps), needs=needs, paths=tuple(f"{prefix}{p}" for p in paths))


def _branch_steps(
    branch: str, spec: JobConfig | None, *, createdb: bool, publish: str = DATABASE_URL
) -> list[Step]:
    """Make `branch` with the data `spec` asks for, migrate it, then seed it."""
    data = spec.data if spec is not None else "copy"
    steps = [
        Step("branch", Call("branch.create", {
            "name": branch, "hours": EPHEMERAL_HOURS, "publish": publish,
            "createdb": createdb, "data": data,
        })),
        Step("migrate", Call("branch.migrate", {"name": branch})),
    ]  # fmt: skip
    if spec is not None and spec.seed is not None:
        steps.append(Step("seed", Call("branch.seed", {
            "name": branch, "command": list(spec.seed), "timeout": spec.timeout.total_seconds(),
        })))  # fmt: skip
    return steps


async def report(kit: Kit, ctx: StepContext, *, tests: list[str]) -> None:
    """Set the commit status from the jobs' outcomes; on success publish the report
    the preview pipeline requires (kept 7 days)."""
    jobs = {job.name: job.status for job in await ctx.jobs()}
    outcome = {name: jobs.get(name, "missing") for name in tests}
    failed = sorted(n for n, s in outcome.items() if s not in ("success", "skipped"))
    if failed:
        state, text = "failure", f"failed: {', '.join(failed)}"
        if any(outcome[n] == "cancelled" for n in failed):
            state, text = "error", "cancelled"
    else:
        state, text = "success", "all jobs passed"
    if ctx.sha:
        await posting.status(kit, ctx, ctx.sha, "branchline/testing", state, text)
    await ctx.log(f"testing {state}: {text}")
    if not failed:
        body = {"run_id": ctx.run_id, "sha": ctx.sha, "pr": ctx.pr, "jobs": outcome}
        await ctx.publish(REPORT, json.dumps(body, sort_keys=True), days=7)


ACTIONS: dict[str, KitAction] = {"testing.report": report}
