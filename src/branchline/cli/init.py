"""`branchline init`: write a commented starter branchline.toml."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from branchline.cli.context import app_context
from branchline.errors import UsageError
from branchline.scaffold import detect_services, render_starter_config


def init(
    ctx: typer.Context,
    directory: Annotated[
        Path, typer.Argument(help="The project's root directory.", file_okay=False)
    ] = Path(),
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing branchline.toml.")
    ] = False,
) -> None:
    """Write a starter branchline.toml, detecting services from common files."""
    app = app_context(ctx)
    root = directory.resolve()
    if not root.is_dir():
        raise UsageError(
            f"{directory} is not a directory", hint="Pass the root of your project's repository."
        )
    target = root / "branchline.toml"
    if target.exists() and not force:
        raise UsageError(
            f"{target} already exists",
            hint="Edit it, check it with `branchline config check`, or pass --force to replace it.",
        )
    services = detect_services(root)
    tmp = target.with_suffix(".toml.tmp")
    tmp.write_text(render_starter_config(root, services))
    tmp.replace(target)  # never leave half a file behind
    data = {
        "path": str(target),
        "services": [{"name": s.name, "path": s.path, "marker": s.marker} for s in services],
    }

    def human(console: Console) -> None:
        console.print(f"wrote {target}")
        for s in services:
            console.print(f"  service {s.name}: {s.path} (from {s.marker})")
        if not services:
            console.print("  no services detected: describe them under [services.<name>]")
        console.print("next: review it, then run `branchline config check`")

    app.output.emit(data, human)
