"""Deploying services by hand: deploy a commit, restart what runs, roll back.

Every path gives the service the same variables and secrets, from
`Kit.deployment_env`; the pipelines use the same function. Each is written to the
deployment history (`deployments history`) beside production's rollouts: what,
by whom, the release, the outcome.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable

from branchline import processes
from branchline.environment import Environment
from branchline.errors import UsageError
from branchline.kit import Kit
from branchline.masking import mask_url
from branchline.providers.compute import Deployment, Release

Progress = Callable[[str], None]


def _quiet(_message: str) -> None:
    return None


async def deploy(
    kit: Kit, service: str, environment: Environment, commit: str = "HEAD",
    *, progress: Progress = _quiet, by: str = "hand",
) -> Deployment:  # fmt: skip
    """Build `service` at `commit` (once) and deploy it blue-green, health-checked."""
    _known_service(kit, service)
    progress(f"building {service} at {commit}")
    began = time.monotonic()
    release = await kit.compute.build(service, commit)
    progress(f"built {release.name}; starting it and checking its health")

    async def start() -> Deployment:
        return await kit.compute.deploy(
            service, environment, release, await kit.deployment_env(environment),
            position=_position(kit, service),
        )  # fmt: skip

    deployment = await _recorded(kit, "deploy", service, environment, by, start, release)
    progress(f"live in {time.monotonic() - began:.1f} s")
    return deployment


async def restart(
    kit: Kit, service: str, environment: Environment, *, progress: Progress = _quiet,
    by: str = "hand",
) -> Deployment:  # fmt: skip
    """Start the live release again with the environment's current variables and
    secrets (after `secret set` or `secret rotate`), blue-green."""
    live = await _live(kit, service, environment)
    progress(f"restarting {service} ({live.release.name}) in {environment.name}")

    async def start() -> Deployment:
        return await kit.compute.deploy(
            service, environment, live.release, await kit.deployment_env(environment),
            position=_position(kit, service),
        )  # fmt: skip

    return await _recorded(kit, "restart", service, environment, by, start, live.release)


async def restart_all(
    kit: Kit, environment: Environment, *, progress: Progress = _quiet, by: str = "hand"
) -> list[Deployment]:
    """Every live service of `environment`, in deploy order."""
    names = await _live_names(kit, environment)
    order = [s.name for s in kit.config.services_in_deploy_order() if s.name in names]
    return [await restart(kit, name, environment, progress=progress, by=by) for name in order]


async def rollback(
    kit: Kit, service: str, environment: Environment, to: int | str | None = None,
    *, by: str = "hand",
) -> Deployment:  # fmt: skip
    """Back to the previous release (or `to`: a release's id, or its name as every
    listing shows it, `web@dd490368217d.1`), blue-green."""
    _known_service(kit, service)
    target = await release_id(kit, service, to) if to is not None else None
    return await _recorded(kit, "rollback", service, environment, by,
                           lambda: kit.compute.rollback(service, environment, target))  # fmt: skip


async def release_id(kit: Kit, service: str, release: int | str) -> int:
    """The id of `service`'s release named `release` (or given by its id)."""
    if isinstance(release, int) or release.isdigit():
        return int(release)
    owner = release.partition("@")[0]
    if owner and owner != service and owner in kit.config.services:
        raise UsageError(
            f"{release} is a release of {owner}, not of {service}",
            hint=f"Roll {owner} back instead: `branchline rollback {owner} --to {release}`.",
        )
    for kept in await kit.compute.releases(service):
        if kept.name == release:
            return kept.id
    raise UsageError(
        f"{service} has no release named {release!r}",
        hint=f"See `branchline releases list {service}` (a name or an id).",
    )


async def rollback_all(kit: Kit, environment: Environment, *, by: str = "hand") -> list[Deployment]:
    """Every live service of `environment` to its previous release, newest first
    (reverse deploy order)."""
    names = await _live_names(kit, environment)
    order = [s.name for s in reversed(kit.config.services_in_deploy_order()) if s.name in names]
    if not order:
        raise UsageError(
            f"nothing is deployed in {environment.name}",
            hint="See `branchline deployments list`.",
        )
    done = []
    for name in order:
        back = functools.partial(kit.compute.rollback, name, environment)
        done.append(await _recorded(kit, "rollback", name, environment, by, back))
    return done


async def _recorded(
    kit: Kit, kind: str, service: str, environment: Environment, by: str,
    work: Callable[[], Awaitable[Deployment]], release: Release | None = None,
) -> Deployment:  # fmt: skip
    """`work` written to the deployment history: begun, then its outcome."""
    entry = await kit.rollouts.begin_manual(
        environment.name, triggered_by=f"{kind} of {service} by {by}",
        sha=release.commit if release else None, kind=kind, service=service,
    )  # fmt: skip
    try:
        done = await work()
    except Exception as exc:
        await kit.rollouts.finish_manual(entry, "failed", error=mask_url(str(exc))[:500])
        raise
    await kit.rollouts.finish_manual(
        entry, "success", sha=done.release.commit, releases={service: done.release.name}
    )
    return done


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


async def running_environments(kit: Kit, targets: list[str]) -> list[Environment]:
    """The environments among secret targets (`production`, `preview-8`, `preview`
    for every preview; `test` runs no service) where a service runs now: a live
    deployment whose recorded process is alive, or one with no local process (a
    platform runs it). After `branchline down` deployments stay live in the store,
    but nothing runs, so nothing needs a restart."""
    found: dict[str, Environment] = {}
    for deployment in await kit.compute.list_deployments():
        env = deployment.environment
        if deployment.status != "live" or not (
            env.name in targets or ("preview" in targets and env.is_preview)
        ):
            continue
        pid = processes.recorded(deployment.detail)
        if pid is None or pid.alive():
            found.setdefault(env.name, env)
    return [found[name] for name in sorted(found)]


async def _live_names(kit: Kit, environment: Environment) -> set[str]:
    return {
        d.service for d in await kit.compute.list_deployments(environment) if d.status == "live"
    }
