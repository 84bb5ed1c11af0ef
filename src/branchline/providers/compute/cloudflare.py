"""Cloudflare compute: every service a Worker, run by Cloudflare (`[compute] provider =
"cloudflare"`), through Cloudflare's API (`cloudflare_api`).

- **Releases** are built here as local compute builds a Worker (its `build`, then
  `wrangler deploy --dry-run --outdir`, sandboxed): the bundle is the release.
- **A deploy** uploads the release as a new version of the service's script (named by
  `[compute.cloudflare] script_name`: `codex-web-preview-8`), with the environment's
  variables as plain-text bindings and its secrets (DATABASE_URL too: it holds a
  password) as secret bindings; then a deployment sends 100% of the traffic to it, a
  Workers route `<host>/*` sends the host's requests to the script, and the health
  check asks the host. Unhealthy, the deployment goes back to the version that served
  before, and the deploy fails saying so.
- Secrets travel in the version's upload, never through the script's secrets
  endpoint: a secret put there makes and deploys a version at once, before the new
  code is checked, and a rollback would keep the new secrets with the old code. A
  version carries its own, so a deployment of it switches code and secrets at once;
  Cloudflare never shows a secret's value back.
- **A rollback** is a deployment of the version that served before (no upload).
- **Delete** removes the host's route and the script (with its versions).

The store keeps the deployments as local compute does (statuses, health, the version
id and script in `detail`), so `deployments list`, rollbacks and the pipelines read
them the same way.
"""

from __future__ import annotations

import asyncio
import copy
import re
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

from branchline.config import Config, ServiceConfig
from branchline.environment import Environment
from branchline.errors import BranchlineError, UsageError
from branchline.health import HealthPolicy, HealthResult, check_health
from branchline.masking import mask
from branchline.providers.cloudflare_client import CloudflareError
from branchline.providers.compute import (
    Deployment,
    DeploymentEnv,
    EnvironmentSource,
    Release,
    UnhealthyError,
    envtemplate,
    runtimes,
    workerd,
)
from branchline.providers.compute.cloudflare_api import (
    NO_SUCH_SCRIPT,
    Binding,
    CloudflareWorkersClient,
)
from branchline.providers.compute.deploying import deploying, shown_detail
from branchline.providers.compute.local import LocalComputeProvider, _masked, _release
from branchline.providers.reconciling import Finding
from branchline.store import Store, resources
from branchline.store import compute as rows

# Bindings that hold a credential however they are named: sent as secrets.
SECRET_VARS = ("DATABASE_URL", "PGPASSWORD")
# Deployments whose script stands in the account until they are deleted.
STANDING = ("starting", "live", "failed")


async def _nothing(_environment: Environment) -> DeploymentEnv:
    return DeploymentEnv()


class CloudflareComputeProvider:
    """Construction does no I/O."""

    name = "cloudflare"

    def __init__(
        self,
        *,
        config: Config,
        store: Store,
        client: CloudflareWorkersClient,
        builder: LocalComputeProvider,
        script_name: str = "{project}-{service}-{environment}",
        edge_url: str | None = None,
        environment: EnvironmentSource | None = None,
    ) -> None:
        self.config = config
        self.project = config.project.name
        self.store = store
        self.client = client
        self.builder = builder  # builds releases, keeps them, holds the deploy locks
        self.script_template = script_name
        self.edge_url = edge_url.rstrip("/") if edge_url else None
        self.environment_of = environment or _nothing

    def with_config(self, config: Config) -> CloudflareComputeProvider:
        view = copy.copy(self)
        view.config = config
        view.builder = self.builder.with_config(config)
        return view

    def script_name(self, service: str, environment: Environment) -> str:
        return self.script_template.format(
            project=self.project, service=service, environment=environment.name
        ).lower()

    # -- releases -------------------------------------------------------------------

    async def build(self, service: str, commit: str) -> Release:
        if self.builder._service(service).runtime != "worker":
            raise UsageError(
                f"service {service} is not a Worker: Cloudflare compute runs Workers only",
                hint=f'Set `runtime = "worker"` under `[services.{service}]`.',
            )
        release = await self.builder.build(service, commit)
        if not (Path(release.location) / runtimes.BUNDLE).is_dir():
            # Built on another machine (a CI runner's disk, gone with it): its files are
            # not here to upload. Built again here, as a new build of the same commit.
            async with self.store.connect() as conn:
                await rows.set_release_status(conn, release.id, "pruned")
            release = await self.builder.build(service, commit)
        return release

    async def releases(self, service: str) -> list[Release]:
        return await self.builder.releases(service)

    # -- deployments ------------------------------------------------------------------

    async def deploy(
        self,
        service: str,
        environment: Environment,
        release: Release,
        env: DeploymentEnv,
        *,
        position: int = 0,
    ) -> Deployment:
        return await self._deploy(service, environment, release, env, position=position)

    async def _deploy(
        self,
        service: str,
        environment: Environment,
        release: Release,
        env: DeploymentEnv,
        *,
        position: int = 0,
        version: str | None = None,
        retire_as: str = "stopped",
    ) -> Deployment:
        """Deploy `release` (uploaded now, or its already uploaded `version`)."""
        spec = await self.builder._spec_of(release)
        where = environment.name
        host = environment.host_name(spec.subdomain, self.config.project.zone)
        script = self.script_name(service, environment)
        async with self.store.connect() as conn:
            known = await rows.deployments(conn, self.project, environment=where,
                                           service=service)  # fmt: skip
        made_before = any(d.detail.get("script") == script and d.detail.get("version_id")
                          for d in known)  # fmt: skip
        detail = {"var_names": sorted(env.vars), "secret_names": sorted(env.secrets),
                  "host": host, "script": script}  # fmt: skip
        async with (
            self.builder._locked(f"deploy:{service}:{where}") as conn,
            deploying(
                conn, self.project, service, where, release.id, detail, retire_as=retire_as
            ) as made,  # fmt: skip
        ):
            deployment_id = made.deployment_id
            serving = next((d.detail.get("version_id") for d in made.previous
                            if d.detail.get("script") == script), None)  # fmt: skip
            deployed = False
            if version is None:
                version, deployed = await self._upload(
                    spec, environment, release, env, script, host, first=not made_before
                )
            if not deployed:
                await self.client.deploy(script, version, message=f"branchline {release.name}")
            await rows.update_deployment(conn, deployment_id, detail={"version_id": version})
            await self.client.ensure_route(f"{host}/*", script)
            result = await self._health(spec, host, release, position)
            if not result.healthy:
                await self._unhealthy(spec, release, environment, env, script, serving,
                                      result, deployment_id)  # fmt: skip
            made.healthy(result)
        return await self._deployment(deployment_id)

    async def _upload(
        self, spec: ServiceConfig, environment: Environment, release: Release,
        env: DeploymentEnv, script: str, host: str, *, first: bool,
    ) -> tuple[str, bool]:  # fmt: skip
        """The release as a new version of `script`: its id, and whether it is deployed
        already. The `first` upload for a script makes it and deploys at once (nothing
        served before); later ones are versions only, until their deployment. A script
        thought new that exists is uploaded to the same way; one thought there that is
        gone (deleted by hand) is made again."""
        bundle, bindings = await asyncio.to_thread(
            self._upload_parts, spec, environment, release, env, host
        )
        if not first:
            try:
                return await self.client.upload(script, bundle, bindings, deploy=False), False
            except CloudflareError as exc:
                if exc.cf_code != NO_SUCH_SCRIPT and exc.status != 404:
                    raise
        return await self.client.upload(script, bundle, bindings, deploy=True), True

    def _upload_parts(
        self, spec: ServiceConfig, environment: Environment, release: Release,
        env: DeploymentEnv, host: str,
    ) -> tuple[workerd.WorkerBundle, list[Binding]]:  # fmt: skip
        """The release's bundle and the version's bindings: the Worker's own `[vars]`,
        the service's `env`, the environment's variables (plain text) and its secrets
        (secret text), later ones winning over a same name."""
        location = Path(release.location)
        declared = runtimes.wrangler_config(location / "tree" / spec.path)
        bundle = workerd.bundle_from_dir(location / runtimes.BUNDLE, declared)
        url = f"https://{host}/"
        db = envtemplate.database_facts(env.vars.get("DATABASE_URL"))
        facts = {**db, "release": release.name, "commit": release.commit, "url": url,
                 "environment": environment.name, "service": spec.name, "host": host}  # fmt: skip
        plain: dict[str, str] = dict(workerd.vars_of(declared))
        plain.update(envtemplate.render(spec.env, facts, service=spec.name))
        plain.update(env.vars)
        plain.update(envtemplate.identity(
            project=self.project, service=spec.name, environment=environment.name,
            release=release.name, commit=release.commit, host=host,
        ))  # fmt: skip
        hidden = set(env.secrets.values()) | set(self.config._secret_values)
        bindings = {
            name: Binding(name, value, secret=name in SECRET_VARS or value in hidden)
            for name, value in plain.items()
        }
        bindings.update({name: Binding(name, value, secret=True)
                         for name, value in env.secrets.items()})  # fmt: skip
        return bundle, [bindings[name] for name in sorted(bindings)]

    async def _unhealthy(
        self, spec: ServiceConfig, release: Release, environment: Environment,
        env: DeploymentEnv, script: str, serving: Any, result: HealthResult,
        deployment_id: int,
    ) -> None:  # fmt: skip
        """Send the traffic back to what served before (if anything did), then fail."""
        back = ""
        if isinstance(serving, str) and serving:
            await self.client.deploy(script, serving, message="branchline: back, unhealthy")
            back = " The version that served before serves again."
        health = _masked(result.as_dict(), env.sensitive)
        async with self.store.connect() as conn:
            await rows.update_deployment(conn, deployment_id, detail={"health": health})
        raise UnhealthyError(
            f"{spec.name} ({release.name}) in {environment.name} did not become healthy: "
            f"{mask(result.verdict, env.sensitive)}",
            hint=f"{back.strip() or 'Nothing served before it.'} See the answers with "
            "`branchline deployments list --json`.",
            health=health,
        )

    async def _health(
        self, spec: ServiceConfig, host: str, release: Release, position: int
    ) -> HealthResult:
        """The health check through the host, as users reach it (or through
        `edge_url`, the host still named in the Host header)."""
        policy = HealthPolicy.from_config(self.config.health)
        base = self.edge_url or f"https://{host}"
        return await check_health(
            f"{base}{spec.health_path}", policy=policy, position=position,
            expect_commit=release.commit, client=self.builder._client(), host_header=host,
        )  # fmt: skip

    async def rollback(
        self, service: str, environment: Environment, to: int | None = None
    ) -> Deployment:
        """A deployment of the version that served before (or of release `to`: its
        version if this script has one, else an upload of it)."""
        self.builder._service(service)
        script = self.script_name(service, environment)
        async with self.store.connect() as conn:
            history = await rows.deployments(
                conn, self.project, environment=environment.name, service=service
            )
            live = next((d for d in history if d.status == "live"), None)
            if live is None:
                raise UsageError(
                    f"{service} has no live deployment in {environment.name}",
                    hint="See `branchline deployments list`.",
                )
            target = await self.builder._rollback_target(conn, history, live, service, to)
        version = next(
            (d.detail.get("version_id") for d in history
             if d.release_id == target.id and d.detail.get("script") == script
             and d.detail.get("version_id")),
            None,
        )  # fmt: skip
        if not version:
            target = await self.build(service, target.commit)  # its files, here
        deployment = await self._deploy(
            service, environment, target, await self.environment_of(environment),
            version=str(version) if version else None, retire_as="rolled_back",
        )  # fmt: skip
        async with self.store.connect() as conn:
            await rows.update_deployment(conn, live.id, detail={"rolled_back_to": deployment.id})
        return deployment

    async def delete(self, service: str, environment: Environment) -> bool:
        """Remove the host's route and the script; the deployments are stopped."""
        where = environment.name
        script = self.script_name(service, environment)
        async with self.builder._locked(f"deploy:{service}:{where}") as conn:
            running = await rows.deployments(
                conn, self.project, environment=where, service=service,
                statuses=STANDING,
            )  # fmt: skip
            await resources.record(conn, self.project, "deployment", f"{service}:{where}",
                                   "deleting")  # fmt: skip
            for route in await self.client.routes():
                if route.script == script:
                    await self.client.delete_route(route.id)
            gone = await self.client.delete_script(script)
            for deployment in running:
                await rows.update_deployment(conn, deployment.id, status="stopped")
            await resources.record(conn, self.project, "deployment", f"{service}:{where}",
                                   "deleted")  # fmt: skip
        return gone or bool(running)

    async def list_deployments(self, environment: Environment | None = None) -> list[Deployment]:
        where = environment.name if environment is not None else None
        async with self.store.connect() as conn:
            found = await rows.deployments(conn, self.project, environment=where)
            built = await rows.releases_by_id(conn, sorted({d.release_id for d in found}))
        return [self._to_deployment(d, built[d.release_id]) for d in found]

    def logs(
        self, service: str, environment: Environment, *, since: datetime | None = None,
        follow: bool = False,
    ) -> AsyncIterator[str]:  # fmt: skip
        raise UsageError(
            f"the logs of {self.script_name(service, environment)} are Cloudflare's: "
            "branchline does not read a Worker's logs on Cloudflare yet",
            hint="Follow them with `wrangler tail SCRIPT` (or the dashboard's Logs tab).",
        )

    async def reconcile(self, *, dry_run: bool = False) -> list[Finding]:
        """Scripts (and their routes) of this project's that no deployment explains: a
        crash between Cloudflare's answer and the store's row, a cleanup cut short.
        A script is this project's when its name is one `script_name` makes for one of
        its services and an environment's name; every other script is left alone."""
        async with self.store.connect() as conn:
            known = await rows.deployments(conn, self.project)
        explained = {str(d.detail.get("script")) for d in known
                     if d.status in STANDING and d.detail.get("script")}  # fmt: skip
        routes = await self.client.routes() if self.client.zone_id else []
        found = []
        for script in await self.client.list_scripts():
            if script in explained or not self._ours(script):
                continue
            if not dry_run:
                for route in routes:
                    if route.script == script:
                        await self.client.delete_route(route.id)
                await self.client.delete_script(script)
            found.append(Finding("script", script, "delete", "no deployment explains it",
                                 not dry_run))  # fmt: skip
        return found

    def _ours(self, script: str) -> bool:
        """Whether `script` is a name `script_name` makes for this project: one of its
        services, and a valid environment name."""
        pattern = re.escape(self.script_template.lower())
        services = "|".join(re.escape(s.lower()) for s in sorted(self.config.services))
        pattern = pattern.replace(re.escape("{project}"), re.escape(self.project.lower()))
        pattern = pattern.replace(re.escape("{service}"), f"(?:{services})")
        pattern = pattern.replace(re.escape("{environment}"), "(?P<environment>[a-z0-9-]+)")
        match = re.fullmatch(pattern, script)
        if match is None:
            return False
        try:
            Environment.parse(match.group("environment"))
        except (BranchlineError, ValueError):
            return False
        return True

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.builder.aclose()

    # -- internals ------------------------------------------------------------------

    async def _deployment(self, deployment_id: int) -> Deployment:
        async with self.store.connect() as conn:
            row = await rows.get_deployment(conn, deployment_id)
            assert row is not None
            release = await rows.get_release(conn, row.release_id)
        assert release is not None
        return self._to_deployment(row, release)

    def _to_deployment(self, row: rows.DeploymentRow, release: rows.ReleaseRow) -> Deployment:
        host = row.detail.get("host")
        return Deployment(
            id=row.id, service=row.service, environment=Environment.parse(row.environment),
            release=_release(release), status=row.status,
            url=f"https://{host}/" if host else None, created_at=row.created_at,
            detail=shown_detail(row.detail),
        )  # fmt: skip
