"""What every compute provider's deploy records, in one place: the intent log around
it (`creating`, then `ready`, or `failed` when nothing served before), the deployment's
row (`live` with its health, or `failed`), and the deployments it replaces (retired
with the status the provider gives them). The provider does the work inside:

    async with deploying(conn, project, service, environment, release_id, detail) as made:
        ...start it, check it, switch to it...
        made.healthy(result)            # required: a deploy without a check is not live

An exception inside marks the deployment failed, and the intent log says whether
something still serves (`ready`) or not (`failed`)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from branchline.health import HealthResult
from branchline.store import compute as rows
from branchline.store import resources
from branchline.store.queries import Conn

LIVE = ("live",)
# Kept in a deployment's detail, never shown: which variables and secrets it was given.
NOT_SHOWN = ("vars", "var_names", "secret_names")


@dataclass
class Deploying:
    """A deploy under way: its deployment's id, the live ones it replaces."""

    deployment_id: int
    previous: list[rows.DeploymentRow]
    retire_as: str  # the status the replaced deployments get
    health: dict[str, Any] | None = field(default=None)

    def healthy(self, result: HealthResult) -> None:
        self.health = result.as_dict()


@contextlib.asynccontextmanager
async def deploying(
    conn: Conn, project: str, service: str, environment: str, release_id: int,
    detail: dict[str, Any], *, retire_as: str = "stopped",
) -> AsyncIterator[Deploying]:  # fmt: skip
    key = f"{service}:{environment}"
    previous = await rows.deployments(
        conn, project, environment=environment, service=service, statuses=LIVE
    )
    await resources.record(conn, project, "deployment", key, "creating", environment=environment)
    deployment_id = await rows.insert_deployment(
        conn, project, service, environment, release_id, detail
    )
    made = Deploying(deployment_id, previous, retire_as)
    try:
        yield made
        if made.health is None:
            raise RuntimeError("a deploy ended without a health check")  # a provider's bug
    except BaseException:
        await rows.update_deployment(conn, deployment_id, status="failed")
        await resources.record(conn, project, "deployment", key, "ready" if previous else "failed")
        raise
    await rows.update_deployment(
        conn, deployment_id, status="live",
        detail={"health": made.health, "live_at": datetime.now(UTC).isoformat()},
    )  # fmt: skip
    for old in previous:
        await rows.update_deployment(conn, old.id, status=made.retire_as)
    await resources.record(conn, project, "deployment", key, "ready")


def shown_detail(detail: dict[str, Any]) -> dict[str, Any]:
    """A deployment's detail as commands and the API show it."""
    return {k: v for k, v in detail.items() if k not in NOT_SHOWN}
