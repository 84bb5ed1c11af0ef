"""`branchline status`: where the state lives, whether its Postgres runs, which
environments exist. Starts the embedded state cluster on demand."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from branchline.cli.context import app_context

if TYPE_CHECKING:
    from rich.console import Console


def status(ctx: typer.Context) -> None:
    """Show where branchline keeps its state and which environments exist."""
    import asyncio

    from branchline.operations.environments import list_environments
    from branchline.providers.database import StorageHealth
    from branchline.store import queries

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
            database = session.kit.database
            storage = await database.storage() if isinstance(database, StorageHealth) else None
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
            "storage": storage,
            "environments": [e.as_dict() for e in envs],
        }

    data = asyncio.run(gather())
    app.output.emit(data, lambda console: _render(console, data))


def _render(console: Console, data: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

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
    if data.get("storage"):
        _render_storage(console, data["storage"])
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


def _render_storage(console: Console, storage: dict[str, Any]) -> None:
    from rich.markup import escape

    from branchline.config.sizes import human_bytes

    disk = storage["disk"]
    low = disk["free_bytes"] < disk["reserve_bytes"]
    console.print(
        f"[bold]disk[/bold]     {'[red]' if low else ''}{human_bytes(disk['free_bytes'])} free"
        f"{'[/red]' if low else ''} of {human_bytes(disk['total_bytes'])} on "
        f"{escape(disk['path'])} ({human_bytes(disk['reserve_bytes'])} kept for production's WAL)"
    )
    branching = storage.get("branching")
    if branching == "clone":
        console.print("[bold]branches[/bold] copy-on-write clones (the same fraction of a second "
                      "at any size)")  # fmt: skip
    elif branching == "copy":
        console.print("[bold]branches[/bold] pg_basebackup copies (time grows with the data; "
                      "`branchline db pool create` makes a filesystem that clones)")  # fmt: skip
    history = storage.get("history")
    if history is not None:
        since = history["oldest_restorable"] or "no backup yet"
        console.print(
            f"[bold]history[/bold]  {human_bytes(history['bytes'])} of "
            f"{human_bytes(history['limit_bytes'])} (WAL archive and {history['backups']} "
            f"base backup(s); max_archive_size), restorable from {since}"
        )
    archive = storage.get("archive")
    if archive is None:
        console.print("[bold]archive[/bold]  production is not running")
    elif archive["failing"]:
        why = f": {archive['reason']}" if archive["reason"] else ""
        console.print(
            f"[bold]archive[/bold]  [red]failing[/red] on {archive['last_failed_wal']}"
            f"{escape(why)} (last archived {archive['last_archived_wal'] or 'none'}, "
            f"{archive['pending_segments']} segment(s) waiting, pg_wal "
            f"{human_bytes(archive['wal_bytes'])}); make room: `branchline db gc`"
        )
    else:
        console.print(
            f"[bold]archive[/bold]  ok, last archived {archive['last_archived_wal'] or 'none yet'}"
            f" ({archive['pending_segments']} waiting)"
        )
