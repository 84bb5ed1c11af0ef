"""Database branches by hand: create, reset and delete, with the rule that a
branch an environment's services use is not pulled from under them."""

from __future__ import annotations

from datetime import datetime

from branchline import naming
from branchline.environment import Environment
from branchline.errors import UsageError
from branchline.kit import Kit
from branchline.providers.database import Branch, BranchStatus


async def create(
    kit: Kit, name: str, parent: str | None = None, *, expires: datetime | None = None
) -> Branch:
    """Copy `parent` (default: the configured parent) into `name`, or return the
    branch when it is already there."""
    return (await create_or_find(kit, name, parent, expires=expires))[0]


async def create_or_find(
    kit: Kit, name: str, parent: str | None = None, *, expires: datetime | None = None
) -> tuple[Branch, bool]:
    """`create`, saying whether the branch was there already: (branch, existed). A
    branch asked for with another parent than it has is an error naming both (never
    silently the other branch); the same parent is idempotent."""
    naming.validate_branch_id(name)
    if parent is not None:
        naming.validate_branch_id(parent)
    existing = await kit.database.get_branch(name)
    existed = existing is not None and existing.status == BranchStatus.READY
    if existing is not None and existed:
        _same_parent(existing, parent)
    branch = await kit.database.create_branch(name, parent, expires=expires)
    # Checked again on what came back: another create of `name` may have won the race.
    _same_parent(branch, parent)
    return branch, existed


def _same_parent(branch: Branch, parent: str | None) -> None:
    if parent is None or branch.parent == parent:
        return
    raise UsageError(
        f"branch {branch.name!r} already exists with parent {branch.parent or 'none'!r}, "
        f"not {parent!r}",
        hint=f"Use another name for a copy of {parent!r}, or delete {branch.name!r} first "
        f"(`branchline db branches delete {branch.name}`); without --parent the existing "
        "branch is returned.",
    )


async def reset(kit: Kit, name: str) -> Branch:
    """`name` holds its parent's current data again (same name and URI)."""
    await refuse_in_use(kit, naming.validate_branch_id(name), "reset")
    return await kit.database.reset_branch(name)


async def delete(kit: Kit, name: str, *, force: bool = False) -> bool:
    """Remove `name`; False when it was already gone. `force` allows the root branch
    and a branch in use (its services break)."""
    naming.validate_branch_id(name)
    if not force:
        await refuse_in_use(kit, name, "delete")
    return await kit.database.delete_branch(name, force=force)


async def refuse_in_use(kit: Kit, name: str, verb: str) -> None:
    """Production's branch is never deleted or reset this way (a restore brings its
    data back); a live preview's branch goes with its preview."""
    if name == await kit.database_branch(Environment.production()):
        raise UsageError(
            f"refusing to {verb} {name!r}: production's services use it",
            hint="Use `branchline restore --to TIME` to bring production's data back to a moment.",
        )
    pr = _preview_pr(name)
    if verb == "delete" and pr is not None:
        preview = await kit.previews.get(pr)
        if preview is not None and preview.status != "deleted":
            raise UsageError(
                f"refusing to delete {name!r}: preview-{pr}'s services use it",
                hint=f"Close the preview instead (`branchline pr close {pr}`, or "
                f"POST /api/previews/{pr}/close).",
            )


def _preview_pr(name: str) -> int | None:
    """The pull request whose preview uses branch `name` (`pr-8` and `pr-8-e2e`)."""
    prefix, _, rest = name.partition("-")
    number = rest.removesuffix("-e2e")
    return int(number) if prefix == "pr" and number.isdigit() else None
