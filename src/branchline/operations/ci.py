"""`branchline ci <pipeline>`: one pipeline run to its end inside a GitHub Actions
job, without `serve`. The event is recorded once (its delivery id is the workflow
run's id and attempt), planned by the same routing as a webhook's
(`pipelines.dispatch.plan`), and run by the engine in this process, on a queue of
its own: other runners sharing the state database never take its jobs, nor it
theirs. The run's end is marked handled, so no `serve` on the same state acts on
it again (GitHub's own workflows start preview and production)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from branchline import events
from branchline.config import Config
from branchline.engine import logs as run_logs
from branchline.engine.engine import EngineOptions, is_sealed
from branchline.environment import TEST
from branchline.errors import BranchlineError, UsageError
from branchline.kit import Kit
from branchline.operations import ci_event
from branchline.operations.runtime import Pipelines, open_pipelines
from branchline.pipelines import forks, testing
from branchline.pipelines.dispatch import Planned, ensure_commit, plan
from branchline.providers.forge import ApprovalGate
from branchline.store import Store, deliveries
from branchline.store import artifacts as artifact_rows
from branchline.store import forge as forge_rows
from branchline.store import previews as preview_rows
from branchline.store import runs as run_rows

FINISHED = ("success", "failure", "cancelled")
Emit = Callable[[str], None]


@dataclass(frozen=True)
class JobResult:
    name: str
    status: str
    seconds: float | None
    error: str | None


@dataclass
class Outcome:
    """What `branchline ci` reports: on the console, as JSON, in the job summary."""

    pipeline: str
    status: str  # success, failure, cancelled, skipped
    sha: str | None = None
    pr: int | None = None
    ref: str | None = None
    run_id: int | None = None
    reason: str | None = None
    jobs: list[JobResult] = field(default_factory=list)
    urls: dict[str, str] = field(default_factory=dict)
    actions_run: str | None = None  # the GitHub Actions run's address

    def as_dict(self) -> dict[str, object]:
        return {
            "pipeline": self.pipeline, "status": self.status, "run_id": self.run_id,
            "sha": self.sha, "pr": self.pr, "ref": self.ref, "reason": self.reason,
            "jobs": [{"name": j.name, "status": j.status, "seconds": j.seconds,
                      "error": j.error} for j in self.jobs],
            "urls": self.urls, "actions_run": self.actions_run,
        }  # fmt: skip


@dataclass
class Console:
    """Where the run's lines and GitHub's mask commands go."""

    line: Emit
    mask: Emit  # a value GitHub must hide from now on
    note: Emit  # what branchline itself says (progress)


def skipped(pipeline: str, job: ci_event.ActionsJob, reason: str) -> Outcome:
    return Outcome(pipeline, "skipped", reason=reason, actions_run=job.run_url)


async def run(
    config: Config, store: Store, pipeline: str, job: ci_event.ActionsJob,
    target: events.Event, console: Console, *, head_repo: str = "", wait_for_testing: float,
    edge_port: int | None = None, dns_port: int | None = None,
) -> Outcome:  # fmt: skip
    """Run `pipeline` for the job's event (`ci_event.load`) to its end, or say why
    there is nothing to do."""
    outcome = Outcome(pipeline, "skipped", actions_run=job.run_url)
    await store.start()
    options = EngineOptions(pool_size=20, poll=0.5, queue=f"ci-{job.delivery_id(pipeline)}")
    async with open_pipelines(
        config, store, edge_port=edge_port, dns_port=dns_port, options=options
    ) as pipelines:
        kit = pipelines.kit
        async with store.connect() as conn:
            # GitHub's webhook body, handed over by the job instead of over HTTP (its
            # delivery id, gha-<run>-<attempt>-<pipeline>, tells them apart).
            row = await deliveries.record_github(
                conn, kit.project, target, delivery_id=job.delivery_id(pipeline),
                source="webhook", head_repo=head_repo,
                approve=not isinstance(kit.forge, ApprovalGate),
            ) or await forge_rows.by_delivery(conn, job.delivery_id(pipeline))  # fmt: skip
        assert row is not None
        run_id = await _existing_run(store, row.id, pipeline)
        if run_id is None:
            planned = await _plan(kit, store, pipeline, target, console, wait_for_testing)
            if isinstance(planned, ci_event.Skip):
                await _processed(store, row.id, planned.reason)
                outcome.reason = planned.reason
                return outcome
            await _masks_of_scope(kit, planned.secret_scope, console)
            run_id = await _submit(pipelines, row.id, planned)
            console.note(f"run {run_id} {pipeline}: {planned.triggered_by}")
        else:
            console.note(f"this job's event started run {run_id} before: following it")
            found = await _get_run(store, run_id)
            await _masks_of_scope(kit, found.secret_scope, console)
        await _follow(pipelines, run_id, console)
        return await _outcome(kit, run_id, outcome)


async def _existing_run(store: Store, event_id: int, workflow: str) -> int | None:
    async with store.connect() as conn:
        return await run_rows.run_for_event(conn, event_id, workflow)


async def _processed(store: Store, event_id: int, note: str | None = None) -> None:
    async with store.connect() as conn:
        await forge_rows.mark_processed(conn, event_id, note)


async def _get_run(store: Store, run_id: int) -> run_rows.RunRow:
    async with store.connect() as conn:
        found = await run_rows.get_run(conn, run_id)
    assert found is not None
    return found


# -- planning -------------------------------------------------------------------------


async def _plan(
    kit: Kit, store: Store, pipeline: str, event: events.Event, console: Console,
    wait_for_testing: float,
) -> Planned | ci_event.Skip:  # fmt: skip
    """The run `event` starts for `pipeline`, by dispatch's own routing."""
    pull = None
    number = getattr(event, "number", None)
    if number is not None:
        pull = await kit.forge.pull_request(number)
    # What dispatch does for a fork's pull request, the same way.
    changed = isinstance(event, events.PullRequestChanged) and event.is_update
    if pull is not None and changed and pipeline == "testing" and not kit.trusts(pull):
        assert isinstance(event, events.PullRequestChanged)
        await forks.awaiting_approval(kit, pull, event)
    if pull is not None and isinstance(event, events.PullRequestApproved):
        await forks.confirm(kit, pull, event)
    if pipeline in ("testing", "cleanup"):
        found = plan(event, kit, pull)
    else:
        sha = _commit_of(event)
        tested = await _tested(store, kit.project, sha, console, wait_for_testing)
        ref = event.branch if isinstance(event, events.Push) else None
        finished = events.WorkflowFinished(tested, testing.NAME, "success", sha, ref, number)
        approved = pull is not None and await kit.may_preview(pull, sha)
        found = plan(finished, kit, pull, approved=approved)
    chosen = [p for p in found if p.workflow.name == pipeline]
    if not chosen:
        return ci_event.Skip(_why_nothing(pipeline, event, pull is not None))
    return chosen[0]


def _commit_of(event: events.Event) -> str:
    """The commit a preview or a rollout would deploy."""
    if isinstance(event, events.Push):
        return event.after
    if isinstance(event, events.PullRequestChanged):
        return event.head_sha
    if isinstance(event, events.PullRequestApproved):
        return event.sha
    raise UsageError(f"a {event.kind} event deploys no commit", hint="See `branchline ci --help`.")


def _why_nothing(pipeline: str, event: events.Event, known: bool) -> str:
    number = getattr(event, "number", None)
    if pipeline == "preview" and number is not None:
        if not known:
            return f"pull request #{number} is not known to the code host: no preview"
        return (
            f"pull request #{number} gets no preview now: closed, moved on to a newer "
            "commit, or from a fork and not approved (label it `safe-to-preview`)"
        )
    return f"this event starts no {pipeline} run"


async def _tested(store: Store, project: str, sha: str, console: Console, wait: float) -> int:
    """The id of the testing run that passed on `sha`, waiting up to `wait` seconds for
    one that is still going (testing.yml runs beside this workflow)."""
    deadline = time.monotonic() + wait
    said = False
    while True:
        async with store.connect() as conn:
            found = await run_rows.of_commit(conn, project, testing.NAME, sha)
        passed = [r for r in found if r.status == "success"]
        if passed:
            return passed[0].id
        active = [r for r in found if r.status not in FINISHED]
        if found and not active:
            latest = found[0]
            raise BranchlineError(
                f"testing run {latest.id} of {sha[:12]} ended {latest.status}: nothing is "
                "deployed from a commit whose tests did not pass",
                hint=f"See `branchline runs show {latest.id}`; push a fix, or re-run the "
                "testing workflow.",
            )
        if time.monotonic() >= deadline:
            raise BranchlineError(
                f"no testing run of {sha[:12]} passed" + (f" within {wait:.0f} s" if wait else ""),
                hint="testing.yml records one in the same state database "
                "(BRANCHLINE_DATABASE_URL): check that it runs for this commit, or raise "
                "--wait-for-testing.",
            )
        if not said:
            console.note(f"waiting for the testing run of {sha[:12]} to pass")
            said = True
        await asyncio.sleep(min(2.0, max(0.0, deadline - time.monotonic())))


# -- running ----------------------------------------------------------------------------


async def _masks_of_scope(kit: Kit, scope: str | None, console: Console) -> None:
    """Every secret value the run gets, hidden before any of its output is printed;
    generated ones are made now (once) so that they are among them."""
    if not scope:
        return
    if scope == TEST or scope.startswith("preview-"):
        await kit.secrets.ensure_generated_in(scope)
    for value in (await kit.secrets.get_all(scope)).values():
        console.mask(value)


async def _submit(pipelines: Pipelines, event_id: int, planned: Planned) -> int:
    kit, engine = pipelines.kit, pipelines.engine
    if planned.sha:
        await asyncio.to_thread(ensure_commit, kit.repo, planned.sha)
    # GitHub's concurrency groups order and cancel these runs (a cancelled job's run
    # is cancelled here, see `_follow`); a branchline group would wait forever behind
    # a run whose runner GitHub killed.
    workflow = dataclasses.replace(planned.workflow, concurrency_group=None,
                                   cancel_in_progress=False)  # fmt: skip
    run_id = await engine.submit(
        workflow, repo=kit.repo if planned.sha else None, event_id=event_id,
        sha=planned.sha, base_sha=planned.base_sha, ref=planned.ref, pr=planned.pr,
        secret_scope=planned.secret_scope, triggered_by=f"{planned.triggered_by} (GitHub Actions)",
    )  # fmt: skip
    await _processed(kit.store, event_id)
    return run_id


async def _follow(pipelines: Pipelines, run_id: int, console: Console) -> None:
    """Work the run's jobs here and print their lines until it ends. SIGINT or SIGTERM
    (GitHub cancelling the job) cancels the run: its cleanup still runs."""
    engine = pipelines.engine
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[bool]] = []

    def stop() -> None:
        if not stopping:
            console.note(f"cancelling run {run_id}: its cleanup still runs")
            stopping.append(loop.create_task(engine.cancel(run_id, by="GitHub Actions")))

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop)
    worker = asyncio.create_task(engine.run_worker(concurrency=8, install_signal_handlers=False))
    reader = asyncio.create_task(_print_lines(pipelines, run_id, console))
    try:
        await asyncio.wait({worker, reader}, return_when=asyncio.FIRST_COMPLETED)
        if not reader.done():  # the worker stopped first: the run cannot go on
            reader.cancel()
            worker.result()  # its error, if it had one
            raise BranchlineError(
                f"the job worker stopped before run {run_id} ended",
                hint="Check that the state database (BRANCHLINE_DATABASE_URL) stays "
                "reachable from the runner; `branchline runs show` tells where the run is.",
            )
        reader.result()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
    async with pipelines.kit.store.connect() as conn:
        ended = await forge_rows.by_delivery(conn, f"run-{run_id}-completed")
        if ended is not None and ended.processed_at is None:
            await forge_rows.mark_processed(conn, ended.id, "handled by GitHub Actions")


async def _print_lines(pipelines: Pipelines, run_id: int, console: Console) -> None:
    """The run's log lines as they come, until it ends."""
    masked: set[str] = set()
    async with pipelines.kit.store.connect() as conn:
        jobs = {j.id: j.name for j in await run_rows.jobs_of(conn, run_id)}
    async for line in run_logs.read(pipelines.engine.store, run_id, follow=True):
        await _mask_artifacts(pipelines, run_id, masked, console)
        # Each line behind its job's name: output of the tested code can never start
        # a line, so it cannot issue GitHub workflow commands.
        console.line(f"{jobs.get(line.job_id or 0, 'run')} | {line.content}")


async def _mask_artifacts(
    pipelines: Pipelines, run_id: int, masked: set[str], console: Console
) -> None:
    """A sensitive artifact (a branch's DATABASE_URL) hidden as soon as it exists."""
    async with pipelines.kit.store.connect() as conn:
        found = await artifact_rows.of_run(conn, run_id)
    for artifact in found:
        if not artifact.sensitive or artifact.value is None or artifact.name in masked:
            continue
        masked.add(artifact.name)
        value = artifact.value
        sealer = pipelines.engine.sealer
        if sealer is not None and is_sealed(value):
            value = sealer.unseal(value, f"artifact:{artifact.name}")
        console.mask(value)


async def _outcome(kit: Kit, run_id: int, outcome: Outcome) -> Outcome:
    async with kit.store.connect() as conn:
        found = await run_rows.get_run(conn, run_id)
        jobs = await run_rows.jobs_of(conn, run_id)
        pr = found.pr if found is not None else None
        preview = await preview_rows.get(conn, kit.project, pr) if pr is not None else None
    if found is None:
        raise UsageError(f"run {run_id} is gone", hint="See `branchline runs list`.")
    outcome.status, outcome.run_id = found.status, run_id
    outcome.sha, outcome.pr, outcome.ref = found.sha, found.pr, found.ref
    outcome.jobs = [JobResult(j.name, j.status, _seconds(j), j.error) for j in jobs]
    if preview is not None and preview.status != "deleted" and outcome.pipeline == "preview":
        outcome.urls = dict(preview.detail.get("urls", {}))
    return outcome


def _seconds(job: run_rows.JobRow) -> float | None:
    if job.started_at is None or job.finished_at is None:
        return None
    return round((job.finished_at - job.started_at).total_seconds(), 1)
