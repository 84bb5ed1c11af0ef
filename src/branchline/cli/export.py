"""`branchline export github-actions`: the reference's workflows, calling `branchline ci`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from branchline.cli.context import app_context

if TYPE_CHECKING:
    from rich.console import Console

    from branchline.export.files import Written

app = typer.Typer(help="Files for other tools, written from branchline.toml.", no_args_is_help=True)


@app.command("github-actions")
def github_actions(
    ctx: typer.Context,
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir", help="Where (default: .github/workflows at the git repository's top)."
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite workflow files branchline did not write.")
    ] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Write nothing; exit 1 when the files differ from what branchline.toml "
            "makes (testing.yml runs this).",
        ),
    ] = False,
) -> None:
    """Write testing.yml, preview.yml, production.yml, cleanup.yml and rollback.yml:
    GitHub Actions runs the pipelines with `branchline ci`, the state in the
    BRANCHLINE_DATABASE_URL secret. Running it again rewrites only what changed."""
    from branchline import __version__
    from branchline.export import files, github_actions

    app = app_context(ctx)
    config = app.config()
    top, prefix = files.repository_top(config.root)
    target = directory if directory is not None else top / ".github" / "workflows"
    settings = github_actions.Settings(version=__version__, prefix=prefix)
    rendered = github_actions.render(config, settings)
    if check:
        _check(ctx, target, files.compare(target, rendered))
        return
    written = files.write_all(target, rendered, header=github_actions.HEADER, force=force)

    def human(console: Console) -> None:
        for item in written:
            console.print(f"{item.change:9} {item.path}", markup=False, highlight=False)
        console.print(
            "Set the repository secrets BRANCHLINE_DATABASE_URL and BRANCHLINE_SECRET_KEY "
            "(and those the workflows name), then commit the files.",
            markup=False,
            highlight=False,
        )

    app.output.emit({"directory": str(target), "files": [w.as_dict() for w in written]}, human)


def _check(ctx: typer.Context, target: Path, found: list[Written]) -> None:
    out = app_context(ctx).output
    stale = [item for item in found if item.change != "unchanged"]

    def human(console: Console) -> None:
        for item in found:
            console.print(f"{item.change:9} {item.path}", markup=False, highlight=False)

    out.emit({"directory": str(target), "files": [w.as_dict() for w in found]}, human)
    if stale:
        out.notice(
            "the workflows are not what branchline.toml makes now: run `branchline export "
            "github-actions` and commit them"
        )
        raise typer.Exit(1)
