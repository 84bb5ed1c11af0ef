"""An in-memory DatabaseProvider: branches with parents, each a copy of its
parent's data (a dict) and schema (text) when made, reset from the parent's current
state, restored from the root's history."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from branchline import naming
from branchline.branchdata import DataPlan
from branchline.errors import UsageError
from branchline.providers.database import Branch, BranchStatus, GcReport


@dataclass
class _Data:
    rows: dict[str, Any] = field(default_factory=dict)
    schema: str = ""


class MemoryDatabase:
    """Construction makes the root branch (the way a cloud project has one)."""

    def __init__(self, root: str = naming.PRODUCTION_BRANCH) -> None:
        self.root = root
        self.branches: dict[str, Branch] = {}
        self.data: dict[str, _Data] = {}
        # The root's past states, oldest first: what a point-in-time restore reads.
        self.history: list[tuple[datetime, _Data]] = []
        self.closed = False
        self._add(root, None, _Data(schema="CREATE TABLE users (id integer);\n"), None)

    # -- test helpers -----------------------------------------------------------------

    def write(self, branch: str, key: str, value: Any) -> None:
        """Change a branch's data (what a service or a migration would do)."""
        self._ready(branch)
        self.data[branch].rows[key] = value
        if branch == self.root:
            self._remember()

    def read(self, branch: str) -> dict[str, Any]:
        self._ready(branch)
        return dict(self.data[branch].rows)

    def set_schema(self, branch: str, schema: str) -> None:
        self._ready(branch)
        self.data[branch].schema = schema

    # -- DatabaseProvider ---------------------------------------------------------------

    async def create_branch(
        self,
        name: str,
        parent: str | None = None,
        *,
        at: datetime | None = None,
        expires: datetime | None = None,
        data: DataPlan | None = None,
    ) -> Branch:
        name = naming.validate_branch_id(name)
        parent = naming.validate_branch_id(parent or self.root)
        if name == parent:
            raise UsageError(f"branch {name!r} cannot be its own parent")
        existing = self.branches.get(name)
        if existing is not None:
            # Like the local provider: a restore under a name taken by anything but
            # the same restore is refused, not answered with the other branch.
            if at is not None and existing.detail.get("restored_to") != at.isoformat():
                raise UsageError(
                    f"branch {name!r} already exists; it is not a restore to {at.isoformat()}"
                )
            return existing
        if parent not in self.branches:
            raise UsageError(f"parent branch {parent!r} does not exist")
        if at is not None:
            if parent != self.root:
                raise UsageError(f"point-in-time copies come only from {self.root!r}")
            return self._add(name, parent, self._as_of(at), expires, restored_to=at)
        made = copy.deepcopy(self.data[parent])
        if data is not None and data.rows != "copy":
            made.rows.clear()  # "schema" and "empty": no rows (and the schema follows)
        if data is not None and data.rows == "empty":
            made.schema = ""
        branch = self._add(name, parent, made, expires)
        if data is not None:
            branch = replace(branch, detail={**branch.detail, "data": data.as_dict()})
            self.branches[name] = branch
        return branch

    async def delete_branch(self, name: str, *, force: bool = False) -> bool:
        name = naming.validate_branch_id(name)
        if name == self.root and not force:
            raise UsageError(f"refusing to delete the root branch {name!r}")
        if name not in self.branches:
            return False
        del self.branches[name]
        del self.data[name]
        return True

    async def reset_branch(self, name: str) -> Branch:
        branch = self.branches.get(naming.validate_branch_id(name))
        if branch is None:
            raise UsageError(f"branch {name!r} does not exist")
        if branch.parent is None:
            raise UsageError(f"branch {name!r} has no parent to reset to")
        self.data[name] = copy.deepcopy(self.data[branch.parent])
        reset = replace(branch, detail={**branch.detail, "reset_at": _now().isoformat()})
        self.branches[name] = reset
        return reset

    async def get_branch(self, name: str) -> Branch | None:
        return self.branches.get(name)

    async def list_branches(self) -> list[Branch]:
        return sorted(self.branches.values(), key=lambda b: b.created_at)

    async def connection_uri(self, name: str) -> str:
        self._ready(name)
        return f"postgresql://app:pw-{name}@memory.invalid:5432/{name}"

    async def schema_dump(self, name: str) -> str:
        self._ready(name)
        return self.data[name].schema

    async def aclose(self) -> None:
        self.closed = True

    async def annotate(self, name: str, detail: Mapping[str, Any]) -> None:
        branch = self.branches[self._ready(name)]
        self.branches[name] = replace(branch, detail={**branch.detail, **detail})

    async def restore(self, name: str, at: datetime) -> Branch:
        return await self.create_branch(name, self.root, at=at)

    async def gc(self) -> GcReport:
        report = GcReport()
        now = _now()
        for branch in list(self.branches.values()):
            if branch.expires_at is not None and branch.expires_at <= now:
                await self.delete_branch(branch.name)
                report.expired_deleted.append(branch.name)
        return report

    # -- internals ------------------------------------------------------------------

    def _add(
        self, name: str, parent: str | None, data: _Data, expires: datetime | None,
        restored_to: datetime | None = None,
    ) -> Branch:  # fmt: skip
        detail = {"restored_to": restored_to.isoformat()} if restored_to else {}
        branch = Branch(name, parent, BranchStatus.READY, _now(), expires, compute="active",
                        detail=detail)  # fmt: skip
        self.branches[name] = branch
        self.data[name] = data
        if name == self.root:
            self._remember()
        return branch

    def _remember(self) -> None:
        self.history.append((_now(), copy.deepcopy(self.data[self.root])))

    def _as_of(self, at: datetime) -> _Data:
        if at > _now():
            raise UsageError(f"{at.isoformat()} is in the future")
        older = [state for moment, state in self.history if moment <= at]
        if not older:
            raise UsageError(f"no state of {self.root!r} is older than {at.isoformat()}")
        return copy.deepcopy(older[-1])

    def _ready(self, name: str) -> str:
        if name not in self.branches:
            raise UsageError(f"branch {name!r} does not exist")
        return name


def _now() -> datetime:
    return datetime.now(UTC)
