"""Query functions for `branchline.secrets`: sealed values only, never plaintext.

Every row holds a nonce and an AES-GCM ciphertext made by `branchline.secrets`;
these functions neither see nor return a value in clear.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from psycopg.rows import class_row

from branchline.store.queries import Conn


@dataclass(frozen=True, slots=True)
class SealedRow:
    """One stored secret as it sits in the table (ciphertext, not a value)."""

    environment: str
    name: str
    nonce: bytes = field(repr=False)
    ciphertext: bytes = field(repr=False)
    key_id: str
    generated: bool
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class SecretMeta:
    """What may be shown about a stored secret: never its value."""

    environment: str
    name: str
    key_id: str
    generated: bool
    updated_at: datetime


async def upsert(
    conn: Conn,
    project: str,
    environment: str,
    name: str,
    *,
    nonce: bytes,
    ciphertext: bytes,
    key_id: str,
    generated: bool,
) -> datetime:
    """Store (or replace) one sealed value; returns its new updated_at."""
    cur = await conn.execute(
        """INSERT INTO branchline.secrets
               (project, environment, name, nonce, ciphertext, key_id, generated, updated_at)
           VALUES (%s, %s, %s, %s, %s, %s, %s, clock_timestamp())
           ON CONFLICT (project, environment, name) DO UPDATE
           SET nonce = excluded.nonce, ciphertext = excluded.ciphertext,
               key_id = excluded.key_id, generated = excluded.generated,
               updated_at = excluded.updated_at
           RETURNING updated_at""",
        (project, environment, name, nonce, ciphertext, key_id, generated),
    )
    row = await cur.fetchone()
    assert row is not None
    moment = row[0]
    assert isinstance(moment, datetime)
    return moment


async def insert_if_absent(
    conn: Conn,
    project: str,
    environment: str,
    name: str,
    *,
    nonce: bytes,
    ciphertext: bytes,
    key_id: str,
    generated: bool,
) -> bool:
    """Store one sealed value unless the name already has one; True when stored.
    Two processes racing both succeed and exactly one value is kept."""
    cur = await conn.execute(
        """INSERT INTO branchline.secrets
               (project, environment, name, nonce, ciphertext, key_id, generated, updated_at)
           VALUES (%s, %s, %s, %s, %s, %s, %s, clock_timestamp())
           ON CONFLICT (project, environment, name) DO NOTHING
           RETURNING 1""",
        (project, environment, name, nonce, ciphertext, key_id, generated),
    )
    return await cur.fetchone() is not None


async def fetch(conn: Conn, project: str, environments: Sequence[str]) -> list[SealedRow]:
    """The sealed rows of these environments, ordered by environment then name."""
    async with conn.cursor(row_factory=class_row(SealedRow)) as cur:
        await cur.execute(
            """SELECT environment, name, nonce, ciphertext, key_id, generated, updated_at
               FROM branchline.secrets
               WHERE project = %s AND environment = ANY(%s)
               ORDER BY environment, name""",
            (project, list(environments)),
        )
        return await cur.fetchall()


async def list_meta(conn: Conn, project: str, environment: str | None = None) -> list[SecretMeta]:
    """Names, environments and times of stored secrets (all environments when None)."""
    async with conn.cursor(row_factory=class_row(SecretMeta)) as cur:
        await cur.execute(
            """SELECT environment, name, key_id, generated, updated_at
               FROM branchline.secrets
               WHERE project = %s AND (%s::text IS NULL OR environment = %s::text)
               ORDER BY environment <> 'production', environment, name""",
            (project, environment, environment),
        )
        return await cur.fetchall()


async def environments_with(conn: Conn, project: str, name: str, like: str) -> list[str]:
    """The environments matching the SQL LIKE pattern `like` that hold `name`."""
    cur = await conn.execute(
        """SELECT environment FROM branchline.secrets
           WHERE project = %s AND name = %s AND environment LIKE %s
           ORDER BY environment""",
        (project, name, like),
    )
    return [str(row[0]) for row in await cur.fetchall()]


async def delete(conn: Conn, project: str, environment: str, name: str) -> bool:
    """Forget one secret; False when there was nothing to delete."""
    cur = await conn.execute(
        "DELETE FROM branchline.secrets WHERE project = %s AND environment = %s AND name = %s",
        (project, environment, name),
    )
    return cur.rowcount > 0


async def delete_environment(conn: Conn, project: str, environment: str) -> list[str]:
    """Forget every secret of one environment; returns the names deleted."""
    cur = await conn.execute(
        """DELETE FROM branchline.secrets WHERE project = %s AND environment = %s
           RETURNING name""",
        (project, environment),
    )
    return sorted(str(row[0]) for row in await cur.fetchall())
