"""The deployment history: production rollouts (one per production run) and
deploys, restarts and rollbacks made by hand in any environment (no run; `kind`
in their detail); and environments' database branches."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from branchline.store.queries import Conn

if TYPE_CHECKING:
    from branchline.store.state import Store


@dataclass(frozen=True)
class RolloutRow:
    id: int
    project: str
    environment: str
    run_id: int | None
    sha: str | None
    triggered_by: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    detail: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "environment": self.environment, "run_id": self.run_id,
            "sha": self.sha, "triggered_by": self.triggered_by, "status": self.status,
            "started_at": self.started_at, "finished_at": self.finished_at,
            "seconds": (self.finished_at - self.started_at).total_seconds()
            if self.finished_at else None,
            "detail": self.detail, "kind": self.kind,
        }  # fmt: skip

    @property
    def kind(self) -> str:
        """rollout (a production run), or by hand: deploy, restart, rollback."""
        return str(self.detail.get("kind", "rollout"))


_COLUMNS = (
    "id, project, environment, run_id, sha, triggered_by, status, started_at, finished_at, detail"
)


async def start(conn: Conn, project: str, *, run_id: int, sha: str, triggered_by: str) -> int:
    """The rollout of run `run_id` (made once: a retried step finds the same row)."""
    cur = await conn.execute(
        """INSERT INTO branchline.rollouts (project, run_id, sha, triggered_by)
           VALUES (%s, %s, %s, %s)
           ON CONFLICT (run_id) DO UPDATE SET run_id = EXCLUDED.run_id RETURNING id""",
        (project, run_id, sha, triggered_by),
    )
    row = await cur.fetchone()
    assert row is not None
    rollout_id: int = row[0]  # type: ignore[assignment]
    return rollout_id


async def of_run(conn: Conn, run_id: int) -> RolloutRow | None:
    async with conn.cursor(row_factory=class_row(RolloutRow)) as cur:
        await cur.execute(
            f"SELECT {_COLUMNS} FROM branchline.rollouts WHERE run_id = %s",  # noqa: S608
            (run_id,),
        )
        return await cur.fetchone()


async def note(conn: Conn, run_id: int, **detail: Any) -> None:
    """Merge `detail` into the rollout's record."""
    await conn.execute(
        "UPDATE branchline.rollouts SET detail = detail || %s WHERE run_id = %s",
        (Jsonb(detail), run_id),
    )


async def finish(conn: Conn, run_id: int, status: str, **detail: Any) -> None:
    await conn.execute(
        """UPDATE branchline.rollouts SET status = %s, finished_at = now(),
               detail = detail || %s
           WHERE run_id = %s AND finished_at IS NULL""",
        (status, Jsonb(detail), run_id),
    )


async def begin_manual(
    conn: Conn, project: str, *, environment: str, triggered_by: str, sha: str | None,
    detail: dict[str, Any],
) -> int:  # fmt: skip
    """A deploy, restart or rollback by hand: its own row, no run."""
    cur = await conn.execute(
        """INSERT INTO branchline.rollouts (project, environment, sha, triggered_by, detail)
           VALUES (%s, %s, %s, %s, %s) RETURNING id""",
        (project, environment, sha, triggered_by, Jsonb(detail)),
    )
    row = await cur.fetchone()
    assert row is not None
    rollout_id: int = row[0]  # type: ignore[assignment]
    return rollout_id


async def finish_manual(
    conn: Conn, rollout_id: int, status: str, *, sha: str | None = None, **detail: Any
) -> None:
    await conn.execute(
        """UPDATE branchline.rollouts SET status = %s, finished_at = now(),
               sha = coalesce(%s, sha), detail = detail || %s
           WHERE id = %s AND finished_at IS NULL""",
        (status, sha, Jsonb(detail), rollout_id),
    )


async def history(
    conn: Conn, project: str, environment: str | None = None, limit: int = 50
) -> list[RolloutRow]:
    async with conn.cursor(row_factory=class_row(RolloutRow)) as cur:
        await cur.execute(
            f"""SELECT {_COLUMNS} FROM branchline.rollouts
                WHERE project = %s AND (%s::text IS NULL OR environment = %s)
                ORDER BY id DESC LIMIT %s""",  # noqa: S608
            (project, environment, environment, limit),
        )
        return await cur.fetchall()


async def branch_of(conn: Conn, project: str, environment: str) -> str | None:
    cur = await conn.execute(
        """SELECT branch FROM branchline.environment_branches
           WHERE project = %s AND environment = %s""",
        (project, environment),
    )
    row = await cur.fetchone()
    return str(row[0]) if row else None


async def set_branch(conn: Conn, project: str, environment: str, branch: str) -> None:
    await conn.execute(
        """INSERT INTO branchline.environment_branches (project, environment, branch)
           VALUES (%s, %s, %s)
           ON CONFLICT (project, environment) DO UPDATE
           SET branch = EXCLUDED.branch, updated_at = now()""",
        (project, environment, branch),
    )


class RolloutLedger(Protocol):
    """What pipelines read and write about rollouts and environments' branches."""

    async def start(self, run_id: int, *, sha: str, triggered_by: str) -> int: ...

    async def get(self, run_id: int) -> RolloutRow | None: ...

    async def note(self, run_id: int, **detail: Any) -> None: ...

    async def finish(self, run_id: int, status: str, **detail: Any) -> None: ...

    async def history(self, environment: str | None = None) -> list[RolloutRow]: ...

    async def begin_manual(
        self, environment: str, *, triggered_by: str, sha: str | None, **detail: Any
    ) -> int: ...

    async def finish_manual(
        self, rollout_id: int, status: str, *, sha: str | None = None, **detail: Any
    ) -> None: ...

    async def branch_of(self, environment: str) -> str | None: ...

    async def set_branch(self, environment: str, branch: str) -> None: ...


class Rollouts:
    """One project's rollouts and environment branches in the store."""

    def __init__(self, store: Store, project: str) -> None:
        self.store = store
        self.project = project

    async def start(self, run_id: int, *, sha: str, triggered_by: str) -> int:
        async with self.store.connect() as conn:
            return await start(conn, self.project, run_id=run_id, sha=sha,
                               triggered_by=triggered_by)  # fmt: skip

    async def get(self, run_id: int) -> RolloutRow | None:
        async with self.store.connect() as conn:
            found = await of_run(conn, run_id)
        return found if found is not None and found.project == self.project else None

    async def note(self, run_id: int, **detail: Any) -> None:
        async with self.store.connect() as conn:
            await note(conn, run_id, **detail)

    async def finish(self, run_id: int, status: str, **detail: Any) -> None:
        async with self.store.connect() as conn:
            await finish(conn, run_id, status, **detail)

    async def history(self, environment: str | None = None) -> list[RolloutRow]:
        async with self.store.connect() as conn:
            return await history(conn, self.project, environment)

    async def begin_manual(
        self, environment: str, *, triggered_by: str, sha: str | None, **detail: Any
    ) -> int:
        async with self.store.connect() as conn:
            return await begin_manual(
                conn, self.project, environment=environment, triggered_by=triggered_by,
                sha=sha, detail=detail,
            )  # fmt: skip

    async def finish_manual(
        self, rollout_id: int, status: str, *, sha: str | None = None, **detail: Any
    ) -> None:
        async with self.store.connect() as conn:
            await finish_manual(conn, rollout_id, status, sha=sha, **detail)

    async def branch_of(self, environment: str) -> str | None:
        async with self.store.connect() as conn:
            return await branch_of(conn, self.project, environment)

    async def set_branch(self, environment: str, branch: str) -> None:
        async with self.store.connect() as conn:
            await set_branch(conn, self.project, environment, branch)
