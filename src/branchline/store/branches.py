"""Branch rows: what the store knows of each database branch."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from branchline.store.queries import Conn


@dataclass(frozen=True)
class BranchRow:
    name: str
    parent: str | None
    provider: str
    status: str
    port: int | None
    size_bytes: int | None
    detail: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None


_COLUMNS = """name, parent, provider, status, port, size_bytes, detail,
              created_at, updated_at, expires_at"""


async def get(conn: Conn, project: str, name: str) -> BranchRow | None:
    async with conn.cursor(row_factory=class_row(BranchRow)) as cur:
        await cur.execute(
            f"SELECT {_COLUMNS} FROM branchline.branches WHERE project = %s AND name = %s",  # noqa: S608 - fixed column list
            (project, name),
        )
        return await cur.fetchone()


async def list_all(conn: Conn, project: str) -> list[BranchRow]:
    async with conn.cursor(row_factory=class_row(BranchRow)) as cur:
        await cur.execute(
            f"SELECT {_COLUMNS} FROM branchline.branches WHERE project = %s "  # noqa: S608 - fixed column list
            "ORDER BY parent NULLS FIRST, created_at, name",
            (project,),
        )
        return await cur.fetchall()


async def upsert(
    conn: Conn,
    project: str,
    name: str,
    *,
    parent: str | None,
    provider: str,
    status: str,
    expires_at: datetime | None = None,
) -> None:
    """Record the intent to create (status `creating`), or re-create after a failure."""
    await conn.execute(
        """INSERT INTO branchline.branches (project, name, parent, provider, status, expires_at)
           VALUES (%s, %s, %s, %s, %s, %s)
           ON CONFLICT (project, name) DO UPDATE
           SET parent = excluded.parent, provider = excluded.provider,
               status = excluded.status, expires_at = excluded.expires_at,
               created_at = now(), updated_at = now()""",
        (project, name, parent, provider, status, expires_at),
    )


async def update(
    conn: Conn,
    project: str,
    name: str,
    *,
    status: str | None = None,
    port: int | None = None,
    size_bytes: int | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Change what is given; `detail` is merged into the existing detail."""
    await conn.execute(
        """UPDATE branchline.branches
           SET status = coalesce(%s, status),
               port = coalesce(%s, port),
               size_bytes = coalesce(%s, size_bytes),
               detail = detail || %s,
               updated_at = now()
           WHERE project = %s AND name = %s""",
        (status, port, size_bytes, Jsonb(detail or {}), project, name),
    )


async def delete(conn: Conn, project: str, name: str) -> None:
    await conn.execute(
        "DELETE FROM branchline.branches WHERE project = %s AND name = %s", (project, name)
    )
