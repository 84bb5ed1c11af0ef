"""`branchline runs` and `branchline worker`: workflow runs and the workers that run them."""

from __future__ import annotations

import getpass
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from branchline import naming
from branchline.cli.context import Session, app_context
from branchline.cli.follow import WAIT_HELP, exit_on_failure, run_pipelines, show_outcome
from branchline.errors import UsageError

if TYPE_CHECKING:
    from rich.console import Console

    from branchline.engine.engine import Engine
    from branchline.store import runs as rows

app = typer.Typer(
    help="Workflow runs: list, show, logs, cancel, rerun, prune.", no_args_is_help=True
)
T = TypeVar("T")
STATUS_STYLE = {
    "success": "green", "failure": "red", "cancelled": "yellow", "skipped": "dim",
    "running": "cyan", "queued": "blue", "waiting": "blue", "pending": "dim",
}  # fmt: skip


def _with_engine(ctx: typer.Context, work: Callable[[Engine], Awaitable[T]]) -> T:
    return app_context(ctx).run(lambda session: work(session.need_engine()), engine=True)


def _duration(start: datetime | None, end: datetime | None) -> str:
    if start is None:
        return ""
    if end is None:
        return "running"
    return f"{(end - start).total_seconds():.1f} s"


def _styled(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"


def _run_dict(run: rows.RunRow) -> dict[str, Any]:
    return {
        "id": run.id,
        "workflow": run.workflow,
        "status": run.status,
        "triggered_by": run.triggered_by,
        "ref": run.ref,
        "sha": run.sha,
        "pr": run.pr,
        "concurrency_group": run.concurrency_group,
        "cancel_requested": run.cancel_requested,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
    }


async def _get(engine: Engine, run_id: int) -> rows.RunRow:
    from branchline.store import runs as rows

    async with engine.store.connect() as conn:
        run = await rows.get_run(conn, run_id)
    if run is None or run.project != engine.project:
        raise UsageError(f"there is no run {run_id}", hint="See `branchline runs list`.")
    return run


@app.command("list")
def list_runs(
    ctx: typer.Context, limit: Annotated[int, typer.Option(help="How many, newest first.")] = 30
) -> None:
    """The latest runs, newest first."""
    from rich.markup import escape
    from rich.table import Table

    from branchline.store import runs as rows

    async def work(engine: Engine) -> list[rows.RunRow]:
        async with engine.store.connect() as conn:
            return await rows.list_runs(conn, engine.project, limit)

    found = _with_engine(ctx, work)

    def human(console: Console) -> None:
        table = Table("run", "workflow", "status", "trigger", "ref", "commit", "duration")
        for run in found:
            table.add_row(
                str(run.id), run.workflow, _styled(run.status),
                escape(naming.printable(run.triggered_by)),
                escape(naming.printable(run.ref or "-", 80)), (run.sha or "-")[:8],
                _duration(run.started_at, run.finished_at),
            )  # fmt: skip
        console.print(table if found else "no runs yet")

    app_context(ctx).output.emit([_run_dict(r) for r in found], human)


@app.command("show")
def show(ctx: typer.Context, run_id: int) -> None:
    """A run's jobs and steps with statuses and durations, and its artifacts."""
    from rich.markup import escape
    from rich.tree import Tree

    from branchline.store import artifacts as artifact_rows
    from branchline.store import runs as rows

    async def work(engine: Engine) -> dict[str, Any]:
        run = await _get(engine, run_id)
        async with engine.store.connect() as conn:
            jobs = await rows.jobs_of(conn, run_id)
            steps = {job.id: await rows.steps_of(conn, job.id) for job in jobs}
            artifacts = await artifact_rows.of_run(conn, run_id)
        return {
            **_run_dict(run),
            "jobs": [
                {
                    "name": j.name, "status": j.status, "needs": j.needs, "run_if": j.run_if,
                    "error": j.error, "attempt": j.attempt, "worker": j.worker,
                    "started_at": j.started_at, "finished_at": j.finished_at,
                    "steps": [
                        {"name": s.name, "status": s.status, "exit_code": s.exit_code,
                         "started_at": s.started_at, "finished_at": s.finished_at}
                        for s in steps[j.id]
                    ],
                }
                for j in jobs
            ],
            "artifacts": [
                {"name": a.name, "value": "***" if a.sensitive else a.value,
                 "expires_at": a.expires_at}
                for a in artifacts
            ],
        }  # fmt: skip

    data = _with_engine(ctx, work)

    def human(console: Console) -> None:
        title = f"run {data['id']} {escape(data['workflow'])} {_styled(data['status'])}"
        tree = Tree(f"{title}  [dim]{escape(data['triggered_by'])}[/dim]")
        for job in data["jobs"]:
            label = f"{escape(job['name'])} {_styled(job['status'])} "
            label += _duration(job["started_at"], job["finished_at"])
            if job["error"]:
                label += f"  [dim]{escape(job['error'])}[/dim]"
            branch = tree.add(label)
            for step in job["steps"]:
                branch.add(
                    f"{escape(step['name'])} {_styled(step['status'])} "
                    f"{_duration(step['started_at'], step['finished_at'])}"
                )
        for artifact in data["artifacts"]:
            tree.add(f"artifact {escape(artifact['name'])} = {escape(str(artifact['value']))}")
        console.print(tree)

    app_context(ctx).output.emit(data, human)


@app.command("logs")
def logs(
    ctx: typer.Context,
    run_id: int,
    job: Annotated[str | None, typer.Option(help="Only this job's lines.")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream until it ends.")] = False,
) -> None:
    """A run's logs (secrets already masked), optionally followed live."""
    from rich.markup import escape

    from branchline.engine import logs as run_logs
    from branchline.store import runs as rows

    out = app_context(ctx).output

    async def work(engine: Engine) -> None:
        await _get(engine, run_id)
        job_id = None
        if job is not None:
            async with engine.store.connect() as conn:
                found = {j.name: j.id for j in await rows.jobs_of(conn, run_id)}
            if job not in found:
                raise UsageError(
                    f"run {run_id} has no job {job!r}", hint=f"Its jobs: {', '.join(found)}."
                )
            job_id = found[job]
        async for line in run_logs.read(engine.store, run_id, job_id=job_id, follow=follow):
            if out.json:
                record = {"at": line.at, "job_id": line.job_id, "stream": line.stream,
                          "line": line.content}  # fmt: skip
                print(json.dumps(record, default=str), flush=True)
            else:
                out.out.print(
                    f"[dim]{line.at:%H:%M:%S}[/dim] {escape(line.content)}", highlight=False
                )

    _with_engine(ctx, work)


@app.command("cancel")
def cancel(ctx: typer.Context, run_id: int) -> None:
    """Stop a run: running steps get SIGTERM then SIGKILL; `always` jobs still run."""
    done = _with_engine(ctx, lambda engine: _cancel(engine, run_id))
    app_context(ctx).output.emit(
        {"run": run_id, "cancel_requested": done},
        lambda c: c.print(f"cancelling run {run_id}" if done else f"run {run_id} is already over"),
    )


async def _cancel(engine: Engine, run_id: int) -> bool:
    from branchline.operations import runs as runs_ops

    await _get(engine, run_id)
    who = f"`branchline runs cancel` ({getpass.getuser()})"
    return (await runs_ops.cancel(engine, run_id, who)).done


@app.command("prune")
def prune(ctx: typer.Context) -> None:
    """Delete finished runs, logs and artifacts older than `[retention]` (30 days by
    default; never a running run, never those of production's live commit), and job
    checkouts left by workers that died. Workers do this by themselves every 10 min."""
    from branchline.engine.engine import EngineOptions
    from branchline.operations.runtime import configured

    app = app_context(ctx)
    options = configured(EngineOptions(), app.config())
    data = app.run(lambda session: session.need_engine().prune(), engine=options)

    def human(console: Console) -> None:
        console.print(
            f"deleted {data['runs']} runs, {data['log_rows']} log rows, "
            f"{data['artifacts']} artifacts; removed {len(data['checkouts'])} checkouts"
        )

    app.output.emit(data, human)


@app.command("rerun")
def rerun(
    ctx: typer.Context,
    run_id: int,
    no_wait: Annotated[bool, typer.Option("--no-wait", help=WAIT_HELP)] = False,
) -> None:
    """Run the same workflow on the same commit again, as a new run, planned from that
    commit's branchline.toml as it reads now. Waits for it (starting `branchline serve`
    in the background when none runs) unless --no-wait."""
    from branchline.edge import daemon
    from branchline.operations import runs as runs_ops

    app = app_context(ctx)

    async def work(session: Session) -> tuple[int, dict[str, Any] | None]:
        engine = session.need_engine()
        await _get(engine, run_id)
        started = await runs_ops.rerun(session.kit, engine, run_id)
        assert started.run_id is not None
        app.output.progress(f"run {started.run_id} started (rerun of {run_id})")
        if no_wait:
            info = daemon.read_info(session.store.location.state_dir)
            if info is None or not info.workers:
                app.output.notice(
                    "queued; no `branchline serve` runs to work on it: start one with "
                    "`branchline serve --detach` (or run `branchline worker`)"
                )
            return started.run_id, None
        outcome = await run_pipelines(app, session.config, session.store, after=started.run_id - 1)
        return started.run_id, outcome

    new, outcome = app.run(work, engine=True)

    def human(console: Console) -> None:
        console.print(f"run {new} (rerun of {run_id})")
        if outcome is not None:
            show_outcome(console, outcome, None)

    data: dict[str, Any] = {"run": new, "rerun_of": run_id}
    app.output.emit(data if outcome is None else {**data, **outcome}, human)
    if outcome is not None:
        exit_on_failure(app, outcome)


def worker(
    ctx: typer.Context,
    concurrency: Annotated[int, typer.Option(help="Jobs run at once by this worker.")] = 2,
) -> None:
    """Run the pipelines: turn recorded events (pushes, pull requests) into runs and work
    the job queue until interrupted. Start more on any machine that reaches the same
    state database (BRANCHLINE_DATABASE_URL) to scale out."""
    import asyncio

    from branchline.edge import daemon
    from branchline.engine.engine import EngineOptions
    from branchline.operations.runtime import open_pipelines

    if concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    app_ctx = app_context(ctx)
    config = app_ctx.config()
    store = app_ctx.store()

    async def main() -> None:
        await store.start()
        info, started = await asyncio.to_thread(
            daemon.ensure_running, store.location.state_dir, config.path, workers=False
        )
        if started:
            app_ctx.output.notice(f"started the edge in the background on port {info.edge_port}")
        app_ctx.output.progress(f"worker started (concurrency {concurrency}); Ctrl-C stops it")
        options = EngineOptions(pool_size=3 * concurrency + 6)
        async with open_pipelines(
            config,
            store,
            edge_port=info.edge_port,
            dns_port=info.dns_port,
            options=options,
            edge_bind=info.edge_bind,
        ) as pipelines:
            await pipelines.run_forever(concurrency=concurrency)

    asyncio.run(main())
