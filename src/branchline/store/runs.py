"""Runs, jobs, steps and their logs in the control-plane store."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from psycopg import sql
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from branchline.store.queries import Conn

ACTIVE = ("queued", "waiting", "running")


@dataclass(frozen=True)
class RunRow:
    id: int
    project: str
    workflow: str
    triggered_by: str
    ref: str | None
    sha: str | None
    base_sha: str | None
    pr: int | None
    concurrency_group: str | None
    cancel_in_progress: bool
    status: str
    definition: dict[str, Any]
    repo: str | None
    cancel_requested: bool
    secret_scope: str | None
    rerun_of: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cancelled_by: str | None = None  # who or what asked it to stop


@dataclass(frozen=True)
class JobRow:
    id: int
    run_id: int
    name: str
    needs: list[str]
    run_if: str
    status: str
    attempt: int
    error: str | None
    worker: str | None
    started_at: datetime | None
    finished_at: datetime | None
    error_code: str | None = None  # interrupted, cancelled, or an action's error code
    checkout: str | None = None  # its checkout's directory on its worker's host


@dataclass(frozen=True)
class StepRow:
    id: int
    job_id: int
    position: int
    name: str
    status: str
    exit_code: int | None
    pgid: int | None
    host: str | None
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True)
class LogRow:
    id: int
    run_id: int
    job_id: int | None
    step_id: int | None
    stream: str
    content: str
    at: datetime


_RUN = """id, project, workflow, triggered_by, ref, sha, base_sha, pr, concurrency_group,
          cancel_in_progress, status, definition, repo, cancel_requested, secret_scope,
          rerun_of, created_at, started_at, finished_at, cancelled_by"""
_JOB = (
    "id, run_id, name, needs, run_if, status, attempt, error, worker, started_at, finished_at, "
    "error_code, checkout"
)
_STEP = "id, job_id, position, name, status, exit_code, pgid, host, started_at, finished_at"


async def insert_run(
    conn: Conn,
    *,
    project: str,
    workflow: str,
    definition: dict[str, Any],
    jobs: Sequence[tuple[str, list[str], str, list[str]]],  # name, needs, run_if, step names
    triggered_by: str,
    ref: str | None,
    sha: str | None,
    base_sha: str | None,
    pr: int | None,
    repo: str | None,
    concurrency_group: str | None,
    cancel_in_progress: bool,
    secret_scope: str | None,
    rerun_of: int | None = None,
    event_id: int | None = None,
) -> int:
    cur = await conn.execute(
        """INSERT INTO branchline.runs (project, workflow, event_id, triggered_by, ref, sha,
               base_sha, pr, concurrency_group, cancel_in_progress, definition, repo,
               secret_scope, rerun_of)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
        (
            project, workflow, event_id, triggered_by, ref, sha, base_sha, pr,
            concurrency_group, cancel_in_progress, Jsonb(definition), repo, secret_scope,
            rerun_of,
        ),
    )  # fmt: skip
    row = await cur.fetchone()
    assert row is not None
    run_id: int = row[0]  # type: ignore[assignment]
    for name, needs, run_if, steps in jobs:
        cur = await conn.execute(
            """INSERT INTO branchline.jobs (run_id, name, needs, run_if)
               VALUES (%s, %s, %s, %s) RETURNING id""",
            (run_id, name, needs, run_if),
        )
        job = await cur.fetchone()
        assert job is not None
        async with conn.cursor() as steps_cur:
            await steps_cur.executemany(
                "INSERT INTO branchline.steps (job_id, position, name) VALUES (%s, %s, %s)",
                [(job[0], i, step) for i, step in enumerate(steps)],
            )
    return run_id


async def get_run(conn: Conn, run_id: int, *, lock: bool = False) -> RunRow | None:
    query = f"SELECT {_RUN} FROM branchline.runs WHERE id = %s"  # noqa: S608 - fixed columns
    if lock:
        query += " FOR UPDATE"
    async with conn.cursor(row_factory=class_row(RunRow)) as cur:
        await cur.execute(query, (run_id,))
        return await cur.fetchone()


async def list_runs(conn: Conn, project: str, limit: int = 50) -> list[RunRow]:
    async with conn.cursor(row_factory=class_row(RunRow)) as cur:
        await cur.execute(
            f"SELECT {_RUN} FROM branchline.runs WHERE project = %s "  # noqa: S608
            "ORDER BY id DESC LIMIT %s",
            (project, limit),
        )
        return await cur.fetchall()


async def of_commit(conn: Conn, project: str, workflow: str, sha: str) -> list[RunRow]:
    """`workflow`'s runs of commit `sha`, newest first."""
    async with conn.cursor(row_factory=class_row(RunRow)) as cur:
        await cur.execute(
            f"SELECT {_RUN} FROM branchline.runs WHERE project = %s AND workflow = %s "  # noqa: S608
            "AND sha = %s ORDER BY id DESC",
            (project, workflow, sha),
        )
        return await cur.fetchall()


async def active_in_group(conn: Conn, project: str, group: str, before: int) -> list[RunRow]:
    async with conn.cursor(row_factory=class_row(RunRow)) as cur:
        await cur.execute(
            f"SELECT {_RUN} FROM branchline.runs WHERE project = %s "  # noqa: S608
            "AND concurrency_group = %s AND id < %s AND status = ANY(%s) ORDER BY id",
            (project, group, before, list(ACTIVE)),
        )
        return await cur.fetchall()


async def next_waiting(conn: Conn, project: str, group: str) -> int | None:
    cur = await conn.execute(
        """SELECT id FROM branchline.runs WHERE project = %s AND concurrency_group = %s
           AND status = 'waiting' ORDER BY id LIMIT 1""",
        (project, group),
    )
    row = await cur.fetchone()
    return int(row[0]) if row else None  # type: ignore[call-overload]


async def set_run(conn: Conn, run_id: int, **changes: Any) -> None:
    await _update(conn, "runs", run_id, changes)


async def jobs_of(conn: Conn, run_id: int) -> list[JobRow]:
    async with conn.cursor(row_factory=class_row(JobRow)) as cur:
        await cur.execute(
            f"SELECT {_JOB} FROM branchline.jobs WHERE run_id = %s ORDER BY id",  # noqa: S608
            (run_id,),
        )
        return await cur.fetchall()


async def get_job(conn: Conn, job_id: int) -> JobRow | None:
    async with conn.cursor(row_factory=class_row(JobRow)) as cur:
        await cur.execute(
            f"SELECT {_JOB} FROM branchline.jobs WHERE id = %s",  # noqa: S608
            (job_id,),
        )
        return await cur.fetchone()


async def claim_job(conn: Conn, job_id: int, *, status: str, **changes: Any) -> bool:
    """Move a queued job to `status` unless someone else already did: a job runs once
    even when it is delivered twice."""
    started = datetime.now(UTC)
    cur = await conn.execute(
        """UPDATE branchline.jobs
           SET status = %s, started_at = %s, attempt = attempt + 1, error = NULL,
               error_code = NULL,
               worker = coalesce(%s, worker)
           WHERE id = %s AND status IN ('queued', 'pending') RETURNING id""",
        (status, started, changes.get("worker"), job_id),
    )
    return await cur.fetchone() is not None


async def set_job(conn: Conn, job_id: int, **changes: Any) -> None:
    await _update(conn, "jobs", job_id, changes)


async def steps_of(conn: Conn, job_id: int) -> list[StepRow]:
    async with conn.cursor(row_factory=class_row(StepRow)) as cur:
        await cur.execute(
            f"SELECT {_STEP} FROM branchline.steps WHERE job_id = %s ORDER BY position",  # noqa: S608
            (job_id,),
        )
        return await cur.fetchall()


async def set_step(conn: Conn, step_id: int, **changes: Any) -> None:
    await _update(conn, "steps", step_id, changes)


_COLUMNS = {
    "runs": {"status", "started_at", "finished_at", "cancel_requested", "cancelled_by"},
    "jobs": {
        "status",
        "started_at",
        "finished_at",
        "attempt",
        "error",
        "worker",
        "enqueued_at",
        "error_code",
        "checkout",
    },
    "steps": {"status", "started_at", "finished_at", "exit_code", "pgid", "host"},
}


async def _update(conn: Conn, table: str, row_id: int, changes: dict[str, Any]) -> None:
    unknown = set(changes) - _COLUMNS[table]
    if unknown:
        raise ValueError(f"cannot set {sorted(unknown)} on {table}")
    assignments = sql.SQL(", ").join(
        sql.SQL("{} = {}").format(sql.Identifier(k), sql.Placeholder()) for k in changes
    )
    query = sql.SQL("UPDATE {}.{} SET {} WHERE id = {}").format(
        sql.Identifier("branchline"), sql.Identifier(table), assignments, sql.Placeholder()
    )
    await conn.execute(query, (*changes.values(), row_id))


async def insert_logs(
    conn: Conn, rows: Sequence[tuple[int, int | None, int | None, str, str, datetime]]
) -> None:
    """(run_id, job_id, step_id, stream, content, at) rows, then a notification for
    everyone following the run's logs."""
    if not rows:
        return
    async with conn.cursor() as cur:
        await cur.executemany(
            """INSERT INTO branchline.log_chunks (run_id, job_id, step_id, stream, content, at)
               VALUES (%s, %s, %s, %s, %s, %s)""",
            rows,
        )
    for run_id in {row[0] for row in rows}:
        await conn.execute("SELECT pg_notify('branchline_logs', %s)", (str(run_id),))


async def logs_after(
    conn: Conn, run_id: int, after_id: int, job_id: int | None = None, limit: int = 1000
) -> list[LogRow]:
    """The lines stored after row `after_id`, at most `limit` rows' worth. A row holds
    several lines (joined by newlines); each comes back as its own LogRow with its
    row's id, so `after` = the last id seen resumes after a whole row."""
    async with conn.cursor(row_factory=class_row(LogRow)) as cur:
        await cur.execute(
            """SELECT id, run_id, job_id, step_id, stream, content, at
               FROM branchline.log_chunks
               WHERE run_id = %s AND id > %s AND (%s::bigint IS NULL OR job_id = %s)
               ORDER BY id LIMIT %s""",
            (run_id, after_id, job_id, job_id, limit),
        )
        found = await cur.fetchall()
    return [
        replace(row, content=line) if "\n" in row.content else row
        for row in found
        for line in (row.content.split("\n") if "\n" in row.content else (row.content,))
    ]


async def run_for_event(conn: Conn, event_id: int, workflow: str) -> int | None:
    """The run an event already started for `workflow` (dispatch is exactly once)."""
    cur = await conn.execute(
        "SELECT id FROM branchline.runs WHERE event_id = %s AND workflow = %s LIMIT 1",
        (event_id, workflow),
    )
    row = await cur.fetchone()
    return int(row[0]) if row else None  # type: ignore[call-overload]


async def active_runs(
    conn: Conn, project: str, *, pr: int | None = None, workflows: tuple[str, ...] = ()
) -> list[RunRow]:
    """Runs not finished yet, oldest first; only pull request `pr`'s and only of
    `workflows` when given."""
    async with conn.cursor(row_factory=class_row(RunRow)) as cur:
        await cur.execute(
            f"""SELECT {_RUN} FROM branchline.runs
                WHERE project = %s AND status = ANY(%s)
                  AND (%s::integer IS NULL OR pr = %s)
                  AND (%s::text[] IS NULL OR workflow = ANY(%s))
                ORDER BY id""",  # noqa: S608
            (project, list(ACTIVE), pr, pr, list(workflows) or None, list(workflows) or None),
        )
        return await cur.fetchall()
