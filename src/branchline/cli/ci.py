"""`branchline ci testing|preview|production|cleanup`: one pipeline inside a GitHub
Actions job (the workflows `branchline export github-actions` writes call these)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer

from branchline.cli.context import app_context

if TYPE_CHECKING:
    from rich.console import Console as RichConsole

    from branchline.operations.ci import Console as CiConsole
    from branchline.operations.ci import Outcome
    from branchline.operations.ci_event import ActionsJob

app = typer.Typer(
    help="Run one pipeline in a GitHub Actions job (state in BRANCHLINE_DATABASE_URL).",
    no_args_is_help=True,
)
WaitOption = Annotated[
    str,
    typer.Option(
        "--wait-for-testing",
        help="How long to wait for this commit's testing run (testing.yml) to pass, "
        "e.g. 30m; 0 to require it passed already.",
    ),
]


def _run(ctx: typer.Context, pipeline: str, wait: str = "0") -> None:
    import asyncio

    from branchline.edge import daemon
    from branchline.errors import BranchlineError
    from branchline.operations import ci, ci_event

    app = app_context(ctx)
    waiting = _seconds(wait)
    job = ci_event.from_env(os.environ)
    console = _console(app.output.json, app.output.notice)
    # Before anything could print them: the state's URL and the sealing key (GitHub
    # hides its secrets' values already, but not a password inside a URL).
    for name in ("BRANCHLINE_DATABASE_URL", "BRANCHLINE_SECRET_KEY"):
        if os.environ.get(name, ""):
            console.mask(os.environ[name])
    config = app.config()
    for value in sorted(config.secret_values()):  # what branchline.toml took from secrets
        console.mask(value)
    loaded = ci_event.load(pipeline, job, config.project.production_branch)
    if isinstance(loaded.target, ci_event.Skip):
        _finish(ctx, job, ci.skipped(pipeline, job, loaded.target.reason))
        return
    _require_shared_state()
    store = app.store()
    info = None
    if pipeline in ("preview", "production") and config.compute.provider == "local":
        # Local services are reached through the edge: started when it does not run.
        info, _started = daemon.ensure_running(store.location.state_dir, config.path)
    try:
        outcome = asyncio.run(ci.run(
            config, store, pipeline, job, loaded.target, console, head_repo=loaded.head_repo,
            wait_for_testing=waiting, edge_port=info.edge_port if info else None,
            dns_port=info.dns_port if info else None,
        ))  # fmt: skip
    except BranchlineError as exc:
        if job.summary_path is not None:  # the job's page says why too
            from branchline.operations import ci_report

            failed = ci.Outcome(pipeline, "failure", reason=exc.message, actions_run=job.run_url)
            ci_report.write_summary(job.summary_path, failed)
        raise
    _finish(ctx, job, outcome)


def _seconds(wait: str) -> float:
    from branchline.config.durations import parse_duration
    from branchline.errors import UsageError

    try:
        return parse_duration(wait).total_seconds()
    except ValueError as exc:
        raise UsageError(
            f"--wait-for-testing {wait!r}: {exc}", hint="Write a duration: 90s, 30m, 1h."
        ) from None


def _console(json_output: bool, note: Callable[[str], None]) -> CiConsole:
    """Lines and masks on stdout, where GitHub reads workflow commands; with --json
    (stdout is the answer's) on stderr."""
    from branchline.operations import ci, ci_report

    stream = sys.stderr if json_output else sys.stdout

    def line(text: str) -> None:
        stream.write(text + "\n")
        stream.flush()

    def mask(value: str) -> None:
        for command in ci_report.mask_commands(value):
            line(command)

    return ci.Console(line=line, mask=mask, note=note)


def _require_shared_state() -> None:
    from branchline.errors import UsageError

    if not os.environ.get("BRANCHLINE_DATABASE_URL", "").strip():
        # A runner's own disk is gone after the job: runs, previews and the testing
        # result a preview waits for must live in a Postgres every job reaches.
        raise UsageError(
            "BRANCHLINE_DATABASE_URL is not set: `branchline ci` keeps its state in a "
            "Postgres every job reaches",
            hint="Set the repository secret BRANCHLINE_DATABASE_URL (a postgresql:// URL); "
            "GitHub gives no secrets to pull requests from forks.",
        )


def _finish(ctx: typer.Context, job: ActionsJob, outcome: Outcome) -> None:
    from branchline.operations import ci_report

    if job.summary_path is not None:
        ci_report.write_summary(job.summary_path, outcome)
    _show(ctx, outcome)


def _show(ctx: typer.Context, outcome: Outcome) -> None:
    out = app_context(ctx).output

    def human(console: RichConsole) -> None:
        said = f"{outcome.pipeline}: {outcome.status}"
        if outcome.run_id is not None:
            said += f" (run {outcome.run_id})"
        if outcome.reason:
            said += f": {outcome.reason}"
        console.print(said, markup=False, highlight=False)
        for job in outcome.jobs:
            took = "" if job.seconds is None else f" in {job.seconds:.1f} s"
            console.print(f"  {job.name}: {job.status}{took}", markup=False, highlight=False)
        for service, url in sorted(outcome.urls.items()):
            console.print(f"  {service}: {url}", markup=False, highlight=False)

    out.emit(outcome.as_dict(), human)
    if outcome.status not in ("success", "skipped"):
        raise typer.Exit(1)


@app.command("testing")
def testing(ctx: typer.Context) -> None:
    """Test the pushed commit, or the pull request's head, on an ephemeral branch."""
    _run(ctx, "testing")


@app.command("preview")
def preview(ctx: typer.Context, wait_for_testing: WaitOption = "30m") -> None:
    """Create or update the pull request's preview once its commit's tests passed."""
    _run(ctx, "preview", wait_for_testing)


@app.command("production")
def production(ctx: typer.Context, wait_for_testing: WaitOption = "30m") -> None:
    """Roll the production branch's pushed commit out, once its tests passed."""
    _run(ctx, "production", wait_for_testing)


@app.command("cleanup")
def cleanup(ctx: typer.Context) -> None:
    """Remove a closed pull request's preview: services, DNS, secrets, branch."""
    _run(ctx, "cleanup")
