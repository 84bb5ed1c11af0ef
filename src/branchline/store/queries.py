"""Query functions over the control-plane state (one place for the SQL)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg
from psycopg.rows import class_row

Conn = psycopg.AsyncConnection[tuple[object, ...]]


async def register_project(conn: Conn, name: str, root: Path, config_path: Path) -> None:
    await conn.execute(
        """INSERT INTO branchline.projects (name, root, config_path) VALUES (%s, %s, %s)
           ON CONFLICT (name) DO UPDATE
           SET root = excluded.root, config_path = excluded.config_path, seen_at = now()""",
        (name, str(root), str(config_path)),
    )


@dataclass(frozen=True)
class EnvironmentRow:
    name: str
    kind: str
    pr: int | None
    branch: str | None
    status: str
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None


async def list_environments(conn: Conn, project: str) -> list[EnvironmentRow]:
    async with conn.cursor(row_factory=class_row(EnvironmentRow)) as cur:
        await cur.execute(
            """SELECT name, kind, pr, branch, status, created_at, updated_at, expires_at
               FROM branchline.environments
               WHERE project = %s AND status <> 'deleted'
               ORDER BY kind <> 'production', pr NULLS FIRST, name""",
            (project,),
        )
        return await cur.fetchall()


async def schema_version(conn: Conn) -> int:
    cur = await conn.execute("SELECT coalesce(max(version), 0) FROM branchline.schema_migrations")
    row = await cur.fetchone()
    return int(row[0]) if row else 0  # type: ignore[call-overload]
