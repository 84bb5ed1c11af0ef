"""`branchline deploy | rollback | deployments | releases | logs | edge | stop | health`:
services running locally behind the edge."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from branchline import naming
from branchline.cli.context import AppContext, app_context
from branchline.config import Config
from branchline.edge import daemon
from branchline.errors import UsageError
from branchline.health import HealthPolicy, check_health
from branchline.pipelines.kit import Kit
from branchline.pipelines.restore import Restored, restore_production
from branchline.providers.compute import Deployment
from branchline.providers.compute.local import LocalComputeProvider
from branchline.providers.registry import compute_provider, database_provider
from branchline.store import Store
from branchline.store import rollouts as rollout_rows
from branchline.timespec import parse_moment

T = TypeVar("T")
deployments_app = typer.Typer(help="Deployments of services.", no_args_is_help=True)
releases_app = typer.Typer(help="Immutable builds of services.", no_args_is_help=True)


def _with_compute(
    ctx: typer.Context,
    work: Callable[[Config, LocalComputeProvider, AppContext], Awaitable[T]],
    *,
    need_edge: bool = False,
) -> T:
    app_ctx = app_context(ctx)
    config = app_ctx.config()
    store = app_ctx.store()

    async def main() -> T:
        await store.start()
        edge_port = None
        if need_edge:
            info, started = await asyncio.to_thread(
                daemon.ensure_running, store.location.state_dir, config.path
            )
            edge_port = info.edge_port
            if started:
                app_ctx.output.notice(
                    f"started the edge in the background on port {info.edge_port} "
                    f"(DNS on {info.dns_port}); `branchline stop` stops it"
                )
        else:
            running = daemon.read_info(store.location.state_dir)
            edge_port = running.edge_port if running else None
        provider = compute_provider(config, store, edge_port=edge_port)
        try:
            return await work(config, provider, app_ctx)
        finally:
            await provider.aclose()

    return asyncio.run(main())


def _branch_for(environment: str) -> str | None:
    if environment == naming.PRODUCTION:
        return naming.PRODUCTION
    if environment.startswith("preview-"):
        return naming.branch_for_pr(int(environment.removeprefix("preview-")))
    return None


async def _database_vars(
    config: Config, provider: LocalComputeProvider, env: str
) -> dict[str, str]:
    """DATABASE_URL of the environment's database branch, when it has one."""
    branch = _branch_for(env)
    if branch is None:
        return {}
    async with provider.store.connect() as conn:
        # After `branchline restore`, production runs on the restored branch.
        branch = await rollout_rows.branch_of(conn, config.project.name, env) or branch
    db = database_provider(config, provider.store)
    if await db.get_branch(branch) is None:
        return {}
    return {"DATABASE_URL": await db.connection_uri(branch)}


def _deployment_table(found: list[Deployment]) -> Table:
    table = Table("id", "service", "environment", "release", "status", "url", "since")
    for d in found:
        table.add_row(
            str(d.id), d.service, d.environment, d.release.name, d.status,
            d.url or "-", d.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        )  # fmt: skip
    return table


def deploy(
    ctx: typer.Context,
    service: str,
    env: Annotated[str, typer.Option("--env", help="production, preview-<pr> or local.")],
    commit: Annotated[str, typer.Option(help="Commit or branch to deploy.")] = "HEAD",
) -> None:
    """Build SERVICE at a commit and deploy it blue-green behind the edge."""
    naming.validate_environment(env)

    async def work(config: Config, provider: LocalComputeProvider, app: AppContext) -> Deployment:
        app.output.progress(f"building {service} at {commit}")
        began = time.monotonic()
        release = await provider.build(service, commit)
        app.output.progress(f"built {release.name}; starting it and checking its health")
        vars = await _database_vars(config, provider, env)
        deployment = await provider.deploy(service, env, release, vars, {})
        app.output.progress(f"live in {time.monotonic() - began:.1f} s")
        return deployment

    result = _with_compute(ctx, work, need_edge=True)
    app_context(ctx).output.emit(
        result.as_dict(),
        lambda c: c.print(f"{result.service} {result.release.name} is live at {result.url}"),
    )


def rollback(
    ctx: typer.Context,
    service: Annotated[str | None, typer.Argument(help="The service (or --all).")] = None,
    env: Annotated[
        str, typer.Option("--env", help="production, preview-<pr> or local.")
    ] = "production",
    to: Annotated[int | None, typer.Option(help="Release id (see `releases list`).")] = None,
    every: Annotated[
        bool, typer.Option("--all", help="Every service to its previous release.")
    ] = False,
) -> None:
    """Point SERVICE back at its previous release (or --to a release), blue-green;
    with --all, every service of the environment, in reverse deploy order."""
    naming.validate_environment(env)
    if every == (service is not None):
        raise UsageError(
            "name one service or pass --all", hint="e.g. `branchline rollback api --env production`"
        )
    if every and to is not None:
        raise UsageError("--to names a release of one service; it cannot go with --all")

    async def work(config: Config, provider: LocalComputeProvider, _a: AppContext) -> list[Any]:
        if service is not None:
            return [await provider.rollback(service, env, to)]
        live = {d.service for d in await provider.list_deployments(env) if d.status == "live"}
        names = [s.name for s in reversed(config.services_in_deploy_order()) if s.name in live]
        if not names:
            raise UsageError(f"nothing is deployed in {env}", hint="See `deployments list`.")
        return [await provider.rollback(name, env) for name in names]

    done = _with_compute(ctx, work, need_edge=True)

    def human(console: Console) -> None:
        for d in done:
            console.print(f"{d.service} rolled back to {d.release.name} ({d.url})")

    app_context(ctx).output.emit([d.as_dict() for d in done] if every else done[0].as_dict(), human)


@deployments_app.command("history")
def deployments_history(
    ctx: typer.Context,
    env: Annotated[str | None, typer.Option("--env", help="Only this environment.")] = None,
) -> None:
    """Production rollouts, newest first: trigger, commit, releases, duration, outcome."""

    async def work(config: Config, provider: LocalComputeProvider, _a: AppContext) -> list[Any]:
        async with provider.store.connect() as conn:
            return await rollout_rows.history(conn, config.project.name, env)

    found = _with_compute(ctx, work)

    def human(console: Console) -> None:
        table = Table("id", "run", "commit", "triggered by", "outcome", "seconds", "releases",
                      "started")  # fmt: skip
        for r in found:
            data = r.as_dict()
            releases = ", ".join((r.detail.get("releases") or {}).values())
            seconds = f"{data['seconds']:.1f}" if data["seconds"] is not None else "running"
            table.add_row(str(r.id), str(r.run_id or "-"), (r.sha or "-")[:8],
                          escape(r.triggered_by), r.status, seconds, escape(releases),
                          r.started_at.strftime("%Y-%m-%d %H:%M:%S"))  # fmt: skip
        console.print(table if found else "no rollouts yet")

    app_context(ctx).output.emit([r.as_dict() for r in found], human)


@deployments_app.command("list")
def deployments_list(
    ctx: typer.Context,
    env: Annotated[str | None, typer.Option("--env", help="Only this environment.")] = None,
) -> None:
    """Every deployment, newest first, with its release and status."""
    found = _with_compute(ctx, lambda _c, provider, _a: provider.list_deployments(env))
    app_context(ctx).output.emit(
        [d.as_dict() for d in found],
        lambda c: c.print(_deployment_table(found) if found else "no deployments yet"),
    )


@releases_app.command("list")
def releases_list(ctx: typer.Context, service: str) -> None:
    """The releases of SERVICE kept for rollback, newest first."""
    found = _with_compute(ctx, lambda _c, provider, _a: provider.releases(service))

    def human(console: Console) -> None:
        table = Table("id", "release", "commit", "built")
        for r in found:
            table.add_row(str(r.id), r.name, r.commit[:12], r.created_at.strftime("%Y-%m-%d %H:%M"))
        console.print(table if found else f"no releases of {service} yet")

    app_context(ctx).output.emit([r.as_dict() for r in found], human)


def logs(
    ctx: typer.Context,
    service: str,
    env: Annotated[str, typer.Option("--env", help="production, preview-<pr> or local.")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new output.")
    ] = False,
    since: Annotated[
        str | None, typer.Option(help='Include deployments started since, e.g. "1h ago".')
    ] = None,
) -> None:
    """A service's output in an environment (the reference's `wrangler tail`)."""
    naming.validate_environment(env)
    cutoff = parse_moment(since if since.endswith("ago") else f"{since} ago") if since else None

    async def work(_c: Config, provider: LocalComputeProvider, _a: AppContext) -> list[Path]:
        found = [
            d
            for d in await provider.list_deployments(env)
            if d.service == service and (cutoff is None or d.created_at >= cutoff)
        ]
        if not found:
            raise UsageError(
                f"{service} has no deployment in {env}", hint="See `branchline deployments list`."
            )
        if cutoff is None:
            found = found[:1]
        return [Path(str(d.detail["log"])) for d in reversed(found) if "log" in d.detail]

    files = _with_compute(ctx, work)
    out = app_context(ctx).output
    for path in files:
        with path.open("rb") as fh:
            out.out.print(fh.read().decode(errors="replace"), end="", markup=False)
    if follow and files:
        _tail(files[-1], out.out)


def _tail(path: Path, console: Console) -> None:
    """Print what the file gains until interrupted (a file has nothing to LISTEN on)."""
    with path.open("rb") as fh:
        fh.seek(0, 2)
        try:
            while True:
                chunk = fh.read()
                if chunk:
                    console.print(chunk.decode(errors="replace"), end="", markup=False)
                else:
                    time.sleep(0.2)
        except KeyboardInterrupt:
            return


EdgePort = Annotated[int, typer.Option("--port", help="Edge port (a free one if taken).")]
DnsPort = Annotated[int, typer.Option("--dns-port", help="DNS port (UDP and TCP).")]
Ready = Callable[[int, int], None]


def run_edge_here(
    config: Config, store: Store, *, port: int, dns_port: int, on_ready: Ready,
    background: daemon.Background | None = None,
) -> None:  # fmt: skip
    """The edge, DNS and supervisor in this process until stopped; `background` (given
    the edge and DNS ports) runs beside them (serve's workers), on the same store."""

    async def main() -> None:
        await store.start()
        provider = compute_provider(config, store)
        await daemon.run_foreground(
            store, project=config.project.name, zone=config.project.zone,
            state_dir=store.location.state_dir, supervise=provider.supervise,
            edge_port=port, dns_port=dns_port, on_ready=on_ready, background=background,
        )  # fmt: skip

    asyncio.run(main())


def edge(
    ctx: typer.Context,
    port: EdgePort = daemon.DEFAULT_EDGE_PORT,
    dns_port: DnsPort = daemon.DEFAULT_DNS_PORT,
) -> None:
    """Run the edge proxy, the zone's DNS server and the service supervisor here."""
    app = app_context(ctx)
    config = app.config()

    def ready(edge_port: int, dns: int) -> None:
        app.output.emit(
            {"edge_port": edge_port, "dns_port": dns},
            lambda c: c.print(
                f"edge on http://127.0.0.1:{edge_port}/ (try http://{escape(config.project.zone)}:"
                f"{edge_port}/), DNS on 127.0.0.1:{dns}; Ctrl-C stops"
            ),
        )

    run_edge_here(config, app.store(), port=port, dns_port=dns_port, on_ready=ready)


def stop(ctx: typer.Context) -> None:
    """Stop the background `serve` (or edge): workers, edge, DNS. Services keep running."""
    app = app_context(ctx)
    stopped = daemon.stop(app.store().location.state_dir)
    app.output.emit(
        {"stopped": stopped},
        lambda c: c.print("edge stopped" if stopped else "the edge was not running"),
    )


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

    async def work(config: Config, provider: LocalComputeProvider, _a: AppContext) -> Restored:
        info = daemon.read_info(provider.store.location.state_dir)
        kit = Kit.build(config, provider.store, edge_port=provider.edge_port,
                        dns_port=info.dns_port if info else None)  # fmt: skip
        try:
            return await restore_production(kit, moment, progress=app.output.progress)
        finally:
            await kit.aclose()

    done = _with_compute(ctx, work, need_edge=True)
    app.output.emit(
        done.as_dict(),
        lambda c: c.print(
            f"production now runs on {done.branch} (as of {moment.isoformat()}); "
            f"redeployed {', '.join(done.redeployed)}. Writes after that moment are not "
            f"in it; the previous branch {done.previous_branch} is kept.",
            markup=False,
        ),
    )
