"""What every provider that keeps its branches in the store shares: the checks of a
create's names, the refusal of a restore under a name another moment holds, a
parent that is not there, and the Branch a row describes."""

from __future__ import annotations

from datetime import datetime

from branchline import naming
from branchline.errors import UsageError
from branchline.providers.database import Branch, BranchStatus
from branchline.store import branches as branch_rows


def checked_names(name: str, parent: str | None, root: str) -> tuple[str, str]:
    """The branch's and its parent's names (the root by default), both valid."""
    name = naming.validate_branch_id(name)
    parent = naming.validate_branch_id(parent or root)
    if name == parent:
        raise UsageError(f"branch {name!r} cannot be its own parent", hint="Name another --parent.")
    return name, parent


def refuse_other_moment(row: branch_rows.BranchRow, at: datetime | None) -> None:
    """A ready branch is returned by a create of its name, unless that create asks
    for a restore to a moment the branch was not made at."""
    if at is not None and row.detail.get("restored_to") != at.isoformat():
        raise UsageError(
            f"branch {row.name!r} already exists; it is not a restore to {at.isoformat()}",
            hint="Choose another --name for the restored branch.",
        )


def require_parent(parent: str, source: branch_rows.BranchRow | None) -> branch_rows.BranchRow:
    if source is None or source.status != BranchStatus.READY.value:
        raise UsageError(
            f"parent branch {parent!r} does not exist",
            hint="Run `branchline db init` to make (or, on Neon, find) production, or name "
            "an existing parent (`branchline db branches list`).",
        )
    return source


def branch_from_row(row: branch_rows.BranchRow, compute: str | None) -> Branch:
    return Branch(
        name=row.name,
        parent=row.parent,
        status=BranchStatus(row.status),
        created_at=row.created_at,
        expires_at=row.expires_at,
        size_bytes=row.size_bytes,
        port=row.port,
        compute=compute,
        detail=row.detail,
    )
