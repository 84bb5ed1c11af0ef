"""The one read model of environments: production and each preview, with their
database branch and the services live in them. The CLI's `status`, the API and
the dashboard all show this."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from branchline.environment import Environment
from branchline.kit import Kit


@dataclass(frozen=True)
class ServiceView:
    service: str
    status: str
    release: str
    commit: str
    url: str | None  # through the edge (or the cloud's public URL)
    health_url: str | None  # where its health can be asked directly

    def as_dict(self) -> dict[str, Any]:
        return {"service": self.service, "status": self.status, "release": self.release,
                "commit": self.commit, "url": self.url}  # fmt: skip


@dataclass(frozen=True)
class EnvironmentView:
    environment: Environment
    status: str  # live, empty; a preview's: creating, live, failed, deleting
    branch: str | None
    expires_at: datetime | None = None
    branch_size: int | None = None
    branch_created_at: datetime | None = None
    services: list[ServiceView] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.environment.name

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.environment.kind, "pr": self.environment.pr,
            "status": self.status, "branch": self.branch, "expires_at": self.expires_at,
            "services": [s.as_dict() for s in self.services],
        }  # fmt: skip


async def list_environments(kit: Kit) -> list[EnvironmentView]:
    """Production first, then every preview that is not deleted, by pull request."""
    live = [d for d in await kit.compute.list_deployments() if d.status == "live"]
    branches = {b.name: b for b in await kit.database.list_branches()}

    def services(environment: Environment) -> list[ServiceView]:
        found = []
        for d in sorted(live, key=lambda d: d.service):
            if d.environment != environment:
                continue
            spec = kit.config.services.get(d.service)
            path = spec.health_path if spec is not None else "/"
            port = d.detail.get("port")
            direct = f"http://127.0.0.1:{int(port)}{path}" if port else None
            found.append(ServiceView(
                service=d.service, status=d.status, release=d.release.name,
                commit=d.release.commit, url=d.url,
                health_url=direct or (d.url.rstrip("/") + path if d.url else None),
            ))  # fmt: skip
        return found

    def view(
        environment: Environment, status: str, branch: str | None,
        expires_at: datetime | None = None,
    ) -> EnvironmentView:  # fmt: skip
        row = branches.get(branch or "")
        return EnvironmentView(
            environment, status, branch, expires_at,
            branch_size=row.size_bytes if row else None,
            branch_created_at=row.created_at if row else None,
            services=services(environment),
        )  # fmt: skip

    production = Environment.production()
    prod_services = services(production)
    found = [view(production, "live" if prod_services else "empty",
                  await kit.database_branch(production))]  # fmt: skip
    for preview in await kit.previews.list():
        if preview.status == "deleted":
            continue
        environment = Environment.preview(preview.pr)
        branch = environment.branch(kit.config.database.parent)
        found.append(view(environment, preview.status, branch, preview.expires_at))
    return found
