"""Restore production's database to a past moment (the reference's decision tree
for a breaking migration or corrupted data): a new branch as of that moment,
production's services pointed at it, each redeployed (blue-green, health-checked)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from branchline.environment import Environment
from branchline.errors import UsageError
from branchline.kit import Kit

ENVIRONMENT = Environment.production()


@dataclass
class Restored:
    branch: str
    at: datetime
    previous_branch: str
    redeployed: dict[str, str]  # service -> release

    def as_dict(self) -> dict[str, object]:
        return {
            "branch": self.branch, "restored_to": self.at.isoformat(),
            "previous_branch": self.previous_branch, "redeployed": self.redeployed,
        }  # fmt: skip


def branch_name(at: datetime) -> str:
    return "emergency-restore-" + at.strftime("%Y%m%d%H%M%S")


async def restore_production(
    kit: Kit, at: datetime, *, progress: Callable[[str], None] = lambda _m: None
) -> Restored:
    live = [d for d in await kit.compute.list_deployments(ENVIRONMENT) if d.status == "live"]
    previous = await kit.database_branch(ENVIRONMENT) or kit.config.database.parent
    name = branch_name(at)
    progress(f"restoring {kit.config.database.parent} as of {at.isoformat()} into {name}")
    branch = await kit.database.restore(name, at)
    # From here on production's services (and later rollouts) use the restored branch.
    await kit.rollouts.set_branch(ENVIRONMENT.name, branch.name)
    env = await kit.deployment_env(ENVIRONMENT)
    redeployed = {}
    order = {s.name: i for i, s in enumerate(kit.config.services_in_deploy_order())}
    for position, deployment in enumerate(sorted(live, key=lambda d: order.get(d.service, 99))):
        progress(f"redeploying {deployment.service} ({deployment.release.name}) on {name}")
        again = await kit.compute.deploy(
            deployment.service, ENVIRONMENT, deployment.release, env, position=position
        )
        redeployed[again.service] = again.release.name
    if not live:
        raise UsageError(
            f"restored {name}, but nothing is deployed in production to point at it",
            hint="Deploy with a merge to the production branch; it will use the restored branch.",
        )
    return Restored(branch.name, at, previous, redeployed)
