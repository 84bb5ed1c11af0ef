"""The provider work pipeline steps call by name, shared by several pipelines.

An action is `async def action(kit, ctx, **params)`; `catalog.bound(kit)` binds
the kit so the engine can call `action(ctx, **params)`. Parameters are plain JSON
(they are stored with the run), and every action is safe to run twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from branchline import migrations
from branchline.branchdata import plan_for
from branchline.engine.checkout import checked_out, git_dir
from branchline.engine.runner import StepContext
from branchline.errors import BranchlineError
from branchline.kit import Kit
from branchline.pipelines import posting
from branchline.providers.database import CreateDbGrants

KitAction = Callable[..., Awaitable[Any]]
DATABASE_URL = "database_url"  # the artifact holding a branch's connection URI
STATUS_CONTEXT = "branchline/testing"


class Log(Protocol):
    """Where a step's lines go: a run's log, or a quiet one outside a run."""

    async def log(self, line: str) -> None: ...


async def create_branch(
    kit: Kit, ctx: StepContext, *, name: str, hours: float | None = None,
    publish: str = DATABASE_URL, createdb: bool = False, data: str = "copy",
) -> None:  # fmt: skip
    """Copy the parent (production) into `name`, shaped as `data` says (masked rows,
    the schema only, a fresh database) before anything can use it, and publish its
    URI, masked. With `createdb`, its application role may create databases (a test
    runner's own)."""
    expires = datetime.now(UTC) + timedelta(hours=hours) if hours else None
    plan = plan_for(kit.config, data)
    began = asyncio.get_running_loop().time()
    branch = await kit.database.create_branch(
        name, kit.config.database.parent, expires=expires, data=plan
    )
    took = asyncio.get_running_loop().time() - began
    await ctx.log(f"branch {branch.name} copied from {branch.parent} in {took:.2f} s")
    await ctx.log(f"{branch.name} holds {plan.describe()}{shaped(branch.detail)}")
    if createdb and isinstance(kit.database, CreateDbGrants):
        await kit.database.allow_createdb(name)
        await ctx.log(f"{branch.name}: its role may create databases")
    await ctx.publish(publish, await kit.database.connection_uri(name), sensitive=True, days=1)


def shaped(detail: Mapping[str, Any]) -> str:
    """What shaping a branch took, from its record (" (0.04 s, 3 tables emptied)")."""
    done = detail.get("shaped") or {}
    if not done or (not done.get("seconds") and not done.get("masked")):
        return ""
    parts = [f"{done.get('seconds', 0):.2f} s"]
    if done.get("tables_emptied"):
        parts.append(f"{done['tables_emptied']} tables emptied")
    if done.get("masked"):
        parts.append(f"{done.get('rows_masked', 0)} rows masked")
    return f" ({', '.join(parts)})"


async def migrate_branch(kit: Kit, ctx: StepContext, *, name: str) -> None:
    """Run the project's migrations, from the run's commit, against branch `name`."""
    if ctx.repo is None or ctx.sha is None:
        raise BranchlineError("a migration needs the run's repository and commit")
    lines: list[str] = []
    history = await asyncio.to_thread(git_dir, ctx.repo)
    try:
        async with checked_out(ctx.repo, ctx.sha, prepare=kit.sandbox.hand_over) as checkout:
            result = await migrations.migrate(
                kit.config, kit.database, name, on_line=lines.append,
                cwd=kit.in_checkout(checkout), fingerprint=False, sandbox=kit.sandbox,
                readable=(history,) if history else (), secrets=ctx.secrets,
            )  # fmt: skip
    finally:  # what it printed, also when it timed out or was stopped
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


async def run_hook(
    kit: Kit, log: Log, *, repo: Path, sha: str, branch: str, command: Sequence[str],
    what: str, timeout: float, secrets: Mapping[str, str] | None = None,
) -> int:  # fmt: skip
    """Run a command of the project's (a seed, a pre-destroy hook) from commit `sha`
    against `branch`, exactly as the migrate step runs: a checkout of the commit, the
    sandbox, the branch's variables, the environment's `secrets` (masked) and nothing
    else. Returns its exit code."""
    history = await asyncio.to_thread(git_dir, repo)
    async with checked_out(repo, sha, prepare=kit.sandbox.hand_over) as checkout:
        lines: list[str] = []
        exit_code, seconds, _tail = await migrations.run_on_branch(
            kit.config, kit.database, branch, command, on_line=lines.append,
            cwd=kit.in_checkout(checkout), sandbox=kit.sandbox,
            readable=(history,) if history else (), timeout=timeout, what=what,
            secrets=secrets,
        )  # fmt: skip
    for line in lines:
        await log.log(line)
    await log.log(f"{what} on {branch}: exit code {exit_code} after {seconds:.2f} s")
    return exit_code


async def seed_branch(
    kit: Kit, ctx: StepContext, *, name: str, command: list[str], timeout: float
) -> None:
    """Run the seed command (after the migrations) against branch `name`."""
    if ctx.repo is None or ctx.sha is None:
        raise BranchlineError("a seed needs the run's repository and commit")
    code = await run_hook(kit, ctx, repo=ctx.repo, sha=ctx.sha, branch=name, command=command,
                          what="seed", timeout=timeout, secrets=ctx.secrets)  # fmt: skip
    if code != 0:
        raise BranchlineError(
            f"the seed command failed on {name} (exit code {code})",
            hint="The lines above are its output; fix `seed` in branchline.toml or the "
            "seed script.",
        )
    await kit.database.annotate(name, {"seeded_at": datetime.now(UTC).isoformat()})


async def delete_branches(kit: Kit, ctx: StepContext, *, names: list[str]) -> None:
    """Delete every branch named (those already gone are fine)."""
    for name in names:
        deleted = await kit.database.delete_branch(name)
        await ctx.log(f"deleted branch {name}" if deleted else f"branch {name} was not there")


async def set_status(
    kit: Kit, ctx: StepContext, *, state: str, description: str, context: str = STATUS_CONTEXT
) -> None:
    if ctx.sha:
        await posting.status(kit, ctx, ctx.sha, context, state, description)


SHARED: Mapping[str, KitAction] = {
    "branch.create": create_branch,
    "branch.migrate": migrate_branch,
    "branch.seed": seed_branch,
    "branch.delete": delete_branches,
    "forge.status": set_status,
}
