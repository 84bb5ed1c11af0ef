"""`branchline stop | down`: stopping what runs, by how much.

stop        serve's workers (no job runs); the edge keeps serving the services
stop --all  serve itself too: edge, DNS, supervisor (services keep running)
down        everything the project started: serve, services, branch clusters,
            spares, the state database; the data stays on disk
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from branchline.cli.context import app_context

if TYPE_CHECKING:
    from rich.console import Console

    from branchline.operations import lifecycle


def stop(
    ctx: typer.Context,
    every: Annotated[
        bool, typer.Option("--all", help="Stop the edge, DNS and supervisor too.")
    ] = False,
) -> None:
    """Stop the background serve's workers: no job runs until a command needs them
    (or `branchline serve --detach`). Its edge keeps serving production and the
    previews; --all stops it too. Services keep running either way (`branchline
    down` stops everything)."""
    from branchline.edge import daemon

    app = app_context(ctx)
    state_dir = app.store().location.state_dir
    info = daemon.read_info(state_dir)
    if every:
        stopped = daemon.stop(state_dir)
        app.output.emit(
            {"stopped": stopped, "workers": bool(info and info.workers), "edge": stopped},
            lambda c: c.print(
                "serve stopped: workers, edge and DNS (services keep running; "
                "`branchline down` stops them)"
                if stopped
                else "nothing was running"
            ),
        )
        return
    stopped = daemon.stop_workers(state_dir)

    def human(console: Console) -> None:
        if info is None:
            console.print("nothing was running")
            return
        said = "workers stopped" if stopped else "no workers were running"
        console.print(
            f"{said}; the edge keeps serving on port {info.edge_port} "
            "(`branchline stop --all` stops it too)"
        )

    app.output.emit({"stopped": stopped, "workers": stopped, "edge": False}, human)


def down(ctx: typer.Context) -> None:
    """Stop everything this project started: serve (edge, DNS, workers), every
    service, the database branches' and spares' servers, the state database. The
    data stays on disk; the next command starts what it needs (`branchline serve`
    starts the live services again). Running it twice is fine."""
    import asyncio

    from branchline.kit import Kit
    from branchline.operations import lifecycle

    app = app_context(ctx)
    config = app.config()
    store = app.store()

    async def work() -> lifecycle.Down:
        # No store.start(): down must not start the state database just to stop it.
        kit = Kit.build(config, store)
        try:
            return await lifecycle.down(kit)
        finally:
            await kit.aclose()

    done = asyncio.run(work())

    def human(console: Console) -> None:
        if done.serve:
            console.print("stopped serve (edge, DNS, workers)")
        if done.services:
            console.print(f"stopped {len(done.services)} service process trees: "
                          + ", ".join(done.services), markup=False)  # fmt: skip
        if done.clusters:
            console.print(f"stopped {len(done.clusters)} database servers: "
                          + ", ".join(done.clusters), markup=False)  # fmt: skip
        if done.state_database == "stopped":
            console.print("stopped the state database")
        if not done.stopped_anything:
            console.print("nothing was running")
        console.print(
            f"left on disk: {done.state_dir} ({human_size(done.bytes_on_disk)}): the "
            "branches' data, releases, logs and state; remove that directory to forget "
            "everything",
            markup=False,
        )

    app.output.emit(done.as_dict(), human)


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")
