"""Artifacts: named outputs of a run with a retention period."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from psycopg.rows import class_row

from branchline.store.queries import Conn


@dataclass(frozen=True)
class ArtifactRow:
    id: int
    run_id: int
    project: str | None
    workflow: str | None
    sha: str | None
    name: str
    value: str | None
    sensitive: bool
    created_at: datetime
    expires_at: datetime


_COLUMNS = "id, run_id, project, workflow, sha, name, value, sensitive, created_at, expires_at"


async def publish(
    conn: Conn,
    *,
    run_id: int,
    project: str,
    workflow: str,
    sha: str | None,
    name: str,
    value: str,
    sensitive: bool,
    retention: timedelta,
) -> None:
    await conn.execute(
        """INSERT INTO branchline.artifacts
               (run_id, project, workflow, sha, name, value, size_bytes, sensitive, expires_at)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, now() + %s)
           ON CONFLICT (run_id, name) DO UPDATE
           SET value = excluded.value, size_bytes = excluded.size_bytes,
               sensitive = excluded.sensitive, expires_at = excluded.expires_at""",
        (run_id, project, workflow, sha, name, value, len(value.encode()), sensitive, retention),
    )


async def find(
    conn: Conn,
    project: str,
    name: str,
    *,
    sha: str | None = None,
    workflow: str | None = None,
    run_id: int | None = None,
) -> tuple[ArtifactRow | None, ArtifactRow | None]:
    """(the newest live match, the newest expired match): the second explains a miss."""
    async with conn.cursor(row_factory=class_row(ArtifactRow)) as cur:
        await cur.execute(
            f"""SELECT {_COLUMNS} FROM branchline.artifacts
                WHERE project = %s AND name = %s
                  AND (%s::text IS NULL OR sha = %s)
                  AND (%s::text IS NULL OR workflow = %s)
                  AND (%s::bigint IS NULL OR run_id = %s)
                ORDER BY (expires_at > now()) DESC, created_at DESC LIMIT 1""",  # noqa: S608
            (project, name, sha, sha, workflow, workflow, run_id, run_id),
        )
        row = await cur.fetchone()
    if row is None:
        return None, None
    return (row, None) if row.expires_at > datetime.now(row.expires_at.tzinfo) else (None, row)


async def of_run(conn: Conn, run_id: int) -> list[ArtifactRow]:
    async with conn.cursor(row_factory=class_row(ArtifactRow)) as cur:
        await cur.execute(
            f"SELECT {_COLUMNS} FROM branchline.artifacts WHERE run_id = %s ORDER BY name",  # noqa: S608
            (run_id,),
        )
        return await cur.fetchall()


async def prune(conn: Conn) -> int:
    cur = await conn.execute("DELETE FROM branchline.artifacts WHERE expires_at <= now()")
    return cur.rowcount
