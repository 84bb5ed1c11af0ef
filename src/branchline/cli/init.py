"""`branchline init`: write a commented starter branchline.toml."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from branchline import gitguard
from branchline.cli.context import app_context
from branchline.errors import UsageError
from branchline.providers.forge.hooks import install as install_hooks
from branchline.scaffold import detect_services, render_starter_config
from branchline.store import locate_state


def init(
    ctx: typer.Context,
    directory: Annotated[
        Path, typer.Argument(help="The project's root directory.", file_okay=False)
    ] = Path(),
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing branchline.toml.")
    ] = False,
    hooks: Annotated[
        bool,
        typer.Option("--hooks", help="Install git hooks that record a push on every commit."),
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
    if hooks and target.exists() and not force:
        # The config is there already: only the hooks are wanted.
        written = install_hooks(root, target)
        app.output.emit(
            {"path": str(target), "hooks": [str(p) for p in written]},
            lambda c: c.print("installed git hooks: " + ", ".join(p.name for p in written)),
        )
        return
    if target.exists() and not force:
        raise UsageError(
            f"{target} already exists",
            hint="Edit it, check it with `branchline config check`, or pass --force to replace it.",
        )
    services = detect_services(root)
    tmp = target.with_suffix(".toml.tmp")
    tmp.write_text(render_starter_config(root, services))
    tmp.replace(target)  # never leave half a file behind
    written = install_hooks(root, target) if hooks else []
    # The state (live databases, the secret key) must never be committed.
    ignored = gitguard.ignore(locate_state(root).state_dir, root)
    data = {
        "path": str(target),
        "hooks": [str(p) for p in written],
        "gitignore": ignored,
        "services": [{"name": s.name, "path": s.path, "marker": s.marker} for s in services],
    }

    def human(console: Console) -> None:
        console.print(f"wrote {target}")
        for s in services:
            console.print(f"  service {s.name}: {s.path} (from {s.marker})")
        if not services:
            console.print("  no services detected: describe them under [services.<name>]")
        if ignored:
            console.print("added branchline's state directory to .gitignore")
        console.print("next: review it, then run `branchline config check`")

    app.output.emit(data, human)
