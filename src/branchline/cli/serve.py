"""`branchline serve`: everything long-running in one process."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from branchline.cli.context import app_context
from branchline.cli.deploy import DnsPort, EdgePort, run_edge_here
from branchline.edge import daemon
from branchline.engine.engine import EngineOptions
from branchline.errors import UsageError
from branchline.operations.runtime import open_pipelines
from branchline.postgres.cluster import port_is_free
from branchline.server.actions import OperationActions
from branchline.server.app import create_app, run_server


def serve(
    ctx: typer.Context,
    detach: Annotated[bool, typer.Option("--detach", help="Run in the background.")] = False,
    port: EdgePort = daemon.DEFAULT_EDGE_PORT,
    dns_port: DnsPort = daemon.DEFAULT_DNS_PORT,
    concurrency: Annotated[int, typer.Option(help="Jobs run at once.")] = 4,
    api_port: Annotated[
        int,
        typer.Option(
            help="Port of the HTTP server (webhooks, /healthz); 0: none.",
            envvar="BRANCHLINE_API_PORT",
        ),
    ] = 8081,
) -> None:
    """Run the edge proxy, the DNS server, the service supervisor and the pipelines'
    workers (events to runs, jobs, preview expiry, reconcile at start and every
    minute) until SIGTERM, Ctrl-C or `branchline stop`. Services keep running when it
    stops; the next `serve` adopts them."""
    if concurrency < 1:
        raise UsageError(
            f"--concurrency must be at least 1, not {concurrency}",
            hint="It is how many jobs run at once; the default is 4.",
        )
    app = app_context(ctx)
    config = app.config()
    store = app.store()
    if detach:
        asyncio.run(store.start())
        info, started = daemon.ensure_running(store.location.state_dir, config.path)
        if not info.workers:
            raise UsageError(
                "an edge without workers (`branchline edge`) runs for this state directory",
                hint="Stop it with `branchline stop`, then run `branchline serve --detach`.",
            )
        app.output.emit(
            {"pid": info.pid, "edge_port": info.edge_port, "dns_port": info.dns_port,
             "started": started},
            lambda c: c.print(
                f"{'started' if started else 'already running'}: branchline serve (pid "
                f"{info.pid}), edge on port {info.edge_port}, DNS on {info.dns_port}; "
                "`branchline stop` stops it"
            ),
        )  # fmt: skip
        return

    def ready(edge_port: int, dns: int) -> None:
        app.output.emit(
            {"edge_port": edge_port, "dns_port": dns},
            lambda c: c.print(
                f"serving: edge on http://127.0.0.1:{edge_port}/, DNS on 127.0.0.1:{dns}, "
                f"{concurrency} job slots; Ctrl-C stops"
            ),
        )

    async def workers(edge_port: int, dns: int) -> None:
        options = EngineOptions(pool_size=3 * concurrency + 6)
        async with open_pipelines(
            config, store, edge_port=edge_port, dns_port=dns, options=options
        ) as pipelines:
            work = [pipelines.run_forever(concurrency=concurrency, install_signal_handlers=False)]
            if api_port:
                free = api_port if port_is_free(api_port) else 0
                if free == 0:
                    app.output.notice(f"port {api_port} is taken: the HTTP server is off")
                else:
                    server = create_app(
                        config, store, kit=pipelines.kit, edge_port=edge_port,
                        actions=OperationActions(pipelines.kit, pipelines.engine),
                    )  # fmt: skip
                    work.append(run_server(server, port=free))
            await asyncio.gather(*work)

    run_edge_here(config, store, port=port, dns_port=dns_port, on_ready=ready, background=workers)
