"""Compute: immutable releases of services and the deployments that run them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from branchline import naming
from branchline.errors import BranchlineError


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
    environment: str
    release: Release
    status: str  # starting, live, draining, stopped, failed, rolled_back
    url: str | None
    created_at: datetime
    detail: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "service": self.service,
            "environment": self.environment,
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
        environment: str,
        release: Release,
        vars: Mapping[str, str],
        secrets: Mapping[str, str],
    ) -> Deployment:
        """Start `release`, wait until it is healthy, route to it, retire the old one."""
        ...

    async def rollback(self, service: str, environment: str, to: int | None = None) -> Deployment:
        """Back to the previous release (or release id `to`) through the same path."""
        ...

    async def delete(self, service: str, environment: str) -> bool: ...

    async def list_deployments(self, environment: str | None = None) -> list[Deployment]: ...
