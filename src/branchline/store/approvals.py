"""Approvals of a fork's pull request: one per (pull request, head commit)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from branchline.store.queries import Conn

if TYPE_CHECKING:
    from branchline.store.state import Store


async def approve(conn: Conn, project: str, pr: int, sha: str, by: str) -> bool:
    """Record the approval; False when this commit was approved before."""
    cur = await conn.execute(
        """INSERT INTO branchline.approvals (project, pr, sha, approved_by)
           VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1""",
        (project, pr, sha, by),
    )
    return await cur.fetchone() is not None


async def approved(conn: Conn, project: str, pr: int, sha: str) -> bool:
    cur = await conn.execute(
        "SELECT 1 FROM branchline.approvals WHERE project = %s AND pr = %s AND sha = %s",
        (project, pr, sha),
    )
    return await cur.fetchone() is not None


class ApprovalLedger(Protocol):
    async def approve(self, pr: int, sha: str, by: str) -> bool: ...

    async def approved(self, pr: int, sha: str) -> bool: ...


class Approvals:
    """One project's approvals in the store."""

    def __init__(self, store: Store, project: str) -> None:
        self.store = store
        self.project = project

    async def approve(self, pr: int, sha: str, by: str) -> bool:
        async with self.store.connect() as conn:
            return await approve(conn, self.project, pr, sha, by)

    async def approved(self, pr: int, sha: str) -> bool:
        async with self.store.connect() as conn:
            return await approved(conn, self.project, pr, sha)
