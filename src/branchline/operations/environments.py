"""The one read model of environments: production and each preview, with their
database branch and the services live in them. The CLI's `status`, the API and
the dashboard all show this. And removing an environment that is not production
(`branchline env delete`), with or without a pull request."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from branchline.environment import Environment
from branchline.errors import UsageError
from branchline.kit import Kit

if TYPE_CHECKING:  # `branchline status` lists environments without the job queue
    from branchline.engine.engine import Engine


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
    """Production first, then every preview that is not deleted, by pull request, then
    any other environment something is live in (a preview deployed by hand, with no
    pull request; `local`)."""
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
    listed = {shown.environment for shown in found}
    for environment in sorted({d.environment for d in live} - listed, key=_order):
        found.append(view(environment, "live", await kit.database_branch(environment)))
    return found


def _order(environment: Environment) -> tuple[int, int, str]:
    return (environment.kind != "preview", environment.pr or 0, environment.name)


@dataclass(frozen=True)
class Removal:
    """What `delete` did: a cleanup run (a preview), or what it removed here."""

    environment: Environment
    run_id: int | None = None
    removed: dict[str, list[str]] = field(default_factory=dict)


async def delete(kit: Kit, engine: Engine, environment: Environment, *, by: str) -> Removal:
    """Remove an environment that is not production: a preview by its cleanup run
    (the one closing its pull request starts, in the preview's concurrency group, so
    a preview still being made is cancelled), whether it has a pull request or not;
    `local` here and now (its services and DNS records)."""
    if environment.kind == "production":
        raise UsageError(
            "production cannot be deleted",
            hint="Stop everything with `branchline down`; roll back with `branchline rollback`.",
        )
    if environment.pr is not None:
        from branchline.operations import previews  # removing, not listing, needs it

        started = await previews.close(kit, engine, environment.pr, by=by)
        return Removal(environment, run_id=started.run_id)
    from branchline.pipelines import cleanup

    return Removal(environment, removed=await cleanup.remove_running(kit, environment))
