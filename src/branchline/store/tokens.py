"""API tokens, stored hashed: a token is `blt_` + 32 random bytes (url-safe base64),
shown once; lookups hash what a request presents."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from psycopg.rows import class_row

from branchline.store.queries import Conn

PREFIX = "blt_"


@dataclass(frozen=True)
class TokenRow:
    id: int
    project: str
    name: str
    scope: str
    created_at: datetime
    last_used_at: datetime | None


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


async def create(conn: Conn, project: str, name: str, scope: str) -> tuple[TokenRow, str]:
    """A new token (replacing one of the same name); returns its row and the token."""
    token = new_token()
    async with conn.cursor(row_factory=class_row(TokenRow)) as cur:
        await cur.execute(
            """INSERT INTO branchline.tokens (project, name, scope, token_hash)
               VALUES (%s, %s, %s, %s)
               ON CONFLICT (project, name) DO UPDATE
               SET scope = EXCLUDED.scope, token_hash = EXCLUDED.token_hash,
                   created_at = now(), last_used_at = NULL
               RETURNING id, project, name, scope, created_at, last_used_at""",
            (project, name, scope, digest(token)),
        )
        row = await cur.fetchone()
    assert row is not None
    return row, token


async def find(conn: Conn, project: str, token: str) -> TokenRow | None:
    async with conn.cursor(row_factory=class_row(TokenRow)) as cur:
        await cur.execute(
            """UPDATE branchline.tokens SET last_used_at = now()
               WHERE project = %s AND token_hash = %s
               RETURNING id, project, name, scope, created_at, last_used_at""",
            (project, digest(token)),
        )
        return await cur.fetchone()


async def list_tokens(conn: Conn, project: str) -> list[TokenRow]:
    async with conn.cursor(row_factory=class_row(TokenRow)) as cur:
        await cur.execute(
            """SELECT id, project, name, scope, created_at, last_used_at FROM branchline.tokens
               WHERE project = %s ORDER BY name""",
            (project,),
        )
        return await cur.fetchall()


async def delete(conn: Conn, project: str, name: str) -> bool:
    cur = await conn.execute(
        "DELETE FROM branchline.tokens WHERE project = %s AND name = %s", (project, name)
    )
    return cur.rowcount > 0


async def current(conn: Conn, project: str, name: str) -> tuple[str, str] | None:
    """(scope, hash) of the token named `name` now: what a dashboard session made
    with it is checked against on every request (None: it was deleted)."""
    cur = await conn.execute(
        "SELECT scope, token_hash FROM branchline.tokens WHERE project = %s AND name = %s",
        (project, name),
    )
    row = await cur.fetchone()
    return None if row is None else (str(row[0]), str(row[1]))


async def set_scope(conn: Conn, project: str, name: str, scope: str) -> bool:
    """Change a token's scope in place (the token stays the same); False: no such token."""
    cur = await conn.execute(
        "UPDATE branchline.tokens SET scope = %s WHERE project = %s AND name = %s",
        (scope, project, name),
    )
    return cur.rowcount > 0
