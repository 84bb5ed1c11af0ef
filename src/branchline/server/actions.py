"""The buttons of the API and the dashboard: web parameters (text) parsed once and
handed to the operations, each answering what it set going as a `Started`.

`Actions` is what the server needs; `OperationActions` does it with a running
`serve`'s kit and engine. A server built without one only reads (503 on actions).
"""

from __future__ import annotations

from typing import Protocol

from branchline.engine.engine import Engine
from branchline.environment import Environment
from branchline.kit import Kit
from branchline.operations import branches, previews, runs
from branchline.operations import deploy as deploying
from branchline.operations.previews import Started
from branchline.timespec import parse_expiry


class Actions(Protocol):
    async def cancel(self, run_id: int, by: str) -> Started: ...

    async def rerun(self, run_id: int) -> Started: ...

    async def rollback(self, service: str, environment: str) -> Started: ...

    async def close_preview(self, pr: int) -> Started: ...

    async def push(self, branch: str) -> Started: ...

    async def approve(self, pr: int, by: str) -> Started: ...

    async def create_branch(
        self, name: str, parent: str | None, expires: str | None
    ) -> Started: ...

    async def delete_branch(self, name: str) -> Started: ...

    async def reset_branch(self, name: str) -> Started: ...


class OperationActions:
    """The actions, done by the operations with a running `serve`'s kit and engine."""

    def __init__(self, kit: Kit, engine: Engine) -> None:
        self.kit = kit
        self.engine = engine

    async def cancel(self, run_id: int, by: str) -> Started:
        return await runs.cancel(self.engine, run_id, by)

    async def rerun(self, run_id: int) -> Started:
        return await runs.rerun(self.kit, self.engine, run_id)

    async def rollback(self, service: str, environment: str) -> Started:
        back = await deploying.rollback(
            self.kit, service, Environment.parse(environment), by="the API"
        )
        return Started(f"{service} rolled back to {back.release.name}")

    async def close_preview(self, pr: int) -> Started:
        return await previews.close(self.kit, self.engine, pr)

    async def push(self, branch: str) -> Started:
        return await previews.record_push(self.kit, branch)

    async def approve(self, pr: int, by: str) -> Started:
        return await previews.approve(self.kit, pr, by=by)

    async def create_branch(self, name: str, parent: str | None, expires: str | None) -> Started:
        expires_at = parse_expiry(expires) if expires else None
        branch, existed = await branches.create_or_find(self.kit, name, parent, expires=expires_at)
        if existed:
            return Started(
                f"branch {branch.name} exists already (parent {branch.parent})", done=False
            )
        return Started(f"branch {branch.name} is ready (copied from {branch.parent})")

    async def delete_branch(self, name: str) -> Started:
        deleted = await branches.delete(self.kit, name)
        return Started(f"deleted {name}" if deleted else f"{name} was already gone", done=deleted)

    async def reset_branch(self, name: str) -> Started:
        branch = await branches.reset(self.kit, name)
        return Started(f"{branch.name} now holds {branch.parent}'s current data")
