"""Deploying services by hand: deploy a commit, restart what runs, roll back.

Every path gives the service the same variables and secrets, from
`Kit.deployment_env`; the pipelines use the same function.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from branchline.environment import Environment
from branchline.errors import UsageError
from branchline.kit import Kit
from branchline.providers.compute import Deployment

Progress = Callable[[str], None]


def _quiet(_message: str) -> None:
    return None


async def deploy(
    kit: Kit, service: str, environment: Environment, commit: str = "HEAD",
    *, progress: Progress = _quiet,
) -> Deployment:  # fmt: skip
    """Build `service` at `commit` (once) and deploy it blue-green, health-checked."""
    _known_service(kit, service)
    progress(f"building {service} at {commit}")
    began = time.monotonic()
    release = await kit.compute.build(service, commit)
    progress(f"built {release.name}; starting it and checking its health")
    deployment = await kit.compute.deploy(
        service, environment, release, await kit.deployment_env(environment),
        position=_position(kit, service),
    )  # fmt: skip
    progress(f"live in {time.monotonic() - began:.1f} s")
    return deployment


async def restart(
    kit: Kit, service: str, environment: Environment, *, progress: Progress = _quiet
) -> Deployment:
    """Start the live release again with the environment's current variables and
    secrets (after `secret set` or `secret rotate`), blue-green."""
    live = await _live(kit, service, environment)
    progress(f"restarting {service} ({live.release.name}) in {environment.name}")
    return await kit.compute.deploy(
        service, environment, live.release, await kit.deployment_env(environment),
        position=_position(kit, service),
    )  # fmt: skip


async def restart_all(
    kit: Kit, environment: Environment, *, progress: Progress = _quiet
) -> list[Deployment]:
    """Every live service of `environment`, in deploy order."""
    names = await _live_names(kit, environment)
    order = [s.name for s in kit.config.services_in_deploy_order() if s.name in names]
    return [await restart(kit, name, environment, progress=progress) for name in order]


async def rollback(
    kit: Kit, service: str, environment: Environment, to: int | None = None
) -> Deployment:
    """Back to the previous release (or release id `to`), blue-green."""
    _known_service(kit, service)
    return await kit.compute.rollback(service, environment, to)


async def rollback_all(kit: Kit, environment: Environment) -> list[Deployment]:
    """Every live service of `environment` to its previous release, newest first
    (reverse deploy order)."""
    names = await _live_names(kit, environment)
    order = [s.name for s in reversed(kit.config.services_in_deploy_order()) if s.name in names]
    if not order:
        raise UsageError(
            f"nothing is deployed in {environment.name}",
            hint="See `branchline deployments list`.",
        )
    return [await kit.compute.rollback(name, environment) for name in order]


def _known_service(kit: Kit, service: str) -> None:
    if service not in kit.config.services:
        raise UsageError(
            f"there is no service {service!r}",
            hint=f"Services in branchline.toml: {', '.join(kit.config.services)}.",
        )


def _position(kit: Kit, service: str) -> int:
    order = [s.name for s in kit.config.services_in_deploy_order()]
    return order.index(service) if service in order else 0


async def _live(kit: Kit, service: str, environment: Environment) -> Deployment:
    _known_service(kit, service)
    for deployment in await kit.compute.list_deployments(environment):
        if deployment.service == service and deployment.status == "live":
            return deployment
    raise UsageError(
        f"{service} has no live deployment in {environment.name}",
        hint=f"Deploy it first: `branchline deploy {service} --env {environment.name}`.",
    )


async def _live_names(kit: Kit, environment: Environment) -> set[str]:
    return {
        d.service for d in await kit.compute.list_deployments(environment) if d.status == "live"
    }
