"""Query functions over the control-plane state (one place for the SQL)."""

from __future__ import annotations

from pathlib import Path

import psycopg

Conn = psycopg.AsyncConnection[tuple[object, ...]]


async def register_project(conn: Conn, name: str, root: Path, config_path: Path) -> None:
    await conn.execute(
        """INSERT INTO branchline.projects (name, root, config_path) VALUES (%s, %s, %s)
           ON CONFLICT (name) DO UPDATE
           SET root = excluded.root, config_path = excluded.config_path, seen_at = now()""",
        (name, str(root), str(config_path)),
    )


async def schema_version(conn: Conn) -> int:
    cur = await conn.execute("SELECT coalesce(max(version), 0) FROM branchline.schema_migrations")
    row = await cur.fetchone()
    return int(row[0]) if row else 0  # type: ignore[call-overload]
