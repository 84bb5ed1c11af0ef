"""`branchline dns`: the zone's records, served by the local DNS server or kept in
a Cloudflare zone (`[dns] provider`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from branchline.cli.context import app_context
from branchline.environment import Environment

if TYPE_CHECKING:
    from rich.console import Console

    from branchline.providers.dns import DnsProvider

app = typer.Typer(help="DNS records of the project's zone.", no_args_is_help=True)
T = TypeVar("T")


def _run(ctx: typer.Context, work: Callable[[DnsProvider], Awaitable[T]]) -> T:
    """Run `work` on the zone's provider (verify asks the running DNS server)."""
    return app_context(ctx).run(lambda session: work(session.kit.dns))


@app.command("list")
def list_records(
    ctx: typer.Context,
    env: Annotated[str | None, typer.Option("--env", help="Only this environment's.")] = None,
) -> None:
    """The zone's records."""
    from rich.markup import escape
    from rich.table import Table

    environment = Environment.parse(env) if env is not None else None
    found = _run(ctx, lambda dns: dns.list_records(environment))

    def human(console: Console) -> None:
        table = Table("name", "type", "content", "proxied", "environment")
        for r in found:
            table.add_row(escape(r.name), r.type, escape(r.content),
                          "yes" if r.proxied else "no", escape(r.environment or "-"))  # fmt: skip
        console.print(table if found else "no records yet")

    app_context(ctx).output.emit([r.as_dict() for r in found], human)


@app.command("ensure")
def ensure(
    ctx: typer.Context,
    name: str,
    type: Annotated[str, typer.Option("--type", help="A, AAAA, CNAME or TXT.")] = "CNAME",
    content: Annotated[str, typer.Option(help='Target; "@" is the zone apex.')] = "@",
    proxied: Annotated[bool, typer.Option(help="Mark it proxied (as on Cloudflare).")] = False,
    env: Annotated[str | None, typer.Option("--env", help="Environment it belongs to.")] = None,
) -> None:
    """Create or update a record (idempotent)."""
    environment = Environment.parse(env) if env is not None else None
    record = _run(
        ctx,
        lambda dns: dns.ensure_record(name, type, content, proxied=proxied,
                                      environment=environment),
    )  # fmt: skip
    app_context(ctx).output.emit(
        record.as_dict(),
        lambda c: c.print(f"{record.name} {record.type} {record.content}", markup=False),
    )


@app.command("delete")
def delete(
    ctx: typer.Context,
    name: str,
    type: Annotated[str | None, typer.Option("--type", help="Only this type.")] = None,
) -> None:
    """Delete a record (succeeds when it is already gone)."""
    deleted = _run(ctx, lambda dns: dns.delete_record(name, type))
    app_context(ctx).output.emit(
        {"name": name, "deleted": deleted},
        lambda c: c.print(f"deleted {name}" if deleted else f"{name} had no such record"),
    )


@app.command("verify")
def verify(
    ctx: typer.Context,
    name: str,
    type: Annotated[str, typer.Option("--type")] = "CNAME",
    expect: Annotated[str | None, typer.Option(help="The answer to wait for.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to keep asking.")] = 10.0,
) -> None:
    """Ask the zone's DNS server until it answers as expected (or the timeout)."""
    from rich.markup import escape

    result = _run(ctx, lambda dns: dns.verify(name, type=type, expect=expect, timeout=timeout))
    data: dict[str, Any] = result.as_dict()
    app_context(ctx).output.emit(
        data,
        lambda c: c.print(
            f"{'ok' if result.ok else 'not yet'}: {name} {type} -> "
            f"{', '.join(result.answer) or '-'} after {result.attempts} attempts "
            f"in {result.elapsed:.2f} s" + (f"\n{escape(result.error)}" if result.error else "")
        ),
    )
    if not result.ok:
        raise typer.Exit(1)


@app.command("gc")
def gc(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would go.")] = False,
) -> None:
    """Remove branchline's records in a cloud zone that no record explains (a crash
    between the cloud's answer and branchline's note of it); never another's."""
    from rich.markup import escape

    from branchline.providers.reconciling import Finding, Reconcilable

    async def work(dns: DnsProvider) -> list[Finding]:
        if not isinstance(dns, Reconcilable):
            return []  # the local zone is its own record: nothing can be orphaned
        return await dns.reconcile(dry_run=dry_run)

    found = _run(ctx, work)

    def human(console: Console) -> None:
        for finding in found:
            console.print(escape(finding.describe()))
        if not found:
            console.print("nothing to collect")

    app_context(ctx).output.emit([f.as_dict() for f in found], human)
