"""Query functions for `branchline.secrets`: sealed values only, never plaintext.

Every row holds a nonce and an AES-GCM ciphertext made by `branchline.secrets`;
these functions neither see nor return a value in clear.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from psycopg.rows import class_row

from branchline.store.queries import Conn

if TYPE_CHECKING:
    from branchline.store.state import Store


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


class SealedStore(Protocol):
    """Where one project's sealed values live (the state database; memory in tests).
    It never sees a value in clear."""

    async def upsert(
        self, environment: str, name: str, *, nonce: bytes, ciphertext: bytes, key_id: str,
        generated: bool,
    ) -> datetime: ...  # fmt: skip

    async def insert_if_absent(
        self, environment: str, name: str, *, nonce: bytes, ciphertext: bytes, key_id: str,
        generated: bool,
    ) -> bool: ...  # fmt: skip

    async def fetch(self, environments: Sequence[str]) -> list[SealedRow]: ...

    async def list_meta(self, environment: str | None = None) -> list[SecretMeta]: ...

    async def environments_with(self, name: str, prefix: str) -> list[str]: ...

    async def delete(self, environment: str, name: str) -> bool: ...

    async def delete_environment(self, environment: str) -> list[str]: ...


class SecretRows:
    """One project's sealed values in the state database."""

    def __init__(self, store: Store, project: str) -> None:
        self.store = store
        self.project = project

    async def upsert(
        self, environment: str, name: str, *, nonce: bytes, ciphertext: bytes, key_id: str,
        generated: bool,
    ) -> datetime:  # fmt: skip
        async with self.store.connect() as conn:
            return await upsert(
                conn, self.project, environment, name, nonce=nonce, ciphertext=ciphertext,
                key_id=key_id, generated=generated,
            )  # fmt: skip

    async def insert_if_absent(
        self, environment: str, name: str, *, nonce: bytes, ciphertext: bytes, key_id: str,
        generated: bool,
    ) -> bool:  # fmt: skip
        async with self.store.connect() as conn:
            return await insert_if_absent(
                conn, self.project, environment, name, nonce=nonce, ciphertext=ciphertext,
                key_id=key_id, generated=generated,
            )  # fmt: skip

    async def fetch(self, environments: Sequence[str]) -> list[SealedRow]:
        async with self.store.connect() as conn:
            return await fetch(conn, self.project, environments)

    async def list_meta(self, environment: str | None = None) -> list[SecretMeta]:
        async with self.store.connect() as conn:
            return await list_meta(conn, self.project, environment)

    async def environments_with(self, name: str, prefix: str) -> list[str]:
        async with self.store.connect() as conn:
            return await environments_with(conn, self.project, name, _like_prefix(prefix))

    async def delete(self, environment: str, name: str) -> bool:
        async with self.store.connect() as conn:
            return await delete(conn, self.project, environment, name)

    async def delete_environment(self, environment: str) -> list[str]:
        async with self.store.connect() as conn:
            return await delete_environment(conn, self.project, environment)


def _like_prefix(prefix: str) -> str:
    """A LIKE pattern matching what starts with `prefix` (its own % and _ escaped)."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
