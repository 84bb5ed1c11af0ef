"""`branchline token`: bearer tokens for the REST API."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any

import typer

from branchline.cli.context import app_context
from branchline.errors import UsageError

if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(help="API tokens (shown once; only a hash is kept).", no_args_is_help=True)
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")


def _run(ctx: typer.Context, work: Any) -> Any:
    import asyncio

    app_ctx = app_context(ctx)
    config = app_ctx.config()
    store = app_ctx.store()

    async def main() -> Any:
        await store.start()
        async with store.connect() as conn:
            return await work(conn, config.project.name)

    return asyncio.run(main())


@app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", help="What the token is for, e.g. ci.")],
    scope: Annotated[str, typer.Option("--scope", help="read or write.")] = "read",
) -> None:
    """Make a token (replacing one of the same name) and print it, once."""
    from branchline.store import tokens as rows

    if not _NAME.fullmatch(name):
        raise UsageError(
            "a token name is lower-case letters, digits, '.', '_' or '-' (at most 63)",
            hint="e.g. --name ci",
        )
    if scope not in ("read", "write"):
        raise UsageError(f"unknown scope {scope!r}", hint="--scope read or --scope write")
    row, token = _run(ctx, lambda conn, project: rows.create(conn, project, name, scope))
    app_context(ctx).output.emit(
        {"name": row.name, "scope": row.scope, "token": token},
        lambda c: c.print(
            f"token {row.name} ({row.scope}); it is shown only now:\n{token}", markup=False
        ),
    )


@app.command("list")
def list_tokens(ctx: typer.Context) -> None:
    """Token names, scopes and last use (never the tokens)."""
    from rich.table import Table

    from branchline.store import tokens as rows

    found = _run(ctx, lambda conn, project: rows.list_tokens(conn, project))

    def human(console: Console) -> None:
        table = Table("name", "scope", "created", "last used")
        for t in found:
            used = f"{t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "never"
            table.add_row(t.name, t.scope, f"{t.created_at:%Y-%m-%d %H:%M}", used)
        console.print(table if found else "no tokens")

    app_context(ctx).output.emit(
        [{"name": t.name, "scope": t.scope, "created_at": t.created_at,
          "last_used_at": t.last_used_at} for t in found],
        human,
    )  # fmt: skip


@app.command("delete")
def delete(ctx: typer.Context, name: str) -> None:
    """Revoke a token."""
    from branchline.store import tokens as rows

    gone = _run(ctx, lambda conn, project: rows.delete(conn, project, name))
    app_context(ctx).output.emit(
        {"name": name, "deleted": gone},
        lambda c: c.print(f"revoked {name}" if gone else f"there is no token {name}"),
    )


@app.command("scope")
def scope(
    ctx: typer.Context,
    name: str,
    to: Annotated[str, typer.Option("--to", help="read or write.")],
) -> None:
    """Change a token's scope in place. Dashboard sessions made with it end at once
    (log in again); the API follows the new scope from the next request."""
    from branchline.store import tokens as rows

    if to not in ("read", "write"):
        raise UsageError(f"unknown scope {to!r}", hint="--to read or --to write")
    changed = _run(ctx, lambda conn, project: rows.set_scope(conn, project, name, to))
    if not changed:
        raise UsageError(f"there is no token {name}", hint="`branchline token list` names them")
    app_context(ctx).output.emit(
        {"name": name, "scope": to},
        lambda c: c.print(f"token {name} may now {'only read' if to == 'read' else 'write'}"),
    )
