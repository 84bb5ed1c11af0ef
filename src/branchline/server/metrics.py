"""`/metrics` in Prometheus' text format, read from the store on each scrape."""

from __future__ import annotations

from typing import Any

from branchline.providers.database import StorageHealth
from branchline.store import Store
from branchline.store.queries import Conn


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


async def render(store: Store, project: str, database: object = None) -> str:
    async with store.connect() as conn:  # one connection for the whole scrape
        text = await _render(conn, project)
    if isinstance(database, StorageHealth):
        text += storage_lines(await database.storage())
    return text


def storage_lines(storage: dict[str, Any]) -> str:
    """The disk under the branches and production's WAL archive (see
    `StorageHealth`): what an alert on a filling disk or a stuck archive needs."""
    lines: list[str] = []

    def gauge(name: str, help_text: str, value: float) -> None:
        lines.extend((f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value}"))

    disk = storage["disk"]
    gauge("branchline_disk_total_bytes", "Size of the filesystem holding the branches.",
          disk["total_bytes"])  # fmt: skip
    gauge("branchline_disk_free_bytes", "Free bytes on it.", disk["free_bytes"])
    gauge("branchline_disk_reserve_bytes",
          "Free bytes kept for production's WAL ([database.local] min_free).",
          disk["reserve_bytes"])  # fmt: skip
    history = storage.get("history")
    if history is not None:
        gauge("branchline_wal_archive_size_bytes",
              "Production's WAL archive and base backups on the disk.",
              history["bytes"])  # fmt: skip
        gauge("branchline_wal_archive_limit_bytes",
              "What they may take ([database.local] max_archive_size).",
              history["limit_bytes"])  # fmt: skip
    archive = storage.get("archive")
    if archive is not None:
        gauge("branchline_wal_archive_failing",
              "1 while production's WAL archiving fails (last attempt failed).",
              1.0 if archive["failing"] else 0.0)  # fmt: skip
        gauge("branchline_wal_archive_archived_total", "WAL segments archived.",
              archive["archived_count"])  # fmt: skip
        gauge("branchline_wal_archive_failed_total", "Failed archive attempts.",
              archive["failed_count"])  # fmt: skip
        gauge("branchline_wal_archive_pending_segments",
              "Segments in production's pg_wal waiting to be archived.",
              archive["pending_segments"])  # fmt: skip
        gauge("branchline_wal_bytes", "Size of production's pg_wal.", archive["wal_bytes"])
    return "\n".join(lines) + "\n"


async def _render(conn: Conn, project: str) -> str:
    lines: list[str] = []

    async def family(
        name: str, kind: str, help_text: str, query: str, labels: tuple[str, ...]
    ) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        cur = await conn.execute(query, (project,))
        for row in await cur.fetchall():
            *keys, raw = row
            value = float(str(raw if raw is not None else 0))
            tags = ",".join(f'{k}="{_label(str(v))}"' for k, v in zip(labels, keys, strict=True))
            lines.append(f"{name}{{{tags}}} {value}" if tags else f"{name} {value}")

    await family(
        "branchline_runs",
        "gauge",
        "Runs by workflow and status.",
        "SELECT workflow, status, count(*) FROM branchline.runs WHERE project = %s GROUP BY 1, 2",
        ("workflow", "status"),
    )
    await family(
        "branchline_job_seconds_sum",
        "gauge",
        "Total seconds of finished jobs by name.",
        "SELECT j.name, sum(extract(epoch FROM j.finished_at - j.started_at)) "
        "FROM branchline.jobs j JOIN branchline.runs r ON r.id = j.run_id "
        "WHERE r.project = %s AND j.finished_at IS NOT NULL AND j.started_at IS NOT NULL "
        "GROUP BY 1",
        ("job",),
    )
    await family(
        "branchline_deployments",
        "gauge",
        "Deployments by environment and status.",
        "SELECT environment, status, count(*) FROM branchline.deployments "
        "WHERE project = %s GROUP BY 1, 2",
        ("environment", "status"),
    )
    await family(
        "branchline_rollouts",
        "gauge",
        "Production rollouts by outcome (rolled_back counts automatic rollbacks).",
        "SELECT status, count(*) FROM branchline.rollouts WHERE project = %s GROUP BY 1",
        ("outcome",),
    )
    await family(
        "branchline_branches",
        "gauge",
        "Database branches.",
        "SELECT count(*) FROM branchline.branches WHERE project = %s",
        (),
    )
    await family(
        "branchline_branch_bytes",
        "gauge",
        "Total size of the database branches.",
        "SELECT coalesce(sum(size_bytes), 0) FROM branchline.branches WHERE project = %s",
        (),
    )
    await family(
        "branchline_webhook_deliveries",
        "gauge",
        "Webhook deliveries recorded, by event and outcome.",
        "SELECT kind, CASE WHEN error IS NULL THEN 'ok' ELSE 'failed' END, count(*) "
        "FROM branchline.events WHERE project = %s AND source = 'webhook' GROUP BY 1, 2",
        ("event", "outcome"),
    )
    return "\n".join(lines) + "\n"
