"""Retention: finished runs, their logs and their artifacts deleted once old enough.
A run that is not over, and every run of a commit production serves now, are kept."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from branchline.store.queries import Conn

# Runs no retention deletes: not over yet, or of a commit a live production
# deployment serves (its build, migration and rollout records explain production).
_KEPT = """(r.status NOT IN ('success', 'failure', 'cancelled') OR r.finished_at IS NULL
           OR coalesce(r.sha IN (
                  SELECT rel.commit_sha FROM branchline.deployments d
                  JOIN branchline.releases rel ON rel.id = d.release_id
                  WHERE d.project = r.project AND d.environment = 'production'
                    AND d.status = 'live'), false))"""
BATCH = 500  # runs deleted per statement: short transactions, no long locks


@dataclass
class Pruned:
    runs: int = 0
    log_rows: int = 0
    artifacts: int = 0
    run_ids: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {"runs": self.runs, "log_rows": self.log_rows, "artifacts": self.artifacts}


async def prune(
    conn: Conn,
    project: str,
    *,
    runs: timedelta | None,
    logs: timedelta | None,
    artifacts: timedelta | None,
) -> Pruned:
    """Delete what is older than its retention (None: kept forever), then expired
    artifacts. Returns what was deleted."""
    done = Pruned()
    if logs is not None:
        cur = await conn.execute(
            f"""DELETE FROM branchline.log_chunks l USING branchline.runs r
                WHERE l.run_id = r.id AND r.project = %s
                  AND r.finished_at < now() - %s AND NOT {_KEPT}""",  # noqa: S608 - fixed text
            (project, logs),
        )
        done.log_rows += cur.rowcount
    if artifacts is not None:
        cur = await conn.execute(
            f"""DELETE FROM branchline.artifacts a USING branchline.runs r
                WHERE a.run_id = r.id AND r.project = %s
                  AND a.created_at < now() - %s AND NOT {_KEPT}""",  # noqa: S608
            (project, artifacts),
        )
        done.artifacts += cur.rowcount
    if runs is not None:
        while True:
            cur = await conn.execute(
                f"""DELETE FROM branchline.runs WHERE id IN (
                        SELECT r.id FROM branchline.runs r
                        WHERE r.project = %s AND r.finished_at < now() - %s AND NOT {_KEPT}
                        ORDER BY r.id LIMIT %s)
                    RETURNING id""",  # noqa: S608
                (project, runs, BATCH),
            )
            deleted = [int(row[0]) for row in await cur.fetchall()]  # type: ignore[call-overload]
            done.run_ids += deleted
            if len(deleted) < BATCH:
                break
        done.runs = len(done.run_ids)
    cur = await conn.execute(
        """DELETE FROM branchline.artifacts a USING branchline.runs r
           WHERE a.run_id = r.id AND r.project = %s AND a.expires_at <= now()""",
        (project,),
    )
    done.artifacts += cur.rowcount
    return done


async def live_checkouts(conn: Conn) -> set[str]:
    """Checkouts of jobs still running (any project): never swept."""
    cur = await conn.execute(
        "SELECT checkout FROM branchline.jobs WHERE status = 'running' AND checkout IS NOT NULL"
    )
    return {str(row[0]) for row in await cur.fetchall()}
