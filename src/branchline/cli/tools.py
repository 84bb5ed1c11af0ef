"""`branchline workers-tools`: the Workers tools (wrangler, workerd and their Node.js)
a project with Worker services needs, pinned, installed where told (a CI runner)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from branchline.cli.context import app_context

app = typer.Typer(help="The Workers tools (wrangler, workerd) Worker services need.",
                  no_args_is_help=True)  # fmt: skip


@app.command("install")
def install(
    ctx: typer.Context,
    directory: Annotated[
        Path | None,
        typer.Argument(
            help="Where to install them (default: BRANCHLINE_WORKERS_TOOLS, else "
            "the checkout's tools/workers)."
        ),
    ] = None,
) -> None:
    """Install wrangler, workerd and Node.js as branchline pins them (`npm ci` of its
    package-lock.json) into DIRECTORY; nothing to do when they are there already. Then
    point BRANCHLINE_WORKERS_TOOLS at DIRECTORY."""
    from branchline.providers.compute import workertools

    where = directory or workertools.tools_dir()
    tools, installed = workertools.install(where)
    data = {"path": str(tools.root), "installed": installed, "workerd": str(tools.workerd),
            "wrangler": str(tools.wrangler), "node": str(tools.node)}  # fmt: skip
    app_context(ctx).output.emit(
        data,
        lambda c: c.print(
            f"{'installed' if installed else 'already there'}: the Workers tools in "
            f"{tools.root}; set BRANCHLINE_WORKERS_TOOLS={tools.root}",
            markup=False,
        ),
    )
