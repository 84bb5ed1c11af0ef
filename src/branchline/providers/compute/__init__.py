"""Compute: immutable releases of services and the deployments that run them.

`ComputeProvider` is what every backend does. Optional capabilities, checked with
`isinstance`: `TrialRuns` (start a release against another database, check it,
stop it: the production pre-flight), `Supervisor` (a long-running process that
restarts crashed services and adopts running ones: local processes; the cloud
supervises its own Workers).

What a service is told (its database, its siblings' URLs, the environment's
secrets) is a `DeploymentEnv`, built in one place (`Kit.deployment_env`). A
provider that must start a service again by itself (a restart, a rollback) asks
the `EnvironmentSource` it was given for the current one, instead of keeping a
copy of the values.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from branchline import naming
from branchline.config import Config
from branchline.environment import Environment
from branchline.errors import BranchlineError
from branchline.health import HealthResult
from branchline.providers.compute.envtemplate import database_facts


@dataclass(frozen=True)
class DeploymentEnv:
    """What a service of an environment is given: plain variables (DATABASE_URL, the
    siblings' URLs) and the environment's secrets. Values never show in a repr."""

    vars: Mapping[str, str] = field(default_factory=dict, repr=False)
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        return f"DeploymentEnv(vars={sorted(self.vars)}, secrets={sorted(self.secrets)})"

    @property
    def sensitive(self) -> list[str]:
        """Values to mask wherever output is shown: the secrets, and the database
        password inside DATABASE_URL."""
        hidden = list(self.secrets.values())
        password = database_facts(self.vars.get("DATABASE_URL")).get("db.password")
        return [*hidden, password] if password else hidden


EnvironmentSource = Callable[[Environment], Awaitable[DeploymentEnv]]
"""The current DeploymentEnv of an environment (for restarts and rollbacks)."""


@dataclass(frozen=True)
class Release:
    """An immutable build of one service at one commit."""

    id: int
    service: str
    commit: str
    build_number: int
    location: str  # where the built files are (a directory locally, a script id on the cloud)
    created_at: datetime

    @property
    def name(self) -> str:
        return naming.release_name(self.service, self.commit, self.build_number)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "service": self.service,
            "commit": self.commit,
            "build_number": self.build_number,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True)
class Deployment:
    """A release running for one service in one environment."""

    id: int
    service: str
    environment: Environment
    release: Release
    status: str  # starting, live, draining, stopped, failed, rolled_back
    url: str | None
    created_at: datetime
    detail: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "service": self.service,
            "environment": self.environment.name,
            "release": self.release.as_dict(),
            "status": self.status,
            "url": self.url,
            "created_at": self.created_at.isoformat(),
            "detail": {k: v for k, v in self.detail.items() if k != "env"},
        }


class UnhealthyError(BranchlineError):
    """A new release did not become healthy; the old one (if any) keeps serving."""

    default_hint = "The old release keeps serving; see `branchline logs SERVICE --env ENV`."

    def __init__(
        self, message: str, *, hint: str | None = None, health: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.health = dict(health or {})  # HealthResult.as_dict(): the attempts


@runtime_checkable
class ComputeProvider(Protocol):
    async def build(self, service: str, commit: str) -> Release:
        """Build (or return the existing) release of `service` at `commit`."""
        ...

    async def deploy(
        self,
        service: str,
        environment: Environment,
        release: Release,
        env: DeploymentEnv,
        *,
        position: int = 0,
    ) -> Deployment:
        """Start `release` with `env`, wait until it is healthy (the health policy's
        first wait depends on `position`, the service's place in the rollout), route
        to it, retire the old one. An unhealthy release raises UnhealthyError and
        the old one keeps serving."""
        ...

    async def rollback(
        self, service: str, environment: Environment, to: int | None = None
    ) -> Deployment:
        """Back to the previous release (or release id `to`) through the same path,
        with the environment's current DeploymentEnv."""
        ...

    async def delete(self, service: str, environment: Environment) -> bool:
        """Stop and remove the service in the environment; False when nothing ran."""
        ...

    async def list_deployments(self, environment: Environment | None = None) -> list[Deployment]:
        """Deployments, newest first (all environments when None)."""
        ...

    async def releases(self, service: str) -> list[Release]:
        """Releases of `service` kept for rollback, newest first."""
        ...

    def logs(
        self, service: str, environment: Environment, *, since: datetime | None = None,
        follow: bool = False,
    ) -> AsyncIterator[str]:  # fmt: skip
        """The service's output, oldest first: of its latest deployment, or of every
        deployment started since `since`; with `follow`, new output as it comes."""
        ...

    async def aclose(self) -> None:
        """Finish background work (draining retired releases) before exiting."""
        ...


# -- optional capabilities ------------------------------------------------------------


@runtime_checkable
class TrialRuns(Protocol):
    async def trial(
        self, service: str, environment: Environment, release: Release, env: DeploymentEnv,
        *, retries: int = 4,
    ) -> HealthResult:  # fmt: skip
        """Start `release` with `env` (another database, say), check its health, stop
        it: no route, no deployment."""
        ...


@runtime_checkable
class Reconfigurable(Protocol):
    def with_config(self, config: Config) -> ComputeProvider:
        """The same provider (its state, clients and background work shared) building
        and deploying services as `config` defines them: a run's own commit's."""
        ...


@runtime_checkable
class Supervisor(Protocol):
    async def supervise(self) -> list[str]:
        """One pass: restart live services whose process is gone, adopt running ones
        nobody recorded. Returns `service:environment` of what was restarted."""
        ...


@runtime_checkable
class Halting(Protocol):
    async def halt_all(self) -> list[str]:
        """Stop every process of every service of the project, records untouched (the
        next supervisor starts the live ones again). Needs no state database.
        Returns `service in environment` of what was stopped."""
        ...
