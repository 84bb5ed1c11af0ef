"""Releases and deployments in the control-plane store."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from branchline import naming
from branchline.store.queries import Conn


@dataclass(frozen=True)
class ReleaseRow:
    id: int
    service: str
    commit_sha: str
    build_number: int
    location: str | None
    status: str
    created_at: datetime

    @property
    def name(self) -> str:
        return naming.release_name(self.service, self.commit_sha, self.build_number)


@dataclass(frozen=True)
class DeploymentRow:
    id: int
    service: str
    environment: str
    release_id: int
    status: str
    detail: dict[str, Any]
    created_at: datetime
    updated_at: datetime


_RELEASE = "id, service, commit_sha, build_number, location, status, created_at"
_DEPLOYMENT = "id, service, environment, release_id, status, detail, created_at, updated_at"


async def release_for(conn: Conn, project: str, service: str, commit: str) -> ReleaseRow | None:
    async with conn.cursor(row_factory=class_row(ReleaseRow)) as cur:
        await cur.execute(
            f"SELECT {_RELEASE} FROM branchline.releases WHERE project = %s AND service = %s "  # noqa: S608
            "AND commit_sha = %s ORDER BY build_number DESC LIMIT 1",
            (project, service, commit),
        )
        return await cur.fetchone()


async def get_release(conn: Conn, release_id: int) -> ReleaseRow | None:
    async with conn.cursor(row_factory=class_row(ReleaseRow)) as cur:
        await cur.execute(
            f"SELECT {_RELEASE} FROM branchline.releases WHERE id = %s",  # noqa: S608
            (release_id,),
        )
        return await cur.fetchone()


async def releases_by_id(conn: Conn, ids: list[int]) -> dict[int, ReleaseRow]:
    """Several releases in one query, by id."""
    async with conn.cursor(row_factory=class_row(ReleaseRow)) as cur:
        await cur.execute(
            f"SELECT {_RELEASE} FROM branchline.releases WHERE id = ANY(%s)",  # noqa: S608
            (ids,),
        )
        return {row.id: row for row in await cur.fetchall()}


async def releases_of(conn: Conn, project: str, service: str) -> list[ReleaseRow]:
    async with conn.cursor(row_factory=class_row(ReleaseRow)) as cur:
        await cur.execute(
            f"SELECT {_RELEASE} FROM branchline.releases WHERE project = %s AND service = %s "  # noqa: S608
            "ORDER BY id DESC",
            (project, service),
        )
        return await cur.fetchall()


async def insert_release(
    conn: Conn, project: str, service: str, commit: str, build_number: int, location: str
) -> int:
    cur = await conn.execute(
        """INSERT INTO branchline.releases (project, service, commit_sha, build_number, location)
           VALUES (%s, %s, %s, %s, %s) RETURNING id""",
        (project, service, commit, build_number, location),
    )
    row = await cur.fetchone()
    assert row is not None
    release_id: int = row[0]  # type: ignore[assignment]
    return release_id


async def set_release_status(conn: Conn, release_id: int, status: str) -> None:
    await conn.execute(
        "UPDATE branchline.releases SET status = %s WHERE id = %s", (status, release_id)
    )


async def insert_deployment(
    conn: Conn,
    project: str,
    service: str,
    environment: str,
    release_id: int,
    detail: dict[str, Any],
) -> int:
    cur = await conn.execute(
        """INSERT INTO branchline.deployments (project, service, environment, release_id, detail)
           VALUES (%s, %s, %s, %s, %s) RETURNING id""",
        (project, service, environment, release_id, Jsonb(detail)),
    )
    row = await cur.fetchone()
    assert row is not None
    deployment_id: int = row[0]  # type: ignore[assignment]
    return deployment_id


async def update_deployment(
    conn: Conn,
    deployment_id: int,
    *,
    status: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        """UPDATE branchline.deployments
           SET status = coalesce(%s, status), detail = detail || %s, updated_at = now()
           WHERE id = %s""",
        (status, Jsonb(detail or {}), deployment_id),
    )


async def deployments(
    conn: Conn,
    project: str,
    *,
    environment: str | None = None,
    service: str | None = None,
    statuses: tuple[str, ...] | None = None,
) -> list[DeploymentRow]:
    async with conn.cursor(row_factory=class_row(DeploymentRow)) as cur:
        await cur.execute(
            f"""SELECT {_DEPLOYMENT} FROM branchline.deployments
                WHERE project = %s AND (%s::text IS NULL OR environment = %s)
                  AND (%s::text IS NULL OR service = %s)
                  AND (%s::text[] IS NULL OR status = ANY(%s))
                ORDER BY id DESC""",  # noqa: S608
            (project, environment, environment, service, service,
             list(statuses) if statuses else None, list(statuses) if statuses else None),
        )  # fmt: skip
        return await cur.fetchall()


async def get_deployment(conn: Conn, deployment_id: int) -> DeploymentRow | None:
    async with conn.cursor(row_factory=class_row(DeploymentRow)) as cur:
        await cur.execute(
            f"SELECT {_DEPLOYMENT} FROM branchline.deployments WHERE id = %s",  # noqa: S608
            (deployment_id,),
        )
        return await cur.fetchone()
