"""DNS record rows: the zone as branchline keeps it (the local DNS server answers
from these; the Cloudflare provider mirrors them).

Every change is followed by `notify` in the same transaction: servers LISTEN on
`CHANNEL` and refresh their in-memory copy of the zone when it fires.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg.rows import class_row

from branchline.store.queries import Conn

CHANNEL = "branchline_dns"
"""The LISTEN/NOTIFY channel; the payload is the project whose zone changed."""


@dataclass(frozen=True)
class DnsRow:
    name: str
    type: str
    content: str
    proxied: bool
    environment: str | None
    provider_id: str | None
    created_at: datetime
    updated_at: datetime


_COLUMNS = "name, type, content, proxied, environment, provider_id, created_at, updated_at"
_ORDER = "ORDER BY name, type"


async def get(conn: Conn, project: str, name: str, type: str) -> DnsRow | None:
    async with conn.cursor(row_factory=class_row(DnsRow)) as cur:
        await cur.execute(
            f"SELECT {_COLUMNS} FROM branchline.dns_records "  # noqa: S608 - fixed column list
            "WHERE project = %s AND name = %s AND type = %s",
            (project, name, type),
        )
        return await cur.fetchone()


async def for_name(conn: Conn, project: str, name: str) -> list[DnsRow]:
    """Every record at `name`, whatever its type."""
    async with conn.cursor(row_factory=class_row(DnsRow)) as cur:
        await cur.execute(
            f"SELECT {_COLUMNS} FROM branchline.dns_records "  # noqa: S608 - fixed column list
            f"WHERE project = %s AND name = %s {_ORDER}",
            (project, name),
        )
        return await cur.fetchall()


async def list_all(conn: Conn, project: str) -> list[DnsRow]:
    async with conn.cursor(row_factory=class_row(DnsRow)) as cur:
        await cur.execute(
            f"SELECT {_COLUMNS} FROM branchline.dns_records "  # noqa: S608 - fixed column list
            f"WHERE project = %s {_ORDER}",
            (project,),
        )
        return await cur.fetchall()


async def list_by_environment(conn: Conn, project: str, environment: str) -> list[DnsRow]:
    async with conn.cursor(row_factory=class_row(DnsRow)) as cur:
        await cur.execute(
            f"SELECT {_COLUMNS} FROM branchline.dns_records "  # noqa: S608 - fixed column list
            f"WHERE project = %s AND environment = %s {_ORDER}",
            (project, environment),
        )
        return await cur.fetchall()


def list_all_sync(conn: psycopg.Connection[tuple[object, ...]], project: str) -> list[DnsRow]:
    """`list_all` for the DNS server's listener thread (a blocking connection)."""
    with conn.cursor(row_factory=class_row(DnsRow)) as cur:
        cur.execute(
            f"SELECT {_COLUMNS} FROM branchline.dns_records "  # noqa: S608 - fixed column list
            f"WHERE project = %s {_ORDER}",
            (project,),
        )
        return cur.fetchall()


async def upsert(
    conn: Conn,
    project: str,
    name: str,
    type: str,
    content: str,
    *,
    proxied: bool,
    environment: str | None,
    provider_id: str | None = None,
) -> DnsRow:
    """Create the record or update it in place; a None `environment` or `provider_id`
    keeps the one already stored."""
    async with conn.cursor(row_factory=class_row(DnsRow)) as cur:
        await cur.execute(
            f"""INSERT INTO branchline.dns_records
                    (project, name, type, content, proxied, environment, provider_id)
                VALUES (%s, %s, %s, %s, %s, %s, %s)
                ON CONFLICT (project, name, type) DO UPDATE
                SET content = excluded.content,
                    proxied = excluded.proxied,
                    environment = coalesce(excluded.environment,
                                           branchline.dns_records.environment),
                    provider_id = coalesce(excluded.provider_id,
                                           branchline.dns_records.provider_id),
                    updated_at = now()
                RETURNING {_COLUMNS}""",  # noqa: S608 - fixed column list
            (project, name, type, content, proxied, environment, provider_id),
        )
        row = await cur.fetchone()
    assert row is not None  # INSERT ... ON CONFLICT DO UPDATE always returns the row
    return row


async def delete(conn: Conn, project: str, name: str, type: str | None = None) -> list[DnsRow]:
    """Delete the record of `type` at `name` (every type when None); return what went."""
    async with conn.cursor(row_factory=class_row(DnsRow)) as cur:
        await cur.execute(
            f"""DELETE FROM branchline.dns_records
                WHERE project = %s AND name = %s AND (%s::text IS NULL OR type = %s)
                RETURNING {_COLUMNS}""",  # noqa: S608 - fixed column list
            (project, name, type, type),
        )
        return await cur.fetchall()


async def notify(conn: Conn, project: str) -> None:
    """Tell DNS servers that `project`'s zone changed (delivered at commit)."""
    await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, project))
