"""`branchline demo`: the whole system, end to end, on a copy of the example app."""

from __future__ import annotations

from typing import Annotated

import typer

from branchline.cli.context import app_context


def demo(
    ctx: typer.Context,
    keep: Annotated[
        bool,
        typer.Option(
            "--keep",
            help="Afterwards keep everything running, as `branchline serve` runs it "
            "(dashboard included), until Ctrl-C or SIGTERM.",
        ),
    ] = False,
) -> None:
    """Show the whole system on a temporary copy of the example app (codex): a push
    tested, a pull request's preview, an update, the merge rolled out, a broken release
    rolled back. Everything it starts is removed when it ends, however it ends (Ctrl-C
    and SIGTERM included)."""
    from branchline import demo as scenario

    code = scenario.run(app_context(ctx).output.out, keep=keep)
    raise typer.Exit(code)
