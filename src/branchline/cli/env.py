"""`branchline env list | delete`: environments, and removing one without a pull
request (a preview deployed by hand, `local`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from branchline.cli.context import Session, app_context
from branchline.cli.follow import WAIT_HELP, exit_on_failure, run_pipelines, show_outcome
from branchline.environment import Environment

if TYPE_CHECKING:
    from rich.console import Console

    from branchline.operations import environments

app = typer.Typer(help="Environments: production, previews, local.", no_args_is_help=True)


@app.command("list")
def list_environments(ctx: typer.Context) -> None:
    """Production, every preview and any other environment something is live in,
    with their database branch and services' URLs."""
    from rich.markup import escape
    from rich.table import Table

    from branchline.operations import environments

    found = app_context(ctx).run(lambda s: environments.list_environments(s.kit))
    data = [e.as_dict() for e in found]

    def human(console: Console) -> None:
        table = Table("environment", "status", "database branch", "services", "expires")
        for env in data:
            services = "\n".join(f"{s['service']} {s['url'] or '-'}" for s in env["services"])
            table.add_row(env["name"], env["status"], env["branch"] or "-",
                          escape(services) or "-", str(env["expires_at"] or "-"))  # fmt: skip
        console.print(table)

    app_context(ctx).output.emit(data, human)


@app.command("delete")
def delete(
    ctx: typer.Context,
    environment: Annotated[str, typer.Argument(help="preview-<n> or local.")],
    no_wait: Annotated[bool, typer.Option("--no-wait", help=WAIT_HELP)] = False,
) -> None:
    """Remove an environment: its services, routes, DNS records and, for a preview,
    its database branches and generated secrets; with or without a pull request
    (the pull request, if any, stays open). Production cannot be deleted. Running it
    again is fine."""
    from branchline.operations import environments

    target = Environment.parse(environment)
    app = app_context(ctx)

    async def work(session: Session) -> tuple[environments.Removal, dict[str, Any] | None]:
        removal = await environments.delete(session.kit, session.need_engine(), target, by="cli")
        if removal.run_id is None or no_wait:
            return removal, None
        outcome = await run_pipelines(app, session.config, session.store, after=removal.run_id - 1)
        assert target.pr is not None
        row = await session.kit.previews.get(target.pr)
        outcome["removed"] = (row.detail.get("removed") if row else None) or {}
        return removal, outcome

    removal, outcome = app.run(work, engine=True)
    removed = removal.removed if outcome is None else outcome["removed"]
    data = {"environment": target.name, "run_id": removal.run_id, "removed": removed,
            **({"runs": outcome["runs"]} if outcome else {})}  # fmt: skip

    def human(console: Console) -> None:
        if outcome is None and removal.run_id is not None:
            console.print(f"removing {target.name}: cleanup run {removal.run_id} started")
            return
        if outcome is not None:
            show_outcome(console, {"runs": outcome["runs"], "previews": []})
        what = "; ".join(f"{kind} {', '.join(names)}" for kind, names in removed.items() if names)
        console.print(f"{target.name} removed: {what or 'nothing was left'}", markup=False)

    app.output.emit(data, human)
    if outcome is not None:
        exit_on_failure(app, outcome)
