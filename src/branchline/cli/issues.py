"""`branchline issues`: the issues pipelines opened (incident reports of rollouts)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from branchline.cli.context import app_context
from branchline.errors import UsageError

if TYPE_CHECKING:
    from rich.console import Console

    from branchline.store import forge as rows

app = typer.Typer(help="Issues opened by pipelines (local code host).", no_args_is_help=True)


def _issues(ctx: typer.Context, number: int | None) -> list[rows.IssueRow]:
    import asyncio

    from branchline.store import forge as rows

    app_ctx = app_context(ctx)
    config = app_ctx.config()
    store = app_ctx.store()

    async def main() -> list[rows.IssueRow]:
        await store.start()
        async with store.connect() as conn:
            return await rows.issues(conn, config.project.name, number)

    return asyncio.run(main())


def _dict(issue: rows.IssueRow) -> dict[str, Any]:
    return {
        "number": issue.number, "title": issue.title, "body": issue.body,
        "labels": issue.labels, "state": issue.state, "created_at": issue.created_at,
    }  # fmt: skip


@app.command("list")
def list_issues(ctx: typer.Context) -> None:
    """Issues, newest first."""
    from rich.markup import escape
    from rich.table import Table

    found = _issues(ctx, None)

    def human(console: Console) -> None:
        table = Table("#", "title", "labels", "state", "opened")
        for i in found:
            table.add_row(str(i.number), escape(i.title), ", ".join(i.labels), i.state,
                          i.created_at.strftime("%Y-%m-%d %H:%M:%S"))  # fmt: skip
        console.print(table if found else "no issues")

    app_context(ctx).output.emit([_dict(i) for i in found], human)


@app.command("show")
def show(
    ctx: typer.Context, number: Annotated[int, typer.Argument(help="The issue's number.")]
) -> None:
    """One issue with its body."""
    found = _issues(ctx, number)
    if not found:
        raise UsageError(f"there is no issue #{number}", hint="See `branchline issues list`.")
    issue = found[0]
    app_context(ctx).output.emit(
        _dict(issue),
        lambda c: c.print(
            f"#{issue.number} {issue.title} ({issue.state})\n\n{issue.body}", markup=False
        ),
    )
