"""`branchline deploy | rollback | deployments | releases | logs | edge | health`:
services running locally behind the edge."""

from __future__ import annotations

import contextlib
import getpass
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

from branchline.cli.context import Session, app_context
from branchline.environment import Environment
from branchline.errors import UsageError
from branchline.masking import LineMasker, mask_url

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from branchline.config import Config
    from branchline.edge import daemon
    from branchline.kit import Kit
    from branchline.providers.compute import Deployment
    from branchline.store import Store

deployments_app = typer.Typer(help="Deployments of services.", no_args_is_help=True)
releases_app = typer.Typer(help="Immutable builds of services.", no_args_is_help=True)
EnvOption = Annotated[str, typer.Option("--env", help="production, preview-<pr> or local.")]


def _deployment_table(found: list[Deployment]) -> Table:
    from rich.table import Table

    table = Table("id", "service", "environment", "release", "status", "url", "since")
    for d in found:
        table.add_row(
            str(d.id), d.service, d.environment.name, d.release.name, d.status,
            d.url or "-", d.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        )  # fmt: skip
    return table


def _who() -> str:
    """Who a deployment by hand is written down as, in the history."""
    return f"{getpass.getuser()} (cli)"


def deploy(
    ctx: typer.Context,
    service: str,
    env: EnvOption,
    commit: Annotated[str, typer.Option(help="Commit or branch to deploy.")] = "HEAD",
) -> None:
    """Build SERVICE at a commit and deploy it blue-green behind the edge, with the
    environment's database, sibling URLs and secrets."""
    from branchline.operations import deploy as operations

    environment = Environment.parse(env)
    app = app_context(ctx)
    result = app.run(
        lambda s: operations.deploy(s.kit, service, environment, commit,
                                    progress=app.output.progress, by=_who()),
        edge=True,
    )  # fmt: skip
    app.output.emit(
        result.as_dict(),
        lambda c: c.print(f"{result.service} {result.release.name} is live at {result.url}"),
    )


def restart(
    ctx: typer.Context,
    service: Annotated[str | None, typer.Argument(help="The service (or --all).")] = None,
    env: EnvOption = "production",
    every: Annotated[bool, typer.Option("--all", help="Every live service.")] = False,
) -> None:
    """Start the live release of SERVICE again with the environment's current
    variables and secrets (after `secret set` or `secret rotate`), blue-green."""
    from branchline.operations import deploy as operations

    environment = Environment.parse(env)
    if every == (service is not None):
        raise UsageError(
            "name one service or pass --all", hint="e.g. `branchline restart api --env preview-8`"
        )
    app = app_context(ctx)

    async def work(session: Session) -> list[Deployment]:
        if service is not None:
            return [await operations.restart(session.kit, service, environment,
                                             progress=app.output.progress, by=_who())]  # fmt: skip
        return await operations.restart_all(session.kit, environment,
                                            progress=app.output.progress, by=_who())  # fmt: skip

    done = app.run(work, edge=True)

    def human(console: Console) -> None:
        for d in done:
            console.print(f"{d.service} {d.release.name} restarted at {d.url}")

    app.output.emit([d.as_dict() for d in done] if every else done[0].as_dict(), human)


def rollback(
    ctx: typer.Context,
    service: Annotated[str | None, typer.Argument(help="The service (or --all).")] = None,
    env: EnvOption = "production",
    to: Annotated[
        str | None,
        typer.Option(help="A release: its name (web@dd490368217d.1) or id (see `releases list`)."),
    ] = None,
    every: Annotated[
        bool, typer.Option("--all", help="Every service to its previous release.")
    ] = False,
) -> None:
    """Point SERVICE back at its previous release (or --to a release), blue-green;
    with --all, every service of the environment, in reverse deploy order."""
    from branchline.operations import deploy as operations

    environment = Environment.parse(env)
    if every == (service is not None):
        raise UsageError(
            "name one service or pass --all", hint="e.g. `branchline rollback api --env production`"
        )
    if every and to is not None:
        raise UsageError("--to names a release of one service; it cannot go with --all")

    async def work(session: Session) -> list[Deployment]:
        if service is not None:
            return [await operations.rollback(session.kit, service, environment, to, by=_who())]
        return await operations.rollback_all(session.kit, environment, by=_who())

    done = app_context(ctx).run(work, edge=True)

    def human(console: Console) -> None:
        for d in done:
            console.print(f"{d.service} rolled back to {d.release.name} ({d.url})")

    app_context(ctx).output.emit([d.as_dict() for d in done] if every else done[0].as_dict(), human)


@deployments_app.command("history")
def deployments_history(
    ctx: typer.Context,
    env: Annotated[str | None, typer.Option("--env", help="Only this environment.")] = None,
) -> None:
    """Production rollouts and deploys, restarts and rollbacks made by hand, newest
    first: what, where, trigger, commit, releases, duration, outcome."""
    from rich.markup import escape
    from rich.table import Table

    where = Environment.parse(env).name if env is not None else None
    found = app_context(ctx).run(lambda s: s.kit.rollouts.history(where))

    def human(console: Console) -> None:
        table = Table("id", "what", "environment", "run", "commit", "triggered by", "outcome",
                      "seconds", "releases", "started")  # fmt: skip
        for r in found:
            data = r.as_dict()
            releases = ", ".join((r.detail.get("releases") or {}).values())
            seconds = f"{data['seconds']:.1f}" if data["seconds"] is not None else "running"
            table.add_row(str(r.id), r.kind, r.environment, str(r.run_id or "-"),
                          (r.sha or "-")[:8], escape(r.triggered_by), r.status, seconds,
                          escape(releases),
                          r.started_at.strftime("%Y-%m-%d %H:%M:%S"))  # fmt: skip
        console.print(table if found else "no deployments yet")

    app_context(ctx).output.emit([r.as_dict() for r in found], human)


@deployments_app.command("list")
def deployments_list(
    ctx: typer.Context,
    env: Annotated[str | None, typer.Option("--env", help="Only this environment.")] = None,
) -> None:
    """Every deployment, newest first, with its release and status."""
    environment = Environment.parse(env) if env is not None else None
    found = app_context(ctx).run(lambda s: s.kit.compute.list_deployments(environment))
    app_context(ctx).output.emit(
        [d.as_dict() for d in found],
        lambda c: c.print(_deployment_table(found) if found else "no deployments yet"),
    )


@releases_app.command("list")
def releases_list(ctx: typer.Context, service: str) -> None:
    """The releases of SERVICE kept for rollback, newest first."""
    from rich.table import Table

    found = app_context(ctx).run(lambda s: s.kit.compute.releases(service))

    def human(console: Console) -> None:
        table = Table("id", "release", "commit", "built")
        for r in found:
            table.add_row(str(r.id), r.name, r.commit[:12], r.created_at.strftime("%Y-%m-%d %H:%M"))
        console.print(table if found else f"no releases of {service} yet")

    app_context(ctx).output.emit([r.as_dict() for r in found], human)


def logs(
    ctx: typer.Context,
    service: str,
    env: EnvOption,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new output.")
    ] = False,
    since: Annotated[
        str | None, typer.Option(help='Include deployments started since, e.g. "1h ago".')
    ] = None,
) -> None:
    """A service's output in an environment (the reference's `wrangler tail`),
    secrets and database passwords masked."""
    from branchline.timespec import parse_moment

    environment = Environment.parse(env)
    cutoff = parse_moment(since if since.endswith("ago") else f"{since} ago") if since else None
    app = app_context(ctx)
    out = app.output

    async def work(session: Session) -> None:
        hidden = (await session.kit.deployment_env(environment)).sensitive
        masker = LineMasker(hidden)
        chunks = session.kit.compute.logs(service, environment, since=cutoff, follow=follow)
        async for chunk in chunks:
            for line in masker.feed(chunk):
                out.out.print(mask_url(line), markup=False, highlight=False)
        for line in masker.flush():
            out.out.print(mask_url(line), markup=False, highlight=False)

    with contextlib.suppress(KeyboardInterrupt):
        app.run(work)


EdgePort = Annotated[
    int | None,
    typer.Option("--port", help="Edge port (default: `[edge] port`, 8080; 0: any free one).",
                 envvar="BRANCHLINE_EDGE_PORT", show_default=False),
]  # fmt: skip
DnsPort = Annotated[
    int | None,
    typer.Option("--dns-port", help="DNS port, UDP and TCP (default: `[edge] dns_port`, 8053).",
                 envvar="BRANCHLINE_DNS_PORT", show_default=False),
]  # fmt: skip
ApiPort = Annotated[
    int | None,
    typer.Option("--api-port", help="Port of the HTTP server: webhooks, API, /healthz "
                 "(default: `[edge] api_port`, 8081); 0: none.",
                 envvar="BRANCHLINE_API_PORT", show_default=False),
]  # fmt: skip
EdgeBind = Annotated[
    str | None,
    typer.Option("--bind", metavar="ADDRESS", help="IP address the edge and DNS listen on, "
                 "and serve's HTTP server unless --api-bind says otherwise (default: `[edge] "
                 "bind` and `[server] bind`, 127.0.0.1; 0.0.0.0: every interface).",
                 envvar="BRANCHLINE_BIND", show_default=False),
]  # fmt: skip
ApiBind = Annotated[
    str | None,
    typer.Option("--api-bind", metavar="ADDRESS", help="IP address of the HTTP server "
                 "(webhooks, API, dashboard, /metrics) alone (default: --bind, else `[server] "
                 "bind`, 127.0.0.1).", envvar="BRANCHLINE_API_BIND", show_default=False),
]  # fmt: skip
Ready = Callable[[int, int], None]


def bind_option(value: str | None, flag: str) -> str | None:
    """A --bind style flag checked as the config checks `bind`, in one spelling."""
    from branchline.config.fields import bind_problem, normalize_bind

    if value is None:
        return None
    problem = bind_problem(value)
    if problem is not None:
        raise UsageError(
            f"{flag}: {problem}",
            hint=f"Give an IP address: `{flag} 127.0.0.1` (this machine only), "
            f"`{flag} 0.0.0.0` (every IPv4 interface) or `{flag} ::1` (IPv6 loopback).",
        )
    return normalize_bind(value)


def listen_url(bind: str, port: int) -> str:
    """Where this machine reaches a listener bound at `bind`:`port`."""
    from branchline import ports

    return f"http://{ports.url_host(ports.reachable(bind))}:{port}/"


def listen_note(bind: str) -> str:
    """What a ready line adds for a listener reachable from other machines."""
    from branchline import ports

    if ports.is_every_interface(bind):
        return f" (bound to {bind}: every interface, other machines too)"
    return "" if ports.is_loopback(bind) else " (reachable from other machines)"


def run_edge_here(
    config: Config, store: Store, *, port: int, dns_port: int, on_ready: Ready,
    background: daemon.Background | None = None, bind: str | None = None,
) -> None:  # fmt: skip
    """The edge, DNS and supervisor in this process until stopped, listening on
    `bind` (default `[edge] bind`); `background` (given the edge and DNS ports) runs
    beside them (serve's workers), on the same store."""
    import asyncio

    from branchline.edge import daemon
    from branchline.kit import Kit
    from branchline.providers.compute import Supervisor

    kits: list[Kit] = []
    edge_bind = config.edge.bind if bind is None else bind

    async def supervise(edge_port: int, dns: int) -> list[str]:
        # Built once the ports are known: a service started again is told its
        # siblings' URLs through this edge.
        if not kits:
            kits.append(Kit.build(config, store, edge_port=edge_port, dns_port=dns,
                                  edge_bind=edge_bind))  # fmt: skip
        compute = kits[0].compute
        return await compute.supervise() if isinstance(compute, Supervisor) else []

    async def main() -> None:
        await store.start()
        try:
            await daemon.run_foreground(
                store, project=config.project.name, zone=config.project.zone,
                state_dir=store.location.state_dir, supervise=supervise,
                edge_port=port, dns_port=dns_port, on_ready=on_ready, background=background,
                edge_bind=edge_bind,
            )  # fmt: skip
        finally:
            for kit in kits:
                await kit.aclose()

    asyncio.run(main())


def edge(
    ctx: typer.Context,
    port: EdgePort = None,
    dns_port: DnsPort = None,
    bind: EdgeBind = None,
) -> None:
    """Run the edge proxy, the zone's DNS server and the service supervisor here."""
    from rich.markup import escape

    from branchline import ports

    app = app_context(ctx)
    config = app.config()
    edge_port = config.edge.port if port is None else port
    dns_port = config.edge.dns_port if dns_port is None else dns_port
    edge_bind = bind_option(bind, "--bind") or config.edge.bind

    def ready(edge_port: int, dns: int) -> None:
        dns_at = f"{ports.url_host(ports.reachable(edge_bind))}:{dns}"
        app.output.emit(
            {"edge_port": edge_port, "dns_port": dns, "edge_bind": edge_bind},
            lambda c: c.print(
                f"edge on {listen_url(edge_bind, edge_port)} (try http://"
                f"{escape(config.project.zone)}:{edge_port}/), DNS on {dns_at}"
                f"{listen_note(edge_bind)}; Ctrl-C stops"
            ),
        )

    run_edge_here(config, app.store(), port=edge_port, dns_port=dns_port, on_ready=ready,
                  bind=edge_bind)  # fmt: skip


def health(
    ctx: typer.Context,
    url: str,
    expect_commit: Annotated[str | None, typer.Option(help="Pass only for this commit.")] = None,
    host: Annotated[
        str | None, typer.Option(help="Host header to send (to check via the edge).")
    ] = None,
    retries: Annotated[int, typer.Option(help="Retries after the first attempt.")] = 3,
) -> None:
    """Check a URL the way deploys do: retries with backoff, HTTP 000 on no answer."""
    import asyncio

    from branchline.health import HealthPolicy, check_health

    out = app_context(ctx).output
    policy = HealthPolicy(retries=retries, deadline=60.0)

    def show(attempt: Any) -> None:
        out.progress(attempt.describe())

    result = asyncio.run(
        check_health(
            url, policy=policy, expect_commit=expect_commit, host_header=host, on_attempt=show
        )
    )
    out.emit(result.as_dict(), lambda c: c.print(result.verdict))
    if not result.healthy:
        raise typer.Exit(1)


def restore(
    ctx: typer.Context,
    to: Annotated[str, typer.Option("--to", help='"30 minutes ago" or an ISO time.')],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Production's database as of a past moment: a new branch
    (emergency-restore-<time>), production's services pointed at it and redeployed.
    Writes made after that moment are not in it."""
    from branchline.operations.restore import restore_production
    from branchline.timespec import parse_moment

    moment = parse_moment(to)
    app = app_context(ctx)
    warning = (
        f"Production will run on a copy of its database as of {moment.isoformat()}. "
        "Writes made after that moment will NOT be in it (the current branch is kept)."
    )
    if not yes:
        if app.output.json:
            raise UsageError("restoring production needs confirmation", hint="Pass --yes.")
        typer.confirm(warning + " Continue?", abort=True, err=True)
    else:
        app.output.notice(warning)

    done = app.run(lambda s: restore_production(s.kit, moment, progress=app.output.progress),
                   edge=True)  # fmt: skip
    app.output.emit(
        done.as_dict(),
        lambda c: c.print(
            f"production now runs on {done.branch} (as of {moment.isoformat()}); "
            f"redeployed {', '.join(done.redeployed)}. Writes after that moment are not "
            f"in it; the previous branch {done.previous_branch} is kept.",
            markup=False,
        ),
    )
