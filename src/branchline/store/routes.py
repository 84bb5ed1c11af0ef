"""The edge proxy's routes: which local process answers for which host name.

One row per host name (unique across projects: their zones differ), stored
normalised: lower-case, no trailing dot, no port. Every change is followed by
`NOTIFY branchline_routes` in the same transaction; edges LISTEN on `CHANNEL`
and reload their in-memory table when it fires, so that a deploy's switch to a
new process takes effect within milliseconds and no request reads the database.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg.rows import class_row

from branchline import naming
from branchline.environment import Environment
from branchline.errors import UsageError
from branchline.store.queries import Conn

CHANNEL = "branchline_routes"
"""The LISTEN/NOTIFY channel; the payload is the project whose routes changed."""

DEFAULT_UPSTREAM_HOST = "127.0.0.1"

_LABEL_RE = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_HOST_HINT = (
    "A route's host is a DNS name such as `api-preview-8.codex.localhost`: labels of "
    "letters, digits and `-`, at most 253 characters; no scheme, path or port."
)


@dataclass(frozen=True, slots=True)
class RouteRow:
    host: str
    project: str
    environment: str
    service: str
    upstream_host: str
    upstream_port: int
    deployment_id: int | None
    updated_at: datetime

    @property
    def upstream(self) -> tuple[str, int]:
        return (self.upstream_host, self.upstream_port)


_COLUMNS = (
    "host, project, environment, service, upstream_host, upstream_port, deployment_id, updated_at"
)
_ORDER = "ORDER BY project, environment, service, host"


def normalize_host(host: str) -> str:
    """The form routes are stored and looked up in: lower-case, without a port or a
    trailing dot (`API.Codex.localhost.:8080` -> `api.codex.localhost`). Does not
    validate; an IPv6 literal keeps its brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    name, colon, port = host.rpartition(":")
    if colon and (port.isdigit() or not port) and ":" not in name:
        host = name
    return host.rstrip(".")


def validate_host(host: str) -> str:
    """`host` normalised, or UsageError when it is not a host name routes accept."""
    raw = host
    host = host.strip().lower().removesuffix(".")
    labels = host.split(".")
    valid = (
        host.isascii()
        and 0 < len(host) <= naming.MAX_HOST_NAME
        and all(_LABEL_RE.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()
    )
    if not valid:
        shown = raw if len(raw) <= 80 else raw[:77] + "..."
        raise UsageError(f"Invalid route host {shown!r}.", hint=_HOST_HINT)
    return host


def _validate_upstream(upstream_host: str, port: int) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise UsageError(
            f"Invalid upstream port {port!r}.", hint="A port is an integer from 1 to 65535."
        )
    try:
        ipaddress.ip_address(upstream_host)
    except ValueError:
        if upstream_host != "localhost":
            raise UsageError(
                f"Invalid upstream host {upstream_host!r}.",
                hint="Local services listen on an IP address such as 127.0.0.1.",
            ) from None


async def set_route(
    conn: Conn,
    *,
    host: str,
    project: str,
    environment: str,
    service: str,
    port: int,
    deployment_id: int | None = None,
    upstream_host: str = DEFAULT_UPSTREAM_HOST,
) -> RouteRow:
    """Point `host` at `upstream_host:port` (create or move the route), then notify
    the edges. Requests already in flight finish on the upstream they started with;
    the next one goes to the new port."""
    host = validate_host(host)
    Environment.parse(environment)  # a route belongs to a real environment
    _validate_upstream(upstream_host, port)
    async with conn.transaction():
        async with conn.cursor(row_factory=class_row(RouteRow)) as cur:
            await cur.execute(
                f"""INSERT INTO branchline.routes
                        (host, project, environment, service, upstream_host, upstream_port,
                         deployment_id)
                    VALUES (%s, %s, %s, %s, %s, %s, %s)
                    ON CONFLICT (host) DO UPDATE
                    SET project = excluded.project,
                        environment = excluded.environment,
                        service = excluded.service,
                        upstream_host = excluded.upstream_host,
                        upstream_port = excluded.upstream_port,
                        deployment_id = excluded.deployment_id,
                        updated_at = now()
                    WHERE branchline.routes.project = excluded.project
                    RETURNING {_COLUMNS}""",  # noqa: S608 - fixed column list
                (host, project, environment, service, upstream_host, port, deployment_id),
            )
            row = await cur.fetchone()
        if row is None:  # the host is routed for another project: never take it over
            raise UsageError(
                f"The host {host} is already routed for another project.",
                hint="Host names are unique across projects; check the project's zone.",
            )
        await notify(conn, project)
    return row


async def get_route(conn: Conn, host: str) -> RouteRow | None:
    async with conn.cursor(row_factory=class_row(RouteRow)) as cur:
        await cur.execute(
            f"SELECT {_COLUMNS} FROM branchline.routes WHERE host = %s",  # noqa: S608
            (normalize_host(host),),
        )
        return await cur.fetchone()


async def delete_route(conn: Conn, host: str) -> bool:
    """Remove the route of `host`; False when there was none."""
    async with conn.transaction():
        cur = await conn.execute(
            "DELETE FROM branchline.routes WHERE host = %s RETURNING project",
            (normalize_host(host),),
        )
        row = await cur.fetchone()
        if row is not None:
            await notify(conn, str(row[0]))
    return row is not None


async def delete_routes(
    conn: Conn, *, project: str, environment: str | None = None, service: str | None = None
) -> int:
    """Remove every route of `project` (narrowed to an environment and/or a service);
    return how many went."""
    async with conn.transaction():
        cur = await conn.execute(
            """DELETE FROM branchline.routes
               WHERE project = %s
                 AND (%s::text IS NULL OR environment = %s)
                 AND (%s::text IS NULL OR service = %s)""",
            (project, environment, environment, service, service),
        )
        count = cur.rowcount
        if count:
            await notify(conn, project)
    return max(count, 0)


async def list_routes(conn: Conn, project: str | None = None) -> list[RouteRow]:
    """Every route (of `project` when given), ordered by project, environment, service."""
    async with conn.cursor(row_factory=class_row(RouteRow)) as cur:
        await cur.execute(
            f"SELECT {_COLUMNS} FROM branchline.routes "  # noqa: S608 - fixed column list
            f"WHERE %s::text IS NULL OR project = %s {_ORDER}",
            (project, project),
        )
        return await cur.fetchall()


def list_all_sync(url: str) -> list[RouteRow]:
    """Every route, on a short blocking connection (for threads and scripts)."""
    with (
        psycopg.connect(url, autocommit=True, application_name="branchline") as conn,
        conn.cursor(row_factory=class_row(RouteRow)) as cur,
    ):
        cur.execute(f"SELECT {_COLUMNS} FROM branchline.routes {_ORDER}")  # noqa: S608
        return cur.fetchall()


async def notify(conn: Conn, project: str) -> None:
    """Tell the edges that `project`'s routes changed (delivered at commit)."""
    await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, project))
