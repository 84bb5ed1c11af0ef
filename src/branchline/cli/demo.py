"""`branchline demo`: the whole system, end to end, on a copy of the example app."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from branchline.cli.context import app_context


class Database(StrEnum):
    local = "local"
    neon = "neon"


class Example(StrEnum):
    codex = "codex"
    workers = "workers"


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
    database: Annotated[
        Database,
        typer.Option(
            "--database",
            help="Where the example's database branches live: local Postgres clusters, "
            "or Neon (its API served by a fake Neon the demo starts, each branch a real "
            "local cluster; the summary counts the API calls).",
        ),
    ] = Database.local,
    example: Annotated[
        Example,
        typer.Option(
            "--example",
            help="Which example app: codex (three Python services) or workers (three "
            "Cloudflare Workers in JavaScript, run in workerd: needs the Workers tools, "
            "`(cd tools/workers && npm ci)`, and npm).",
        ),
    ] = Example.codex,
) -> None:
    """Show the whole system on a temporary copy of an example app (codex, or workers):
    a push tested, a pull request's preview, an update, the merge rolled out, a broken
    release rolled back. Everything it starts is removed when it ends, however it ends
    (Ctrl-C and SIGTERM included)."""
    from branchline import demo as scenario

    code = scenario.run(
        app_context(ctx).output.out, keep=keep, database=database.value, example=example.value
    )
    raise typer.Exit(code)
