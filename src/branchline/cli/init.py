"""`branchline init`: write a commented starter branchline.toml."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from branchline import gitguard
from branchline.cli.context import app_context
from branchline.errors import UsageError

if TYPE_CHECKING:
    from rich.console import Console

    from branchline.scaffold import Detection


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
    from branchline.providers.forge.hooks import install as install_hooks
    from branchline.scaffold import detect_project, render_starter_config
    from branchline.store import locate_state

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
    detection = detect_project(root)
    tmp = target.with_suffix(".toml.tmp")
    tmp.write_text(render_starter_config(root, detection))
    tmp.replace(target)  # never leave half a file behind
    written = install_hooks(root, target) if hooks else []
    # The state (live databases, the secret key) must never be committed.
    ignored = gitguard.ignore(locate_state(root).state_dir, root)
    data = {
        "path": str(target),
        "hooks": [str(p) for p in written],
        "gitignore": ignored,
        **_as_dict(detection),
    }

    def human(console: Console) -> None:
        console.print(f"wrote {target}", markup=False)
        for title, notes in (("detected", detection.detected()), ("guessed", detection.guessed())):
            if notes:
                console.print(f"{title}:")
            for note in notes:
                console.print(f"  {note.line()}", markup=False)
        if ignored:
            console.print("added branchline's state directory to .gitignore")
        console.print("next: review it (above all the guesses), then run `branchline config check`")

    app.output.emit(data, human)


def _as_dict(detection: Detection) -> dict[str, object]:
    return {
        "services": [
            {
                "name": s.name,
                "path": s.path,
                "marker": s.marker,
                "run": list(s.run.argv),
                "build": list(s.build.argv) if s.build else None,
                "health_path": s.health_path,
                "release": list(s.release.argv) if s.release else None,
            }
            for s in detection.services
        ],
        "migrate": list(detection.migrate.argv),
        "tests": [
            {
                "name": j.name,
                "command": list(j.step.argv),
                "database": j.database,
                "createdb": j.createdb,
                "service": j.service,
            }
            for j in detection.tests
        ],
        "detected": [n.as_dict() for n in detection.detected()],
        "guessed": [n.as_dict() for n in detection.guessed()],
    }
