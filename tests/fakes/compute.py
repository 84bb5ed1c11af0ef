"""An in-memory ComputeProvider: releases per commit, blue-green deployments, and a
record of the DeploymentEnv each start was given (what the regression tests
compare). A release a test marks unhealthy fails its health check and never goes
live; the old one keeps serving."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from branchline.config import Config
from branchline.environment import Environment
from branchline.errors import UsageError
from branchline.health import Attempt, HealthResult
from branchline.providers.compute import (
    Deployment,
    DeploymentEnv,
    EnvironmentSource,
    Release,
    UnhealthyError,
)

HEAD = "0123456789abcdef0123456789abcdef01234567"


async def _nothing(_environment: Environment) -> DeploymentEnv:
    return DeploymentEnv()


@dataclass(frozen=True)
class Start:
    """One start of a service: what it was given (compare these across paths)."""

    how: str  # deploy, rollback, restart, trial
    service: str
    environment: Environment
    release: str
    env: DeploymentEnv


class MemoryCompute:
    def __init__(self, config: Config, environment: EnvironmentSource | None = None) -> None:
        self.config = config
        self.environment_of = environment or _nothing
        self.head = HEAD  # what "HEAD" (or any branch name) resolves to
        self.releases_built: list[Release] = []
        self.deployments: list[Deployment] = []
        self.starts: list[Start] = []
        self.unhealthy: set[str] = set()  # commits (or services) that fail their check
        self.trial_verdicts: dict[str, str] = {}  # service -> verdict of a failing trial
        self.output: dict[tuple[str, Environment], list[str]] = {}
        self.closed = False
        self._ids = itertools.count(1)

    # -- ComputeProvider ---------------------------------------------------------------

    async def build(self, service: str, commit: str) -> Release:
        self._service(service)
        commit = commit if _is_sha(commit) else self.head
        for release in self.releases_built:
            if release.service == service and release.commit == commit:
                return release
        release = Release(next(self._ids), service, commit, 1, f"memory:{service}@{commit}",
                          _now())  # fmt: skip
        self.releases_built.append(release)
        return release

    async def deploy(
        self,
        service: str,
        environment: Environment,
        release: Release,
        env: DeploymentEnv,
        *,
        position: int = 0,
    ) -> Deployment:
        return self._start("deploy", service, environment, release, env, "stopped")

    async def rollback(
        self, service: str, environment: Environment, to: int | None = None
    ) -> Deployment:
        self._service(service)
        live = self._live(service, environment)
        if live is None:
            raise UsageError(f"{service} has no live deployment in {environment.name}")
        if to is not None:
            target = next((r for r in self.releases_built if r.id == to), None)
            if target is None or target.service != service:
                raise UsageError(f"release {to} is not an available release of {service}")
        else:
            earlier = [
                d for d in self.deployments
                if d.service == service and d.environment == environment and d.id < live.id
                and d.release.id != live.release.id and d.status in ("stopped", "rolled_back")
            ]  # fmt: skip
            if not earlier:
                raise UsageError(f"{service} has no earlier release to roll back to")
            target = earlier[-1].release
        env = await self.environment_of(environment)
        return self._start("rollback", service, environment, target, env, "rolled_back")

    async def delete(self, service: str, environment: Environment) -> bool:
        running = [
            d for d in self.deployments
            if d.service == service and d.environment == environment
            and d.status in ("starting", "live", "draining", "failed")
        ]  # fmt: skip
        for deployment in running:
            self._set(deployment, "stopped")
        return bool(running)

    async def list_deployments(self, environment: Environment | None = None) -> list[Deployment]:
        found = [d for d in self.deployments if environment is None or d.environment == environment]
        return sorted(found, key=lambda d: d.id, reverse=True)

    async def releases(self, service: str) -> list[Release]:
        self._service(service)
        return [r for r in reversed(self.releases_built) if r.service == service]

    async def logs(
        self, service: str, environment: Environment, *, since: datetime | None = None,
        follow: bool = False,
    ) -> AsyncIterator[str]:  # fmt: skip
        if not any(d.service == service and d.environment == environment
                   for d in self.deployments):  # fmt: skip
            raise UsageError(f"{service} has no deployment in {environment.name}")
        for line in self.output.get((service, environment), []):
            yield line + "\n"

    async def aclose(self) -> None:
        self.closed = True

    # -- capabilities ---------------------------------------------------------------

    async def trial(
        self, service: str, environment: Environment, release: Release, env: DeploymentEnv,
        *, retries: int = 4,
    ) -> HealthResult:  # fmt: skip
        self.starts.append(Start("trial", service, environment, release.name, env))
        verdict = self.trial_verdicts.get(service)
        return _health(verdict is None, verdict or "healthy")

    async def restart_all(self, environment: Environment) -> list[Deployment]:
        """What a supervisor's restart does: each live service again, current env."""
        env = await self.environment_of(environment)
        return [
            self._start("restart", d.service, environment, d.release, env, "stopped")
            for d in await self.list_deployments(environment) if d.status == "live"
        ]  # fmt: skip

    # -- internals ------------------------------------------------------------------

    def _start(
        self, how: str, service: str, environment: Environment, release: Release,
        env: DeploymentEnv, retire_as: str,
    ) -> Deployment:  # fmt: skip
        spec = self._service(service)
        self.starts.append(Start(how, service, environment, release.name, env))
        host = environment.host_name(spec.subdomain, self.config.project.zone)
        previous = self._live(service, environment)
        deployment = Deployment(
            next(self._ids), service, environment, release, "starting", f"http://{host}/",
            _now(), {"host": host, "var_names": sorted(env.vars),
                     "secret_names": sorted(env.secrets)},
        )  # fmt: skip
        self.deployments.append(deployment)
        if release.commit in self.unhealthy or service in self.unhealthy:
            self._set(deployment, "failed")
            verdict = "unhealthy: HTTP 503 after 1 attempt"
            raise UnhealthyError(
                f"{service} ({release.name}) in {environment.name} did not become healthy: "
                f"{verdict}", health=_health(False, verdict).as_dict(),
            )  # fmt: skip
        live = self._set(deployment, "live")
        if previous is not None:
            self._set(previous, retire_as)
        return live

    def _set(self, deployment: Deployment, status: str) -> Deployment:
        changed = replace(deployment, status=status)
        self.deployments[self.deployments.index(deployment)] = changed
        return changed

    def _live(self, service: str, environment: Environment) -> Deployment | None:
        return next((d for d in self.deployments if d.service == service
                     and d.environment == environment and d.status == "live"), None)  # fmt: skip

    def _service(self, name: str) -> object:
        spec = self.config.services.get(name)
        if spec is None:
            raise UsageError(f"there is no service {name!r}")
        return spec


def _health(ok: bool, verdict: str) -> HealthResult:
    attempt = Attempt(1, 0.0, 200 if ok else 503, "HTTP 200" if ok else "HTTP 503",
                      None if ok else "HTTP 503", None, None, 1.0, ok)  # fmt: skip
    return HealthResult("http://memory.invalid/health", ok, (attempt,), verdict)


def _is_sha(text: str) -> bool:
    return 7 <= len(text) <= 64 and all(c in "0123456789abcdef" for c in text)


def _now() -> datetime:
    return datetime.now(UTC)
