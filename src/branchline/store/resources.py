"""The intent log: written before a provider creates or deletes anything, and
after with the outcome, so that a crash at any point leaves a record that
reconcile (and `db gc`) can finish or undo."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from branchline.store.queries import Conn


@dataclass(frozen=True)
class Resource:
    kind: str
    name: str
    environment: str | None
    state: str
    detail: dict[str, Any]
    updated_at: datetime


async def record(
    conn: Conn,
    project: str,
    kind: str,
    name: str,
    state: str,
    *,
    environment: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Write (or move) the resource's state: creating, ready, deleting, deleted, failed."""
    await conn.execute(
        """INSERT INTO branchline.resources (project, kind, name, environment, state, detail)
           VALUES (%s, %s, %s, %s, %s, %s)
           ON CONFLICT (project, kind, name) DO UPDATE
           SET state = excluded.state,
               environment = coalesce(excluded.environment, branchline.resources.environment),
               detail = branchline.resources.detail || excluded.detail,
               updated_at = now()""",
        (project, kind, name, environment, state, Jsonb(detail or {})),
    )


async def unfinished(conn: Conn, project: str, kind: str) -> list[Resource]:
    """Resources left in `creating` or `deleting`: work a crash may have interrupted."""
    async with conn.cursor(row_factory=class_row(Resource)) as cur:
        await cur.execute(
            """SELECT kind, name, environment, state, detail, updated_at
               FROM branchline.resources
               WHERE project = %s AND kind = %s AND state IN ('creating', 'deleting')
               ORDER BY id""",
            (project, kind),
        )
        return await cur.fetchall()


async def get(conn: Conn, project: str, kind: str, name: str) -> Resource | None:
    async with conn.cursor(row_factory=class_row(Resource)) as cur:
        await cur.execute(
            """SELECT kind, name, environment, state, detail, updated_at
               FROM branchline.resources WHERE project = %s AND kind = %s AND name = %s""",
            (project, kind, name),
        )
        return await cur.fetchone()
