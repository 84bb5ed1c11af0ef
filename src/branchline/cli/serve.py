"""`branchline serve`: everything long-running in one process."""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from branchline.cli.context import AppContext, app_context
from branchline.cli.deploy import (
    ApiBind,
    ApiPort,
    DnsPort,
    EdgeBind,
    EdgePort,
    bind_option,
    listen_note,
    listen_url,
    run_edge_here,
)
from branchline.errors import UsageError

if TYPE_CHECKING:
    from branchline.config import Config
    from branchline.store import Store


def serve(
    ctx: typer.Context,
    detach: Annotated[bool, typer.Option("--detach", help="Run in the background.")] = False,
    port: EdgePort = None,
    dns_port: DnsPort = None,
    concurrency: Annotated[int, typer.Option(help="Jobs run at once.")] = 4,
    api_port: ApiPort = None,
    reconcile_every: Annotated[
        float,
        typer.Option(
            help="Seconds between reconcile passes (leftovers, strays, stale routes).",
            envvar="BRANCHLINE_RECONCILE_EVERY",
        ),
    ] = 60.0,
    bind: EdgeBind = None,
    api_bind: ApiBind = None,
) -> None:
    """Run the edge proxy, the DNS server, the service supervisor and the pipelines'
    workers (events to runs, jobs, preview expiry, reconcile at start and every
    minute) until SIGTERM, Ctrl-C or `branchline stop --all` (`branchline stop`
    stops only the workers). Services keep running when it stops; the next `serve`
    adopts them. Its ports are the project's `[edge]` ones, its addresses `[edge] bind`
    and `[server] bind`, unless given here."""
    from branchline.edge import daemon
    from branchline.engine.engine import EngineOptions
    from branchline.operations.runtime import open_pipelines
    from branchline.server.actions import OperationActions
    from branchline.server.app import create_app, run_server

    if reconcile_every <= 0:
        raise UsageError(
            f"--reconcile-every must be more than 0 seconds, not {reconcile_every:g}",
            hint="It is how often serve looks for leftovers; the default is 60.",
        )
    if concurrency < 1:
        raise UsageError(
            f"--concurrency must be at least 1, not {concurrency}",
            hint="It is how many jobs run at once; the default is 4.",
        )
    app = app_context(ctx)
    config = app.config()
    store = app.store()
    chosen = resolve_ports(config, port, dns_port, api_port, bind, api_bind)
    exposed = exposure_warning(config, chosen)
    if exposed is not None:
        app.output.notice(exposed)
    if detach:
        # The background serve is this very command: every option goes along.
        args = ("--port", str(chosen.edge), "--dns-port", str(chosen.dns),
                "--api-port", str(chosen.api), "--bind", chosen.edge_bind,
                "--api-bind", chosen.api_bind, "--concurrency", str(concurrency),
                "--reconcile-every", f"{reconcile_every:g}")  # fmt: skip
        _detach(app, store, config.path, chosen, args)
        return
    for number, which, host in ((chosen.edge, "edge", chosen.edge_bind),
                                (chosen.dns, "dns", chosen.edge_bind),
                                (chosen.api, "api", chosen.api_bind)):  # fmt: skip
        daemon.check_port(number, which, host)

    def ready(edge_port: int, dns: int) -> None:
        from branchline import ports

        dns_at = f"{ports.url_host(ports.reachable(chosen.edge_bind))}:{dns}"
        api_url = listen_url(chosen.api_bind, chosen.api) if chosen.api else None
        app.output.emit(
            {"edge_port": edge_port, "dns_port": dns, "api_port": chosen.api or None,
             "edge_bind": chosen.edge_bind, "api_bind": chosen.api_bind,
             "edge_url": listen_url(chosen.edge_bind, edge_port), "api_url": api_url},
            lambda c: c.print(
                f"serving: edge on {listen_url(chosen.edge_bind, edge_port)}, DNS on {dns_at}"
                f"{listen_note(chosen.edge_bind)}, "
                + (f"HTTP API on {api_url}{listen_note(chosen.api_bind)}, " if api_url else "")
                + f"{concurrency} job slots; Ctrl-C stops"
            ),
        )  # fmt: skip

    # A long-running process: its log (edge.log when detached) says when it did what.
    # branchline's own notes at INFO; its libraries' (a line per job) only when wrong.
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("branchline").setLevel(logging.INFO)

    async def workers(edge_port: int, dns: int) -> None:
        options = EngineOptions(pool_size=3 * concurrency + 6)
        async with open_pipelines(
            config,
            store,
            edge_port=edge_port,
            dns_port=dns,
            options=options,
            edge_bind=chosen.edge_bind,
        ) as pipelines:
            work = [
                pipelines.run_forever(
                    concurrency=concurrency,
                    reconcile_every=reconcile_every,
                    install_signal_handlers=False,
                )
            ]
            if chosen.api:
                server = create_app(
                    config, store, kit=pipelines.kit, edge_port=edge_port,
                    actions=OperationActions(pipelines.kit, pipelines.engine),
                )  # fmt: skip
                work.append(run_server(server, port=chosen.api, host=chosen.api_bind))
            await _together(work)

    run_edge_here(
        config,
        store,
        port=chosen.edge,
        dns_port=chosen.dns,
        on_ready=ready,
        background=workers,
        bind=chosen.edge_bind,
    )


async def _together(work: list[Coroutine[Any, Any, None]]) -> None:
    """Run side by side until all end or one fails; cancelled, each is cancelled once
    and waited for. (A bare gather returned at the first one cancelled and closed the
    pipelines under workers still stopping, which then retried forever; and its
    second cancel cut the HTTP server's own shutdown short.)"""
    import asyncio

    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()  # a failure is the workers' failure
    finally:
        for task in tasks:
            task.cancel()  # asyncio.wait passed no cancel on: this is the only one
        await asyncio.wait(tasks)


def _detach(
    app: AppContext, store: Store, config_path: Path, chosen: Ports, args: tuple[str, ...]
) -> None:
    import asyncio

    from branchline.edge import daemon

    asyncio.run(store.start())
    state_dir = store.location.state_dir
    before = daemon.read_info(state_dir)
    if before is not None and not before.can_work:
        raise UsageError(
            "an edge without workers (`branchline edge`) runs for this state directory",
            hint="Stop it with `branchline stop --all`, then run `branchline serve --detach`.",
        )
    if before is not None and chosen.edge not in (0, before.edge_port):
        raise UsageError(
            f"branchline serve already runs here with its edge on port {before.edge_port}, "
            f"not {chosen.edge}",
            hint="Stop it with `branchline stop --all` and start it again to move it.",
        )
    if before is not None and chosen.edge_bind != before.edge_bind:
        raise UsageError(
            f"branchline serve already runs here with its edge on {before.edge_bind}, "
            f"not {chosen.edge_bind}",
            hint="Stop it with `branchline stop --all` and start it again to move it.",
        )
    info, started = daemon.ensure_running(state_dir, config_path, args=args)
    said = "started" if before is None else "workers resumed" if started else "already running"
    app.output.emit(
        {"pid": info.pid, "edge_port": info.edge_port, "dns_port": info.dns_port,
         "api_port": chosen.api or None, "edge_bind": info.edge_bind,
         "api_bind": chosen.api_bind, "started": started, "said": said},
        lambda c: c.print(
            f"{said}: branchline serve (pid {info.pid}), edge on {_at(info.edge_bind)}port "
            f"{info.edge_port}, DNS on {info.dns_port}"
            + (f", HTTP API on {_at(chosen.api_bind)}port {chosen.api}" if chosen.api else "")
            + "; `branchline stop` stops its workers, `--all` everything"
        ),
    )  # fmt: skip


def _at(bind: str) -> str:
    """Nothing on loopback (the port says it all); else the address and a space."""
    from branchline import ports

    return "" if bind == ports.LOOPBACK else f"{bind} "


@dataclass(frozen=True)
class Ports:
    edge: int
    dns: int
    api: int  # 0: no HTTP server
    edge_bind: str = "127.0.0.1"  # the edge's and DNS's address
    api_bind: str = "127.0.0.1"  # the HTTP server's


def resolve_ports(
    config: Config, edge: int | None, dns: int | None, api: int | None,
    bind: str | None = None, api_bind: str | None = None,
) -> Ports:  # fmt: skip
    """A flag (or its environment variable) over the project's `[edge]` and `[server]`
    tables. --bind moves every listener (the usual wish: one address); --api-bind, the
    HTTP server alone (webhooks through a tunnel while the edge faces reviewers, say)."""
    bind = bind_option(bind, "--bind")
    api_bind = bind_option(api_bind, "--api-bind")
    return Ports(
        edge=config.edge.port if edge is None else edge,
        dns=config.edge.dns_port if dns is None else dns,
        api=config.edge.api_port if api is None else api,
        edge_bind=bind or config.edge.bind,
        api_bind=api_bind or bind or config.server.bind,
    )


def exposure_warning(config: Config, chosen: Ports) -> str | None:
    """What serve warns of when its HTTP server listens beyond this machine without
    the secrets that guard it; None when it stays on loopback or has them."""
    from branchline import ports
    from branchline.server.app import webhook_secret

    if not chosen.api or ports.is_loopback(chosen.api_bind):
        return None
    missing = []
    if config.server.metrics_token is None:
        missing.append(
            "`[server] metrics_token` is unset, so anyone who reaches it reads /metrics "
            "(the project's runs, previews and branches): set `metrics_token = "
            '"${BRANCHLINE_METRICS_TOKEN}"` under [server] (make one with `openssl rand '
            "-hex 32`)"
        )
    if webhook_secret(config) is None:
        missing.append(
            "no webhook secret is set, so every delivery to /webhooks/github is refused: "
            'set `[forge.github] webhook_secret = "${GITHUB_WEBHOOK_SECRET}"` (or '
            "BRANCHLINE_WEBHOOK_SECRET) to the secret of the repository's GitHub webhook"
        )
    if not missing:
        return None
    return (
        f"warning: the HTTP server listens on {chosen.api_bind}, reachable from other "
        f'machines, and {"; and ".join(missing)}. Or keep `[server] bind = "127.0.0.1"` '
        'behind a reverse proxy or tunnel (see the README, "Exposing branchline").'
    )
