"""The provider work pipeline steps call by name, shared by several pipelines.

An action is `async def action(kit, ctx, **params)`; `catalog.bound(kit)` binds
the kit so the engine can call `action(ctx, **params)`. Parameters are plain JSON
(they are stored with the run), and every action is safe to run twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from branchline import migrations
from branchline.engine.checkout import checked_out, git_dir
from branchline.engine.runner import StepContext
from branchline.errors import BranchlineError
from branchline.kit import Kit
from branchline.providers.database import CreateDbGrants

KitAction = Callable[..., Awaitable[Any]]
DATABASE_URL = "database_url"  # the artifact holding a branch's connection URI
STATUS_CONTEXT = "branchline/testing"


async def create_branch(
    kit: Kit, ctx: StepContext, *, name: str, hours: float | None = None,
    publish: str = DATABASE_URL, createdb: bool = False,
) -> None:  # fmt: skip
    """Copy the parent (production) into `name` and publish its URI, masked. With
    `createdb`, its application role may create databases (a test runner's own)."""
    expires = datetime.now(UTC) + timedelta(hours=hours) if hours else None
    began = asyncio.get_running_loop().time()
    branch = await kit.database.create_branch(name, kit.config.database.parent, expires=expires)
    took = asyncio.get_running_loop().time() - began
    await ctx.log(f"branch {branch.name} copied from {branch.parent} in {took:.2f} s")
    if createdb and isinstance(kit.database, CreateDbGrants):
        await kit.database.allow_createdb(name)
        await ctx.log(f"{branch.name}: its role may create databases")
    await ctx.publish(publish, await kit.database.connection_uri(name), sensitive=True, days=1)


async def migrate_branch(kit: Kit, ctx: StepContext, *, name: str) -> None:
    """Run the project's migrations, from the run's commit, against branch `name`."""
    if ctx.repo is None or ctx.sha is None:
        raise BranchlineError("a migration needs the run's repository and commit")
    lines: list[str] = []
    history = await asyncio.to_thread(git_dir, ctx.repo)
    async with checked_out(ctx.repo, ctx.sha, prepare=kit.sandbox.hand_over) as checkout:
        result = await migrations.migrate(
            kit.config, kit.database, name, on_line=lines.append, cwd=kit.in_checkout(checkout),
            fingerprint=False, sandbox=kit.sandbox, readable=(history,) if history else (),
        )  # fmt: skip
    for line in lines:
        await ctx.log(line)
    if not result.ok:
        raise BranchlineError(
            f"the migrations failed on {name} (exit code {result.exit_code})",
            hint="The lines above are the migrate command's output.",
        )
    await ctx.log(
        f"{name} migrated in {result.seconds:.2f} s; it has {len(result.applied)} migrations"
    )


async def delete_branches(kit: Kit, ctx: StepContext, *, names: list[str]) -> None:
    """Delete every branch named (those already gone are fine)."""
    for name in names:
        deleted = await kit.database.delete_branch(name)
        await ctx.log(f"deleted branch {name}" if deleted else f"branch {name} was not there")


async def set_status(
    kit: Kit, ctx: StepContext, *, state: str, description: str, context: str = STATUS_CONTEXT
) -> None:
    if ctx.sha:
        await kit.forge.set_status(ctx.sha, context, state, None, description)


SHARED: Mapping[str, KitAction] = {
    "branch.create": create_branch,
    "branch.migrate": migrate_branch,
    "branch.delete": delete_branches,
    "forge.status": set_status,
}
