"""The local code host's records: events, pull requests, comments, issues, statuses."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from branchline import events as typed
from branchline.store.queries import Conn


@dataclass(frozen=True)
class EventRow:
    id: int
    delivery_id: str
    kind: str
    action: str | None
    source: str
    payload: dict[str, Any]
    received_at: datetime
    processed_at: datetime | None

    @property
    def event(self) -> typed.Event | None:
        """The typed event this row holds (None for kinds that start nothing)."""
        return typed.from_stored(self.kind, self.action, self.payload)


@dataclass(frozen=True)
class PullRequestRow:
    number: int
    title: str
    head_branch: str
    base_branch: str
    head_sha: str
    state: str
    created_at: datetime
    updated_at: datetime
    closed_at: datetime | None
    fork: bool = False  # its head is in another repository


@dataclass(frozen=True)
class CommentRow:
    id: int
    pr: int
    key: str
    body: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class StatusRow:
    sha: str
    context: str
    state: str
    url: str | None
    description: str | None
    updated_at: datetime


async def record_event(
    conn: Conn,
    project: str,
    *,
    delivery_id: str,
    kind: str,
    action: str | None,
    source: str,
    payload: dict[str, Any],
) -> EventRow | None:
    """The new event, or None when this delivery was recorded before (a replay)."""
    async with conn.cursor(row_factory=class_row(EventRow)) as cur:
        await cur.execute(
            """INSERT INTO branchline.events (project, delivery_id, kind, action, source, payload)
               VALUES (%s, %s, %s, %s, %s, %s)
               ON CONFLICT (delivery_id) DO NOTHING
               RETURNING id, delivery_id, kind, action, source, payload, received_at,
                         processed_at""",
            (project, delivery_id, kind, action, source, Jsonb(payload)),
        )
        return await cur.fetchone()


async def record(
    conn: Conn, project: str, event: typed.Event, *, delivery_id: str, source: str
) -> EventRow | None:
    """Record a typed event; None when this delivery was recorded before (a replay)."""
    return await record_event(
        conn, project, delivery_id=delivery_id, kind=event.kind, action=event.action,
        source=source, payload=event.to_payload(),
    )  # fmt: skip


_PR = (
    "number, title, head_branch, base_branch, head_sha, state, created_at, updated_at, closed_at, "
    "fork"
)


async def open_pr(
    conn: Conn, project: str, *, title: str, head: str, base: str, sha: str, fork: bool = False
) -> tuple[PullRequestRow, bool]:
    """Open a pull request from `head`, or find the one already open for it:
    (the row, whether it is new). The unique index on open pull requests decides,
    so two callers at once get one pull request between them."""
    async with conn.transaction():
        # Numbers are per project, like GitHub's; the lock makes them gap-free.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"branchline:pr:{project}",)
        )
        async with conn.cursor(row_factory=class_row(PullRequestRow)) as cur:
            await cur.execute(
                f"""INSERT INTO branchline.pull_requests
                        (project, number, title, head_branch, base_branch, head_sha, fork)
                    SELECT %s, coalesce(max(number), 0) + 1, %s, %s, %s, %s, %s
                    FROM branchline.pull_requests WHERE project = %s
                    ON CONFLICT (project, head_repo, head_branch, base_branch)
                        WHERE state = 'open' DO NOTHING
                    RETURNING {_PR}""",  # noqa: S608 - fixed column list
                (project, title, head, base, sha, fork, project),
            )
            row = await cur.fetchone()
        if row is not None:
            return row, True
        async with conn.cursor(row_factory=class_row(PullRequestRow)) as cur:
            await cur.execute(
                f"""SELECT {_PR} FROM branchline.pull_requests
                    WHERE project = %s AND head_repo = '' AND head_branch = %s
                      AND base_branch = %s AND state = 'open'""",  # noqa: S608
                (project, head, base),
            )
            existing = await cur.fetchone()
    assert existing is not None, "the insert conflicted with an open pull request"
    return existing, False


async def get_pr(conn: Conn, project: str, number: int) -> PullRequestRow | None:
    async with conn.cursor(row_factory=class_row(PullRequestRow)) as cur:
        await cur.execute(
            f"SELECT {_PR} FROM branchline.pull_requests WHERE project = %s AND number = %s",  # noqa: S608
            (project, number),
        )
        return await cur.fetchone()


async def list_prs(conn: Conn, project: str, state: str | None = None) -> list[PullRequestRow]:
    async with conn.cursor(row_factory=class_row(PullRequestRow)) as cur:
        await cur.execute(
            f"SELECT {_PR} FROM branchline.pull_requests "  # noqa: S608
            "WHERE project = %s AND (%s::text IS NULL OR state = %s) ORDER BY number DESC",
            (project, state, state),
        )
        return await cur.fetchall()


async def update_pr(
    conn: Conn, project: str, number: int, *, sha: str | None = None, state: str | None = None
) -> None:
    await conn.execute(
        """UPDATE branchline.pull_requests
           SET head_sha = coalesce(%s, head_sha), state = coalesce(%s, state),
               closed_at = CASE WHEN %s::text IN ('closed', 'merged') THEN now() ELSE closed_at END,
               updated_at = now()
           WHERE project = %s AND number = %s""",
        (sha, state, state, project, number),
    )


async def upsert_comment(conn: Conn, project: str, pr: int, key: str, body: str) -> CommentRow:
    async with conn.cursor(row_factory=class_row(CommentRow)) as cur:
        await cur.execute(
            """INSERT INTO branchline.comments (project, pr, key, body) VALUES (%s, %s, %s, %s)
               ON CONFLICT (project, pr, key) DO UPDATE
               SET body = excluded.body, updated_at = now()
               RETURNING id, pr, key, body, created_at, updated_at""",
            (project, pr, key, body),
        )
        row = await cur.fetchone()
    assert row is not None
    return row


async def comments(conn: Conn, project: str, pr: int) -> list[CommentRow]:
    async with conn.cursor(row_factory=class_row(CommentRow)) as cur:
        await cur.execute(
            """SELECT id, pr, key, body, created_at, updated_at FROM branchline.comments
               WHERE project = %s AND pr = %s ORDER BY created_at""",
            (project, pr),
        )
        return await cur.fetchall()


async def create_issue(conn: Conn, project: str, title: str, body: str, labels: list[str]) -> int:
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
            (f"branchline:issue:{project}",),
        )
        cur = await conn.execute(
            """INSERT INTO branchline.issues (project, number, title, body, labels)
               SELECT %s, coalesce(max(number), 0) + 1, %s, %s, %s
               FROM branchline.issues WHERE project = %s RETURNING number""",
            (project, title, body, labels, project),
        )
        row = await cur.fetchone()
    assert row is not None
    number: int = row[0]  # type: ignore[assignment]
    return number


async def set_status(
    conn: Conn,
    project: str,
    sha: str,
    context: str,
    state: str,
    url: str | None,
    description: str | None,
) -> None:
    await conn.execute(
        """INSERT INTO branchline.statuses (project, sha, context, state, url, description)
           VALUES (%s, %s, %s, %s, %s, %s)
           ON CONFLICT (project, sha, context) DO UPDATE
           SET state = excluded.state, url = excluded.url, description = excluded.description,
               updated_at = now()""",
        (project, sha, context, state, url, description),
    )


async def statuses(conn: Conn, project: str, sha: str) -> list[StatusRow]:
    async with conn.cursor(row_factory=class_row(StatusRow)) as cur:
        await cur.execute(
            """SELECT sha, context, state, url, description, updated_at
               FROM branchline.statuses WHERE project = %s AND sha = %s ORDER BY context""",
            (project, sha),
        )
        return await cur.fetchall()


async def events(conn: Conn, project: str, limit: int = 100) -> list[EventRow]:
    """The latest events of a project, oldest first."""
    async with conn.cursor(row_factory=class_row(EventRow)) as cur:
        await cur.execute(
            """SELECT * FROM (
                   SELECT id, delivery_id, kind, action, source, payload, received_at,
                          processed_at
                   FROM branchline.events WHERE project = %s ORDER BY id DESC LIMIT %s
               ) latest ORDER BY id""",
            (project, limit),
        )
        return await cur.fetchall()


async def origin_of_run(conn: Conn, run_id: int) -> EventRow | None:
    """The event that started run `run_id` (or the run it re-runs)."""
    async with conn.cursor(row_factory=class_row(EventRow)) as cur:
        await cur.execute(
            """SELECT e.id, e.delivery_id, e.kind, e.action, e.source, e.payload,
                      e.received_at, e.processed_at
               FROM branchline.runs r
               LEFT JOIN branchline.runs first ON first.id = r.rerun_of
               JOIN branchline.events e ON e.id = coalesce(r.event_id, first.event_id)
               WHERE r.id = %s""",
            (run_id,),
        )
        return await cur.fetchone()


async def claim_pending(conn: Conn, project: str) -> EventRow | None:
    """The oldest unprocessed event, locked for this transaction; None when there is
    none (or every pending one is being handled by another dispatcher). The lock lets
    runs referencing the event be inserted from other connections meanwhile."""
    async with conn.cursor(row_factory=class_row(EventRow)) as cur:
        await cur.execute(
            """SELECT id, delivery_id, kind, action, source, payload, received_at, processed_at
               FROM branchline.events WHERE project = %s AND processed_at IS NULL
               ORDER BY id LIMIT 1 FOR NO KEY UPDATE SKIP LOCKED""",
            (project,),
        )
        return await cur.fetchone()


async def mark_processed(conn: Conn, event_id: int, error: str | None = None) -> None:
    await conn.execute(
        "UPDATE branchline.events SET processed_at = now(), error = %s WHERE id = %s",
        (error, event_id),
    )


async def by_delivery(conn: Conn, delivery_id: str) -> EventRow | None:
    async with conn.cursor(row_factory=class_row(EventRow)) as cur:
        await cur.execute(
            """SELECT id, delivery_id, kind, action, source, payload, received_at, processed_at
               FROM branchline.events WHERE delivery_id = %s""",
            (delivery_id,),
        )
        return await cur.fetchone()


async def pending_count(conn: Conn, project: str) -> int:
    cur = await conn.execute(
        "SELECT count(*) FROM branchline.events WHERE project = %s AND processed_at IS NULL",
        (project,),
    )
    row = await cur.fetchone()
    return int(row[0]) if row else 0  # type: ignore[call-overload]


@dataclass(frozen=True)
class IssueRow:
    number: int
    title: str
    body: str
    labels: list[str]
    state: str
    created_at: datetime


async def close_issue(conn: Conn, project: str, number: int, comment: str) -> bool:
    """Close issue `number` with `comment` added to its body; False when it was not
    open (closing twice adds nothing)."""
    cur = await conn.execute(
        """UPDATE branchline.issues SET state = 'closed', body = body || %s
           WHERE project = %s AND number = %s AND state <> 'closed'""",
        ("\n\n---\n" + comment, project, number),
    )
    return cur.rowcount > 0


async def issues(conn: Conn, project: str, number: int | None = None) -> list[IssueRow]:
    async with conn.cursor(row_factory=class_row(IssueRow)) as cur:
        await cur.execute(
            """SELECT number, title, body, labels, state, created_at FROM branchline.issues
               WHERE project = %s AND (%s::integer IS NULL OR number = %s)
               ORDER BY number DESC""",
            (project, number, number),
        )
        return await cur.fetchall()


async def mirror_pr(
    conn: Conn, project: str, *, number: int, title: str, head: str, base: str, sha: str,
    state: str, fork: bool = False, head_repo: str = "",
) -> None:  # fmt: skip
    """Keep a GitHub pull request's row as its latest delivery describes it (the
    pipelines read PRs from the store, whichever code host they live on).

    GitHub has one open pull request per head and base, so two rows open for them
    means a close was never delivered (or arrives late): the higher number is the
    newer pull request and stays open, the other is closed. The unique index holds
    whatever order deliveries come in."""
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"branchline:pr:{project}",)
        )
        if state == "open":
            cur = await conn.execute(
                """SELECT 1 FROM branchline.pull_requests
                   WHERE project = %s AND head_repo = %s AND head_branch = %s
                     AND base_branch = %s AND state = 'open' AND number > %s""",
                (project, head_repo, head, base, number),
            )
            if await cur.fetchone() is not None:
                state = "closed"  # a newer one is open: this one's close was lost
            else:
                await conn.execute(
                    """UPDATE branchline.pull_requests
                       SET state = 'closed', closed_at = now(), updated_at = now()
                       WHERE project = %s AND head_repo = %s AND head_branch = %s
                         AND base_branch = %s AND state = 'open' AND number < %s""",
                    (project, head_repo, head, base, number),
                )
        await conn.execute(
            """INSERT INTO branchline.pull_requests
                   (project, number, title, head_branch, base_branch, head_sha, state,
                    closed_at, fork, head_repo)
               VALUES (%s, %s, %s, %s, %s, %s, %s,
                       CASE WHEN %s = 'open' THEN NULL ELSE now() END, %s, %s)
               ON CONFLICT (project, number) DO UPDATE
               SET title = EXCLUDED.title, head_branch = EXCLUDED.head_branch,
                   base_branch = EXCLUDED.base_branch, head_sha = EXCLUDED.head_sha,
                   state = EXCLUDED.state, closed_at = EXCLUDED.closed_at,
                   fork = EXCLUDED.fork, head_repo = EXCLUDED.head_repo, updated_at = now()""",
            (project, number, title, head, base, sha, state, state, fork, head_repo),
        )
