"""`branchline db`: database branches, migrations, schema diffs, restores."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from branchline import gitguard, naming
from branchline.cli.context import AppContext, app_context
from branchline.errors import BranchlineError, UsageError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from branchline.kit import Kit
    from branchline.migrations import MigrateResult, PreflightResult
    from branchline.providers.database import Branch, DatabaseProvider, pool

app = typer.Typer(help="Database branches: create, reset, migrate, diff, restore.")
branches_app = typer.Typer(help="Create, list, reset and delete branches.")
app.add_typer(branches_app, name="branches")
T = TypeVar("T")


def _run(
    ctx: typer.Context,
    work: Callable[[DatabaseProvider], Awaitable[T]],
    show: Callable[[T], None] | None = None,
) -> T:
    """Run `work` on the project's database provider; `show` prints the result as
    soon as it is there, before the provider's background work (the next spare)."""
    return app_context(ctx).run(lambda session: work(session.kit.database), show=show)


def _run_kit(
    ctx: typer.Context, work: Callable[[Kit], Awaitable[T]], show: Callable[[T], None] | None = None
) -> T:
    return app_context(ctx).run(lambda session: work(session.kit), show=show)


def _output(ctx: typer.Context) -> AppContext:
    return app_context(ctx)


def _progress(ctx: typer.Context, message: str) -> None:
    """Say what long work is starting, once the config is known to be good."""
    app_ctx = app_context(ctx)
    app_ctx.config()
    app_ctx.output.progress(message)


def _human_size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _age(moment: datetime) -> str:
    seconds = int((datetime.now(UTC) - moment).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _branch_table(branches: list[Branch]) -> Table:
    from rich.table import Table

    table = Table(
        "branch", "parent", "status", "postgres", "age", "expires", "size", "port", "made by"
    )
    for b in branches:
        table.add_row(
            b.name,
            b.parent or "-",
            b.status.value,
            b.compute or "-",
            _age(b.created_at),
            b.expires_at.strftime("%Y-%m-%d %H:%M") if b.expires_at else "-",
            _human_size(b.size_bytes),
            str(b.port or "-"),
            str(b.detail.get("made_by") or "-"),
        )
    return table


def _show_branch(ctx: typer.Context, branch: Branch, verb: str) -> None:
    def human(console: Console) -> None:
        console.print(f"{verb} branch [bold]{branch.name}[/bold] (parent {branch.parent or '-'})")
        console.print(_branch_table([branch]))

    _output(ctx).output.emit(branch.as_dict(), human)


@app.command("init")
def init(ctx: typer.Context) -> None:
    """Create the production branch (WAL archiving on, first base backup). Idempotent."""
    _progress(ctx, "creating the production branch (initdb, first base backup)")
    app = app_context(ctx)
    config = app.config()
    if gitguard.ignore(app.store().location.state_dir, config.root):
        app.output.notice("added branchline's state directory to .gitignore (never commit it)")
    branch = _run(ctx, _init_root)
    _show_branch(ctx, branch, "ready:")


async def _init_root(db: DatabaseProvider) -> Branch:
    from branchline.providers.database import RootInitializer

    if not isinstance(db, RootInitializer):
        raise UsageError(
            "this database provider has no init step: its root branch exists with the project",
            hint="See `branchline db branches list`.",
        )
    return await db.init_root()


@branches_app.command("list")
def branches_list(ctx: typer.Context) -> None:
    """Every branch with parent, age, expiry, size, status and how it was made."""

    async def work(db: DatabaseProvider) -> tuple[list[Branch], str | None]:
        from branchline.locking import finish_in_thread
        from branchline.providers.database import BranchingMethod

        method = None
        if isinstance(db, BranchingMethod):
            with contextlib.suppress(UsageError):  # clones demanded where none can be made
                method = await finish_in_thread(db.branching_method)
        return await db.list_branches(), method

    branches, method = _run(ctx, work)

    def human(console: Console) -> None:
        console.print(_branch_table(branches))
        if method is not None:
            console.print(f"new branches are made by: {_METHODS.get(method, method)}")

    _output(ctx).output.emit([b.as_dict() for b in branches], human)


_METHODS = {
    "clone": "clone (copy-on-write clones of the parent's files: constant time)",
    "copy": "copy (pg_basebackup: time grows with the data; `db pool create` makes clones "
    "possible)",
}


@branches_app.command("create")
def branches_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Branch name: lowercase letters, digits, '-'.")],
    parent: Annotated[str | None, typer.Option(help="Parent branch (default: production).")] = None,
    expires: Annotated[
        str | None, typer.Option(help='Expiry: a duration such as "2h" or an ISO time.')
    ] = None,
) -> None:
    """Create a branch from its parent, online. Returns the existing one if it is there."""
    from branchline.operations import branches
    from branchline.timespec import parse_expiry

    naming.validate_branch_id(name)
    expires_at = parse_expiry(expires) if expires else None
    _progress(ctx, f"copying {parent or 'production'} into {name}")
    # Shown as soon as it is ready; preparing the next spare happens after.
    _run_kit(
        ctx,
        lambda kit: branches.create_or_find(kit, name, parent, expires=expires_at),
        lambda found: _show_branch(ctx, found[0], "exists already:" if found[1] else "ready:"),
    )


@branches_app.command("delete")
def branches_delete(
    ctx: typer.Context,
    name: str,
    force: Annotated[
        bool, typer.Option(help="Allow deleting the root branch, or one an environment uses.")
    ] = False,
) -> None:
    """Delete a branch (its cluster and its data). Succeeds when it is already gone.
    Production's branch and a live preview's are refused unless --force."""
    from branchline.operations import branches

    deleted = _run_kit(ctx, lambda kit: branches.delete(kit, name, force=force))
    _output(ctx).output.emit(
        {"name": name, "deleted": deleted},
        lambda c: c.print(f"deleted {name}" if deleted else f"{name} was already gone"),
    )


@branches_app.command("reset")
def branches_reset(ctx: typer.Context, name: str) -> None:
    """Replace a branch's data with its parent's current state (same URI afterwards)."""
    from branchline.operations import branches

    _progress(ctx, f"resetting {name} to its parent")
    branch = _run_kit(ctx, lambda kit: branches.reset(kit, name))
    _show_branch(ctx, branch, "reset:")


@app.command("url")
def url(ctx: typer.Context, name: str) -> None:
    """Print the branch's connection URI (it contains the password)."""
    uri = _run(ctx, lambda db: db.connection_uri(name))
    _output(ctx).output.emit({"name": name, "uri": uri}, lambda c: c.print(uri, markup=False))


@app.command("psql")
def psql(ctx: typer.Context, name: str) -> None:
    """Open psql on the branch (the password travels in the environment)."""
    from branchline.migrations import database_env
    from branchline.postgres import find_binaries

    uri = _run(ctx, lambda db: db.connection_uri(name))
    binary = find_binaries().path("psql")
    env = {**os.environ, **database_env(uri)}
    env.pop("DATABASE_URL", None)
    os.execve(binary, [binary], env)  # noqa: S606 - an argument list, no shell


@app.command("migrate")
def migrate_cmd(ctx: typer.Context, name: str) -> None:
    """Run the project's migrate command against a branch, streaming its output."""
    from branchline.engine.checkout import staged_copy
    from branchline.migrations import migrate

    out = _output(ctx).output
    echo = None if out.json else (lambda line: out.out.print(line, markup=False, highlight=False))

    async def work(kit: Kit) -> MigrateResult:
        # The project's files as they are, copied where the boxed migrate can read
        # them (the checkout itself may be private, and holds branchline's state).
        async with staged_copy(kit.config.root, prepare=kit.sandbox.hand_over) as copy:
            return await migrate(
                kit.config, kit.database, name, on_line=echo, sandbox=kit.sandbox, cwd=copy
            )

    result = _run_kit(ctx, work)
    data = {
        "branch": name,
        "ok": result.ok,
        "exit_code": result.exit_code,
        "seconds": round(result.seconds, 3),
        "migrations": result.applied,
        "schema_fingerprint": result.schema_fingerprint,
        "output_tail": result.output_tail[-20:],
    }
    if not result.ok:
        if out.json:
            out.emit(data, lambda c: None)
        raise BranchlineError(
            f"the migrate command failed on {name} (exit {result.exit_code})",
            hint="Its output is above; fix the migration and run `branchline db migrate` again.",
        )
    out.emit(
        data,
        lambda c: c.print(
            f"migrated {name} in {result.seconds:.2f} s"
            + (f"; migrations: {', '.join(result.applied)}" if result.applied else "")
        ),
    )


@app.command("preflight")
def preflight_cmd(ctx: typer.Context) -> None:
    """Try the migrations on a throw-away copy of production, report, delete the copy."""
    from branchline.engine.checkout import staged_copy
    from branchline.migrations import preflight

    out = _output(ctx).output
    _progress(ctx, "copying production into a throw-away branch and migrating it")
    echo = None if out.json else (lambda line: out.err.print(line, markup=False, highlight=False))

    async def work(kit: Kit) -> PreflightResult:
        async with staged_copy(kit.config.root, prepare=kit.sandbox.hand_over) as copy:
            return await preflight(
                kit.config, kit.database, on_line=echo, sandbox=kit.sandbox, cwd=copy
            )

    result = _run_kit(ctx, work)
    data = result.as_dict()

    def human(console: Console) -> None:
        if result.ok:
            console.print(f"[green]preflight passed[/green] in {result.migrate.seconds:.2f} s")
            changes = result.schema_changes or {}
            for key in ("tables_added", "tables_removed"):
                if changes.get(key):
                    console.print(f"  {key.replace('_', ' ')}: {', '.join(changes[key])}")
            for change in changes.get("tables_changed", []):
                console.print(f"  table changed: {change['table']}")
        else:
            console.print("[red]preflight failed[/red]; production was not touched")

    out.emit(data, human)
    if not result.ok:
        raise BranchlineError(
            f"the migration fails on a copy of production: {result.error or 'see output'}"
            + (f" (statement: {result.failing_statement})" if result.failing_statement else ""),
            hint="Fix the migration, then run `branchline db preflight` again.",
        )


@app.command("diff")
def diff(ctx: typer.Context, a: str, b: str) -> None:
    """Compare two branches' schemas (a unified diff; --json lists the changes)."""
    import psycopg

    from branchline.providers.database import schema_diff
    from branchline.schemadiff import describe_schema, diff_schemas

    async def work(db: DatabaseProvider) -> tuple[str, dict[str, Any]]:
        text = await schema_diff(db, a, b)
        schemas = []
        for name in (a, b):
            async with await psycopg.AsyncConnection.connect(await db.connection_uri(name)) as c:
                schemas.append(await describe_schema(c))
        return text, diff_schemas(schemas[0], schemas[1]).as_dict()

    text, changes = _run(ctx, work)
    _output(ctx).output.emit(
        {"a": a, "b": b, "changes": changes, "diff": text},
        lambda c: c.print(text or f"{a} and {b} have the same schema", markup=False),
    )


@app.command("restore")
def restore(
    ctx: typer.Context,
    to: Annotated[str, typer.Option("--to", help='"30 minutes ago" or an ISO time.')],
    name: Annotated[str | None, typer.Option(help="Name of the new branch.")] = None,
) -> None:
    """Create a new branch holding production as it was at a past moment."""
    from branchline.timespec import parse_moment

    moment = parse_moment(to)
    branch_name = name or "emergency-restore-" + moment.strftime("%Y%m%d%H%M%S")
    _progress(ctx, f"restoring production as of {moment.isoformat()} into {branch_name}")
    _run(
        ctx,
        lambda db: db.restore(branch_name, moment),
        lambda branch: _show_branch(ctx, branch, f"restored to {moment.isoformat()}:"),
    )


@app.command("backup")
def backup(ctx: typer.Context) -> None:
    """Take a base backup of production now (a restore starts from the latest one)."""
    from branchline.providers.database import Backups

    async def work(db: DatabaseProvider) -> dict[str, str]:
        if not isinstance(db, Backups):
            raise UsageError(
                "this database provider keeps its own backups",
                hint="Restore to a moment with `branchline db restore --to TIME`.",
            )
        return (await db.take_backup()).as_dict()

    data = _run(ctx, work)
    _output(ctx).output.emit(
        data, lambda c: c.print(f"base backup taken: {data.get('path', data['end_time'])}")
    )


def _archive_line(archive: dict[str, Any]) -> str:
    """Production's WAL archive and backups against max_archive_size."""
    oldest = archive.get("oldest_restorable")
    since = f", restorable from {oldest}" if oldest else ""
    return (
        f"{_human_size(archive['bytes'])} of {_human_size(archive['limit_bytes'])} "
        f"(max_archive_size), {archive['backups']} base backup(s){since}"
    )


@app.command("gc")
def gc(ctx: typer.Context) -> None:
    """Delete expired branches, clean up after crashes, refresh and prune backups."""
    from branchline.providers.database import GarbageCollector

    async def work(db: DatabaseProvider) -> dict[str, Any]:
        if not isinstance(db, GarbageCollector):
            raise UsageError("this database provider has no local garbage to collect")
        return (await db.gc()).as_dict()

    data = _run(ctx, work)

    def human(console: Console) -> None:
        done = False
        for key, value in data.items():
            if not value:
                continue
            if key == "archive":  # where the archive stands, not something done
                console.print(f"archive: {_archive_line(value)}")
                continue
            done = True
            if key in ("archive_repaired", "archive_pruned", "notes"):  # sentences: one a line
                for item in value:
                    console.print(f"{key.replace('_', ' ')}: {item}", markup=False)
                continue
            shown = ", ".join(value) if isinstance(value, list) else "yes"
            console.print(f"{key.replace('_', ' ')}: {shown}")
        if not done:
            console.print("nothing to collect")

    _output(ctx).output.emit(data, human)


pool_app = typer.Typer(
    help="A cloning filesystem (reflink XFS in a loop-mounted image) for the branches' data."
)
app.add_typer(pool_app, name="pool")


def _pool_dir(ctx: typer.Context) -> Path:
    """The project's state directory, where the pool and the branches' data live."""
    app_ctx = app_context(ctx)
    config = app_ctx.config()
    if config.database.provider != "local":
        raise UsageError(
            f"a pool holds local branches; this project's database is {config.database.provider}",
            hint='The pool is for [database] provider = "local".',
        )
    return app_ctx.store().location.project_dir(config.project.name)


def _stopper(ctx: typer.Context) -> Callable[[], object]:
    """Stops the project's clusters before their data moves (no state database needed);
    they start again on their next use."""

    def stop() -> list[str]:
        import asyncio

        from branchline.providers.database import ClusterControl
        from branchline.providers.registry import database_provider

        app_ctx = app_context(ctx)
        db = database_provider(app_ctx.config(), app_ctx.store())
        if not isinstance(db, ClusterControl):
            return []
        stopped = asyncio.run(db.stop_clusters())
        if stopped:
            app_ctx.output.progress(f"stopped {', '.join(stopped)} (started again when used)")
        return stopped

    return stop


def _show_outcome(ctx: typer.Context, outcome: pool.Outcome, said: str) -> None:
    def human(console: Console) -> None:
        console.print(f"{said} ({_human_size(outcome.pool.size)}) at {outcome.pool.mount}")
        if outcome.moved:
            console.print(f"moved: {', '.join(outcome.moved)}")
        for note in outcome.notes:
            console.print(f"note: {note}", markup=False)

    _output(ctx).output.emit(outcome.as_dict(), human)


@pool_app.command("create")
def pool_create(
    ctx: typer.Context,
    size: Annotated[str, typer.Option(help='Size of the image, e.g. "20G" (sparse).')],
) -> None:
    """Make the pool (root) and move the branches' data into it. Idempotent."""
    from branchline.providers.database import pool

    out = _output(ctx).output
    outcome = pool.create(_pool_dir(ctx), size, stop_clusters=_stopper(ctx), progress=out.progress)
    _show_outcome(ctx, outcome, "the pool is there already" if outcome.already else "pool ready")


@pool_app.command("mount")
def pool_mount(ctx: typer.Context) -> None:
    """Mount the pool again (after a restart of the machine; root)."""
    from branchline.providers.database import pool

    outcome = pool.mount(_pool_dir(ctx))
    _show_outcome(ctx, outcome, "mounted already" if outcome.already else "mounted")


@pool_app.command("delete")
def pool_delete(
    ctx: typer.Context,
    force: Annotated[
        bool, typer.Option(help="Delete it even when its data cannot move back (it is lost).")
    ] = False,
) -> None:
    """Move the branches' data back to the disk, unmount and remove the pool (root)."""
    from branchline.providers.database import pool

    out = _output(ctx).output
    outcome = pool.delete(
        _pool_dir(ctx), stop_clusters=_stopper(ctx), force=force, progress=out.progress
    )
    if outcome is None:
        _output(ctx).output.emit(
            {"pool": None, "deleted": False}, lambda c: c.print("no pool: nothing to delete")
        )
        return
    _show_outcome(ctx, outcome, "deleted the pool")


@pool_app.command("status")
def pool_status(ctx: typer.Context) -> None:
    """The pool's size, use, mount and whether it can clone."""
    from branchline.providers.database import pool

    data = pool.status(_pool_dir(ctx))

    def human(console: Console) -> None:
        if data is None:
            console.print("no pool: `sudo branchline db pool create --size 20G` makes one")
            return
        console.print(f"image: {data['image']} ({_human_size(data['size'])}, "
                      f"{_human_size(data.get('image_allocated'))} on the disk)")  # fmt: skip
        if not data["mounted"]:
            console.print(f"[red]not mounted[/red] at {data['mount']}: "
                          "`sudo branchline db pool mount`")  # fmt: skip
        else:
            console.print(f"mounted at {data['mount']}: {_human_size(data['used'])} used, "
                          f"{_human_size(data['free'])} free")  # fmt: skip
            if data["disk_free"] < data["free"]:  # the sparse image cannot grow that far
                left = _human_size(data["disk_free"])
                console.print(f"[yellow]the disk under the image has only {left} free: the "
                              "pool can grow only that much more[/yellow]")  # fmt: skip
            clones = {True: "yes", False: "[red]no[/red]", None: "unknown (not root)"}
            console.print(f"can clone: {clones[data['can_clone']]}")
        places = {"pool": "in the pool", "disk": "on the disk", "none": "not made yet"}
        console.print(", ".join(f"{name} {places[where]}" for name, where in data["data"].items()))

    _output(ctx).output.emit({"pool": data}, human)
