"""`branchline reconcile`: finish or undo what a crash left half done."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from branchline.cli.context import app_context

if TYPE_CHECKING:
    from rich.console import Console

    from branchline.operations.reconcile import Finding


def reconcile_command(
    ctx: typer.Context,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only say what would be done.")
    ] = False,
) -> None:
    """Compare the store, what actually runs and the open pull requests; finish or
    undo half-done work, remove what no record explains, then run what it resumed."""
    import asyncio

    from rich.markup import escape

    from branchline.edge import daemon
    from branchline.operations.reconcile import reconcile
    from branchline.operations.runtime import open_pipelines
    from branchline.pipelines.dispatch import wait_settled

    app = app_context(ctx)
    config = app.config()
    store = app.store()

    def serve_alive() -> bool:
        return daemon.read_info(store.location.state_dir) is not None

    async def main() -> list[Finding]:
        await store.start()
        info, started = await asyncio.to_thread(
            daemon.ensure_running, store.location.state_dir, config.path
        )
        if started:
            app.output.notice(
                f"started branchline serve in the background (edge on port {info.edge_port})"
            )
        async with open_pipelines(
            config,
            store,
            edge_port=info.edge_port,
            dns_port=info.dns_port,
            edge_bind=info.edge_bind,
        ) as pipelines:
            found = await reconcile(pipelines.kit, engine=pipelines.engine, dry_run=dry_run)
            for _ in range(0 if dry_run else 3):
                # Recovered jobs move their runs on; resumed previews and events nobody
                # handled yet are run here, to the end. What they leave (a preview whose
                # run was interrupted) is looked at again.
                app.output.progress("running what is pending")
                if info.workers:  # `branchline serve` does the work: wait for it
                    await wait_settled(store, config.project.name, alive=serve_alive)
                else:
                    await pipelines.run_until_settled()
                again = await reconcile(pipelines.kit, engine=pipelines.engine)
                found += again
                if not any(f.action == "make again" for f in again):
                    break
        return found

    found = asyncio.run(main())

    def human(console: Console) -> None:
        if not found:
            console.print("nothing to do: the store and what runs agree")
        for finding in found:
            console.print(escape(finding.describe()))

    app.output.emit([f.as_dict() for f in found], human)
