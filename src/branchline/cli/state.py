"""`branchline state`: the embedded control-plane Postgres."""

from __future__ import annotations

import typer

from branchline.cli.context import app_context

app = typer.Typer(help="The control-plane state database.", no_args_is_help=True)


@app.command("start")
def start(ctx: typer.Context) -> None:
    """Start the state database (and apply pending migrations)."""
    import asyncio

    ctx_app = app_context(ctx)
    store = ctx_app.store()
    report = asyncio.run(store.start())
    data = {
        "kind": report.kind,
        "url": report.display_url,
        "was": report.was,
        "start_seconds": round(report.seconds, 3),
    }
    ctx_app.output.emit(
        data,
        lambda c: c.print(
            f"state database running at {report.display_url} ({report.seconds:.2f} s)"
        ),
    )


@app.command("stop")
def stop(ctx: typer.Context) -> None:
    """Stop the embedded state database. Safe to run when it is not running."""
    ctx_app = app_context(ctx)
    stopped = ctx_app.store().stop()
    ctx_app.output.emit(
        {"stopped": stopped},
        lambda c: c.print(
            "state database stopped" if stopped else "state database was not running"
        ),
    )
