"""`branchline config`: check and show the resolved branchline.toml."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from branchline.cli.context import app_context
from branchline.cli.output import to_json

if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(help="Check and show branchline.toml.", no_args_is_help=True)


@app.command("check")
def check(
    ctx: typer.Context,
    path: Annotated[
        Path | None,
        typer.Argument(help="branchline.toml or its directory (default: --config, or found)."),
    ] = None,
) -> None:
    """Validate branchline.toml and print the resolved config (secret values masked)."""
    from rich.syntax import Syntax

    from branchline.config import load_config

    app = app_context(ctx)
    config = load_config(path) if path is not None else app.config()
    data: dict[str, Any] = {"ok": True, "path": str(config.path), "config": config.display_dict()}

    def human(console: Console) -> None:
        console.print(f"[green]ok[/green] {config.path}")
        console.print(Syntax(to_json(data["config"]), "json", theme="ansi_dark", word_wrap=True))

    app.output.emit(data, human)
