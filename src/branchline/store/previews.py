"""Preview environments: one row per pull request that had one."""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from branchline.store.queries import Conn

if TYPE_CHECKING:
    from branchline.store.state import Store

LIVE = ("creating", "live", "failed")  # what counts against `[preview] max_live`


@dataclass(frozen=True)
class PreviewRow:
    project: str
    pr: int
    status: str
    sha: str | None
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    detail: dict[str, Any]


_COLUMNS = "project, pr, status, sha, created_at, updated_at, expires_at, detail"


async def get(conn: Conn, project: str, pr: int) -> PreviewRow | None:
    async with conn.cursor(row_factory=class_row(PreviewRow)) as cur:
        await cur.execute(
            f"SELECT {_COLUMNS} FROM branchline.previews WHERE project = %s AND pr = %s",  # noqa: S608
            (project, pr),
        )
        return await cur.fetchone()


async def list_previews(
    conn: Conn, project: str, statuses: tuple[str, ...] | None = None
) -> list[PreviewRow]:
    async with conn.cursor(row_factory=class_row(PreviewRow)) as cur:
        await cur.execute(
            f"""SELECT {_COLUMNS} FROM branchline.previews
                WHERE project = %s AND (%s::text[] IS NULL OR status = ANY(%s))
                ORDER BY pr""",  # noqa: S608
            (project, list(statuses) if statuses else None, list(statuses) if statuses else None),
        )
        return await cur.fetchall()


async def reserve(
    conn: Conn, project: str, pr: int, *, sha: str, max_live: int, ttl_seconds: float
) -> tuple[bool, list[int]]:
    """Mark preview `pr` as being created, unless `max_live` others are up.
    Returns (reserved, the PRs holding the places when refused)."""
    async with conn.transaction():
        # One reservation at a time per project, so two PRs cannot take the last place.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
            (f"branchline:previews:{project}",),
        )
        cur = await conn.execute(
            """SELECT pr FROM branchline.previews
               WHERE project = %s AND pr <> %s AND status = ANY(%s) ORDER BY pr""",
            (project, pr, list(LIVE)),
        )
        others = [int(row[0]) for row in await cur.fetchall()]  # type: ignore[call-overload]
        if len(others) >= max_live:
            return False, others
        await conn.execute(
            """INSERT INTO branchline.previews (project, pr, status, sha, expires_at)
               VALUES (%s, %s, 'creating', %s, now() + make_interval(secs => %s))
               ON CONFLICT (project, pr) DO UPDATE
               SET status = 'creating', sha = EXCLUDED.sha, updated_at = now(),
                   expires_at = EXCLUDED.expires_at""",
            (project, pr, sha, ttl_seconds),
        )
    return True, others


async def set_status(
    conn: Conn, project: str, pr: int, status: str, detail: dict[str, Any] | None = None
) -> None:
    await conn.execute(
        """INSERT INTO branchline.previews (project, pr, status, detail) VALUES (%s, %s, %s, %s)
           ON CONFLICT (project, pr) DO UPDATE
           SET status = EXCLUDED.status, updated_at = now(),
               detail = branchline.previews.detail || EXCLUDED.detail""",
        (project, pr, status, Jsonb(detail or {})),
    )


async def expired(conn: Conn, project: str) -> list[PreviewRow]:
    """Previews past their TTL that are still up."""
    async with conn.cursor(row_factory=class_row(PreviewRow)) as cur:
        await cur.execute(
            f"""SELECT {_COLUMNS} FROM branchline.previews
                WHERE project = %s AND status = ANY(%s) AND expires_at < now()
                ORDER BY pr""",  # noqa: S608
            (project, list(LIVE)),
        )
        return await cur.fetchall()


class PreviewLedger(Protocol):
    """What pipelines read and write about previews (the store keeps it; tests fake it)."""

    async def get(self, pr: int) -> PreviewRow | None: ...

    async def list(self) -> builtins.list[PreviewRow]: ...

    async def reserve(
        self, pr: int, *, sha: str, max_live: int, ttl_seconds: float
    ) -> tuple[bool, builtins.list[int]]: ...

    async def set_status(
        self, pr: int, status: str, detail: dict[str, Any] | None = None
    ) -> None: ...

    async def expired(self) -> builtins.list[PreviewRow]: ...


class Previews:
    """One project's previews in the store."""

    def __init__(self, store: Store, project: str) -> None:
        self.store = store
        self.project = project

    async def get(self, pr: int) -> PreviewRow | None:
        async with self.store.connect() as conn:
            return await get(conn, self.project, pr)

    async def list(self) -> builtins.list[PreviewRow]:
        async with self.store.connect() as conn:
            return await list_previews(conn, self.project)

    async def reserve(
        self, pr: int, *, sha: str, max_live: int, ttl_seconds: float
    ) -> tuple[bool, builtins.list[int]]:
        async with self.store.connect() as conn:
            return await reserve(
                conn, self.project, pr, sha=sha, max_live=max_live, ttl_seconds=ttl_seconds
            )

    async def set_status(self, pr: int, status: str, detail: dict[str, Any] | None = None) -> None:
        async with self.store.connect() as conn:
            await set_status(conn, self.project, pr, status, detail)

    async def expired(self) -> builtins.list[PreviewRow]:
        async with self.store.connect() as conn:
            return await expired(conn, self.project)
