"""Running what an event started, in the foreground: the commands that record
events (push, pr open/sync/close) wait here until every run they caused, follow-ups
included, is over, and say how each went."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from branchline.cli.context import AppContext

if TYPE_CHECKING:
    from rich.console import Console

    from branchline.config import Config
    from branchline.store import Store
    from branchline.store import previews as preview_rows

WAIT_HELP = (
    "Only record the event and return; a running `branchline serve` (or worker) runs the pipelines."
)
FINISHED = ("success", "failure", "cancelled")


async def latest_run(store: Store, project: str) -> int:
    """The newest run's id (0 when there is none yet). Read it before recording an
    event: a running serve may start the event's runs at once, before the command
    that recorded it gets round to looking."""
    from branchline.store import runs as run_rows

    async with store.connect() as conn:
        latest = await run_rows.list_runs(conn, project, 1)
    return latest[0].id if latest else 0


async def run_pipelines(
    app: AppContext, config: Config, store: Store, *, after: int
) -> dict[str, Any]:
    """Hand the work to `branchline serve` (started in the background when nothing
    runs) and wait for it; with an edge-only daemon, run the pipelines here. Returns
    the runs started after run id `after` (see `latest_run`) and the previews."""
    import asyncio

    from branchline.edge import daemon
    from branchline.engine.engine import EngineOptions
    from branchline.operations.runtime import open_pipelines
    from branchline.pipelines.dispatch import wait_settled
    from branchline.store import previews as preview_rows
    from branchline.store import runs as run_rows

    before = daemon.read_info(store.location.state_dir)
    info, started = await asyncio.to_thread(
        daemon.ensure_running, store.location.state_dir, config.path
    )
    if started:
        app.output.notice(daemon.describe_start(info, resumed=before is not None))
    project = config.project.name
    since = after
    seen: dict[int, str] = {}

    async def on_tick() -> None:
        async with store.connect() as conn:
            runs = [r for r in await run_rows.list_runs(conn, project, 100) if r.id > since]
        for run in sorted(runs, key=lambda r: r.id):
            if seen.get(run.id) == run.status:
                continue
            if run.id not in seen:
                app.output.progress(f"run {run.id} {run.workflow} started ({run.triggered_by})")
            seen[run.id] = run.status
            if run.status in FINISHED and run.finished_at is not None:
                took = (run.finished_at - run.created_at).total_seconds()
                app.output.progress(f"run {run.id} {run.workflow}: {run.status} in {took:.1f} s")

    if info.workers:
        state_dir = store.location.state_dir
        await wait_settled(
            store, project, on_tick=on_tick, alive=lambda: daemon.read_info(state_dir) is not None
        )
    else:
        options = EngineOptions(pool_size=20, poll=0.5)
        async with open_pipelines(
            config,
            store,
            edge_port=info.edge_port,
            dns_port=info.dns_port,
            options=options,
            edge_bind=info.edge_bind,
        ) as pipelines:
            await pipelines.run_until_settled(on_tick=on_tick)
    async with store.connect() as conn:
        runs = [await run_rows.get_run(conn, run_id) for run_id in sorted(seen)]
        previews = await preview_rows.list_previews(conn, project)
    return {
        "runs": [
            {"id": r.id, "workflow": r.workflow, "status": r.status, "pr": r.pr, "sha": r.sha}
            for r in runs
            if r is not None
        ],
        "previews": [preview_dict(p) for p in previews if p.status != "deleted"],
    }


def preview_dict(row: preview_rows.PreviewRow) -> dict[str, Any]:
    return {
        "pr": row.pr,
        "status": row.status,
        "sha": row.sha,
        "urls": row.detail.get("urls", {}),
        "expires_at": row.expires_at,
    }


def show_outcome(console: Console, outcome: dict[str, Any], pr: int | None = None) -> None:
    from rich.markup import escape

    for run in outcome["runs"]:
        style = {"success": "green", "failure": "red"}.get(run["status"], "yellow")
        console.print(f"run {run['id']} {run['workflow']}: [{style}]{run['status']}[/]")
    for preview in outcome["previews"]:
        if pr is not None and preview["pr"] != pr:
            continue
        console.print(f"preview of #{preview['pr']} ({preview['status']}):")
        for service, url in sorted(preview["urls"].items()):
            console.print(f"  {service}: {escape(url)}")


def exit_on_failure(app: AppContext, outcome: dict[str, Any]) -> None:
    failed = [r for r in outcome["runs"] if r["status"] == "failure"]
    if failed:
        ids = ", ".join(str(r["id"]) for r in failed)
        app.output.notice(f"failed: run {ids}; see `branchline runs show {failed[0]['id']}`")
        raise typer.Exit(1)
