"""`branchline status`: where the state lives, whether its Postgres runs, which
environments exist. Starts the embedded state cluster on demand."""

from __future__ import annotations

import asyncio
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from branchline.cli.context import app_context
from branchline.operations.environments import list_environments
from branchline.store import queries


def status(ctx: typer.Context) -> None:
    """Show where branchline keeps its state and which environments exist."""
    app = app_context(ctx)
    config = app.config()
    store = app.store()

    async def gather() -> dict[str, Any]:
        report = await store.start()
        async with store.connect() as conn:
            await queries.register_project(conn, config.project.name, config.root, config.path)
            version = await queries.schema_version(conn)
        async with app.session(config, store, edge=False, engine=False) as session:
            envs = await list_environments(session.kit)
            sandbox = session.kit.sandbox.describe()
        return {
            "project": config.project.name,
            "config": str(config.path),
            "state": {
                "kind": report.kind,
                "dir": str(store.location.state_dir),
                "url": report.display_url,
                "postgres": "running",
                "was": report.was,
                "start_seconds": round(report.seconds, 3),
                "schema_version": version,
                "migrations_applied_now": [
                    f"{m.version:04d}_{m.name}" for m in report.migrations_applied
                ],
            },
            "sandbox": sandbox,
            "environments": [e.as_dict() for e in envs],
        }

    data = asyncio.run(gather())
    app.output.emit(data, lambda console: _render(console, data))


def _render(console: Console, data: dict[str, Any]) -> None:
    state = data["state"]
    console.print(f"[bold]project[/bold]  {data['project']}  ({data['config']})")
    where = state["dir"] if state["kind"] == "embedded" else "BRANCHLINE_DATABASE_URL"
    console.print(f"[bold]state[/bold]    {state['kind']} Postgres, {where}")
    started = (
        ""
        if state["was"] in ("running", "external")
        else f", started in {state['start_seconds']} s"
    )
    console.print(f"[bold]postgres[/bold] {state['postgres']} at {state['url']}{started}")
    applied = state["migrations_applied_now"]
    note = f" (applied now: {', '.join(applied)})" if applied else ""
    console.print(f"[bold]schema[/bold]   version {state['schema_version']}{note}")
    console.print(f"[bold]code[/bold]     {escape(data['sandbox'])}")
    envs = data["environments"]
    if not envs:
        console.print("[bold]environments[/bold] none yet")
        return
    table = Table("environment", "kind", "status", "database branch", "services", "expires")
    for env in envs:
        table.add_row(
            env["name"],
            env["kind"],
            env["status"],
            env["branch"] or "-",
            ", ".join(s["service"] for s in env["services"]) or "-",
            str(env["expires_at"] or "-"),
        )
    console.print(table)
