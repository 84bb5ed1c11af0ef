"""`branchline config`: check and show the resolved branchline.toml."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from branchline.cli.context import app_context
from branchline.cli.output import to_json

if TYPE_CHECKING:
    from rich.console import Console

    from branchline.config import Config

app = typer.Typer(help="Check and show branchline.toml.", no_args_is_help=True)


@app.command("check")
def check(
    ctx: typer.Context,
    path: Annotated[
        Path | None,
        typer.Argument(help="branchline.toml or its directory (default: --config, or found)."),
    ] = None,
    offline: Annotated[
        bool,
        typer.Option("--offline", help="Do not ask cloud providers if their settings work."),
    ] = False,
) -> None:
    """Validate branchline.toml and print the resolved config (secret values masked).
    A cloud provider is asked whether its settings work (key, project), unless --offline."""
    from rich.syntax import Syntax

    from branchline.config import load_config

    app = app_context(ctx)
    config = load_config(path) if path is not None else app.config()
    reached = [] if offline else _reach_providers(config)
    data: dict[str, Any] = {
        "ok": True, "path": str(config.path), "providers": reached, "config": config.display_dict(),
    }  # fmt: skip

    def human(console: Console) -> None:
        console.print(f"[green]ok[/green] {config.path}")
        for found in reached:
            console.print(f"[green]ok[/green] {found}")
        console.print(Syntax(to_json(data["config"]), "json", theme="ansi_dark", word_wrap=True))

    app.output.emit(data, human)


def _reach_providers(config: Config) -> list[str]:
    """What each cloud provider found with the config's settings; what is wrong with
    them is raised (a missing key, an unknown project)."""
    import asyncio

    from branchline.providers.registry import (
        verify_compute,
        verify_database,
        verify_dns,
        verify_forge,
    )

    async def reach() -> list[str | None]:
        return [await verify_database(config), await verify_compute(config),
                await verify_dns(config), await verify_forge(config)]  # fmt: skip

    return [found for found in asyncio.run(reach()) if found]
