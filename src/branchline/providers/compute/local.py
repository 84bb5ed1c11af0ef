"""Local compute: services run as supervised processes from immutable releases,
behind branchline's edge, deployed blue-green.

Layout under the state directory:

    releases/<service>/<commit12>.<n>/       the service's files at that commit, built
    deployments/<environment>/<service>/     one log file per deployment

A deploy starts the new release on a free port, waits until it is healthy (and
answers with the commit being deployed), switches the edge route in one row
update, then drains and stops the old process. An unhealthy release is never
routed to; the old one keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import subprocess
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from branchline import processes
from branchline.config import Config, ServiceConfig
from branchline.environment import Environment
from branchline.errors import BranchlineError, UsageError
from branchline.health import HealthPolicy, HealthResult, check_health
from branchline.masking import mask, mask_url
from branchline.postgres.cluster import free_port
from branchline.providers.compute import (
    Deployment,
    DeploymentEnv,
    EnvironmentSource,
    Release,
    UnhealthyError,
    envtemplate,
    releases,
)
from branchline.providers.reconciling import Finding
from branchline.sandbox import Box, Sandbox
from branchline.store import Store, locks, resources, routes
from branchline.store import compute as rows
from branchline.store.queries import Conn

LIVE = ("live",)
RUNNING = ("starting", "live", "draining")
# What delete stops: also failed deploys, whose process an interruption may have left.
STOPPABLE = (*RUNNING, "failed")
LOG_TAIL = 2000
STRAY_AGE = 10.0  # seconds: a process this young may be a deploy about to record it
TRIAL_AGE = 300.0  # a pre-flight trial older than this outlived its rollout
FOLLOW_POLL = 0.2  # how often a followed log is read again (a file has nothing to wait on)
# Kept on the sandbox process (how reconcile and the supervisor find a service), never
# handed to the service: a path into branchline's state.
SANDBOX_ONLY = ("BRANCHLINE_STATE",)


async def _nothing(_environment: Environment) -> DeploymentEnv:
    return DeploymentEnv()


class LocalComputeProvider:
    """Construction does no I/O."""

    name = "local"

    def __init__(
        self,
        *,
        config: Config,
        store: Store,
        state_dir: Path,
        repo: Path | None = None,
        edge_port: int | None = None,
        drain: float = 1.0,
        keep_releases: int = 5,
        environment: EnvironmentSource | None = None,
        sandbox: Sandbox | None = None,
    ) -> None:
        self.config = config
        self.project = config.project.name
        self.store = store
        self.state_dir = state_dir
        self.repo = repo or config.root
        self.edge_port = edge_port
        self.drain = drain
        self.keep_releases = keep_releases
        self.environment_of = environment or _nothing
        # Builds and services are code from a branch: boxed, unless configured off.
        self.sandbox = sandbox or Sandbox.configure(
            enabled=False, protected=(state_dir,),
            path=os.environ.get("PATH", os.defpath).split(os.pathsep),
        )  # fmt: skip
        self._background: list[asyncio.Task[None]] = []
        self._http: tuple[asyncio.AbstractEventLoop, httpx.AsyncClient] | None = None

    def _client(self) -> httpx.AsyncClient:
        """One HTTP client for every health check (building one costs ~40 ms of CPU on
        the event loop); per event loop, since a client cannot change loops. No
        keep-alive: an idle connection would hold a service's handler thread open."""
        loop = asyncio.get_running_loop()
        if self._http is None or self._http[0] is not loop:
            client = httpx.AsyncClient(
                follow_redirects=False, trust_env=False,
                limits=httpx.Limits(max_keepalive_connections=0),
            )  # fmt: skip
            self._http = (loop, client)
        return self._http[1]

    # -- releases -----------------------------------------------------------

    def _service(self, name: str) -> ServiceConfig:
        service = self.config.services.get(name)
        if service is None:
            raise UsageError(
                f"there is no service {name!r}",
                hint=f"Services in branchline.toml: {', '.join(self.config.services)}.",
            )
        return service

    async def build(self, service: str, commit: str) -> Release:
        """Build `service` at `commit` once; later calls return the same release."""
        spec = self._service(service)
        commit = await asyncio.to_thread(self._resolve, commit)
        async with self._locked(f"build:{service}:{commit}") as conn:
            existing = await rows.release_for(conn, self.project, service, commit)
            if existing is not None and existing.status == "ready":
                return _release(existing)
            number = (existing.build_number + 1) if existing else 1
            location = self.state_dir / "releases" / service / f"{commit[:12]}.{number}"
            release_id = await rows.insert_release(
                conn, self.project, service, commit, number, str(location)
            )
            try:
                await asyncio.to_thread(self._build_files, spec, commit, location)
            except BaseException:
                await asyncio.to_thread(releases.remove, location)
                await rows.set_release_status(conn, release_id, "failed")
                raise
            await rows.set_release_status(conn, release_id, "ready")
            built = await rows.get_release(conn, release_id)
        assert built is not None
        await self._prune_releases(service)
        return _release(built)

    def _resolve(self, commit: str) -> str:
        ref = f"{commit}^{{commit}}"
        result = subprocess.run(
            ["git", "-C", str(self.repo), "rev-parse", "--verify", "--quiet", ref],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise UsageError(
                f"{commit!r} is not a commit of {self.repo}",
                hint="Pass a commit id or a branch name that exists (git log).",
            )
        return result.stdout.strip()

    def _build_files(self, spec: ServiceConfig, commit: str, location: Path) -> None:
        if location.exists():
            releases.remove(location)  # the remains of an interrupted build
        location.mkdir(parents=True)
        service_dir = releases.export_tree(self.repo, commit, spec.path, location / "tree")
        if spec.build:
            self.sandbox.check()
            tree = location / "tree"
            self.sandbox.hand_over(tree)  # the build writes its output into the release
            argv = self.sandbox.wrap(spec.build, Box(writable=(tree,)), cwd=service_dir)
            env = {**self.sandbox.base_env(), "BRANCHLINE_COMMIT": commit,
                   "BRANCHLINE_SERVICE": spec.name}  # fmt: skip
            releases.run_build(argv, service_dir, location / "build.log", env)

    async def _prune_releases(self, service: str) -> None:
        """Keep the newest releases (and any release a deployment still runs)."""
        async with self.store.connect() as conn:
            all_releases = await rows.releases_of(conn, self.project, service)
            running = {
                d.release_id
                for d in await rows.deployments(
                    conn, self.project, service=service, statuses=RUNNING
                )
            }
            ready = [r for r in all_releases if r.status == "ready"]
            for old in ready[self.keep_releases :]:
                if old.id in running:
                    continue
                await asyncio.to_thread(releases.remove, Path(old.location or ""))
                await rows.set_release_status(conn, old.id, "pruned")

    async def releases(self, service: str) -> list[Release]:
        self._service(service)
        async with self.store.connect() as conn:
            found = await rows.releases_of(conn, self.project, service)
        return [_release(r) for r in found if r.status == "ready"]

    # -- deployments ----------------------------------------------------------

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
        retire_as: str = "stopped",
    ) -> Deployment:
        spec = self._service(service)
        where = environment.name
        host = environment.host_name(spec.subdomain, self.config.project.zone)
        async with self._locked(f"deploy:{service}:{where}") as conn:
            previous = await rows.deployments(
                conn, self.project, environment=where, service=service, statuses=LIVE
            )
            await resources.record(
                conn, self.project, "deployment", f"{service}:{where}", "creating",
                environment=where,
            )  # fmt: skip
            # Names only: the values (a password in DATABASE_URL, the secrets) are
            # asked for again whenever the service starts.
            deployment_id = await rows.insert_deployment(
                conn, self.project, service, where, release.id,
                {"var_names": sorted(env.vars), "secret_names": sorted(env.secrets),
                 "host": host},
            )  # fmt: skip
            try:
                port, _pid, result = await self._start_healthy(
                    spec, environment, release, env, deployment_id, position
                )
            except BaseException:
                await rows.update_deployment(conn, deployment_id, status="failed")
                await resources.record(
                    conn, self.project, "deployment", f"{service}:{where}",
                    "ready" if previous else "failed",
                )  # fmt: skip
                raise
            # The switch: one row update, picked up by the edge through NOTIFY.
            await routes.set_route(
                conn, host=host, project=self.project, environment=where,
                service=service, port=port, deployment_id=deployment_id,
            )  # fmt: skip
            await rows.update_deployment(
                conn, deployment_id, status="live",
                detail={"health": result.as_dict(), "live_at": _now()},
            )  # fmt: skip
            for old in previous:
                await rows.update_deployment(conn, old.id, status="draining")
            await resources.record(conn, self.project, "deployment", f"{service}:{where}", "ready")
        if previous:
            self._background.append(asyncio.create_task(self._retire(previous, retire_as)))
        return await self._deployment(deployment_id)

    async def _start_healthy(
        self,
        spec: ServiceConfig,
        environment: Environment,
        release: Release,
        env: DeploymentEnv,
        deployment_id: int,
        position: int,
    ) -> tuple[int, processes.ProcessId, HealthResult]:
        port = free_port()
        variables = self._env(spec, environment, release, port, env, deployment_id)
        log = self.log_path(environment, spec.name, deployment_id)
        log.parent.mkdir(parents=True, exist_ok=True)
        pid = await asyncio.to_thread(self._launch, spec, release, variables, log)
        try:
            async with self.store.connect() as conn:
                await rows.update_deployment(
                    conn, deployment_id,
                    detail={"pid": pid.pid, "start_time": pid.start_time, "port": port,
                            "log": str(log)},
                )  # fmt: skip
            result = await self._health(spec, port, release, pid, position)
        except BaseException:
            # Interrupted (Ctrl-C, a store error): the new process must not linger.
            await asyncio.shield(asyncio.to_thread(processes.stop, pid, grace=2.0))
            raise
        if not result.healthy:
            await asyncio.to_thread(processes.stop, pid, grace=2.0)
            # The log may print the connection URL or a secret: mask before showing.
            shown = mask(mask_url(_tail(log)), env.sensitive)
            async with self.store.connect() as conn:
                await rows.update_deployment(
                    conn, deployment_id, detail={"health": result.as_dict()}
                )
            raise UnhealthyError(
                f"{spec.name} ({release.name}) in {environment.name} did not become healthy: "
                f"{result.verdict}",
                hint=f"The old release keeps serving. Its log ends: {shown}",
                health=result.as_dict(),
            )
        return port, pid, result

    async def _health(
        self,
        spec: ServiceConfig,
        port: int,
        release: Release,
        pid: processes.ProcessId,
        position: int,
        retries: int | None = None,
    ) -> HealthResult:
        """The health check, cut short when the process exits (no point waiting)."""
        policy = HealthPolicy.from_config(self.config.health)
        if retries is not None:
            policy = dataclasses.replace(policy, retries=min(retries, policy.retries))
        check = asyncio.create_task(
            self._listening_then_healthy(spec, port, release, policy, position)
        )
        while not check.done():
            await asyncio.wait({check}, timeout=0.05)
            if not check.done() and not pid.alive():
                check.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await check
                return HealthResult(
                    url=f"http://127.0.0.1:{port}{spec.health_path}",
                    healthy=False,
                    attempts=(),
                    verdict="unhealthy: the process exited during start-up",
                )
        return check.result()

    async def _listening_then_healthy(
        self, spec: ServiceConfig, port: int, release: Release, policy: HealthPolicy,
        position: int,
    ) -> HealthResult:  # fmt: skip
        """Wait (cheaply, every 10 ms) until the new process accepts connections, then
        run the health check: its exponential backoff is for a service that answers
        but is not ready, and would make a service listening at 0.34 s wait to 0.77 s."""
        deadline = time.monotonic() + policy.deadline
        while time.monotonic() < deadline:
            try:
                _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.01)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            break
        return await check_health(
            f"http://127.0.0.1:{port}{spec.health_path}",
            policy=policy,
            position=position,
            expect_commit=release.commit,
            client=self._client(),
        )

    def _env(
        self,
        spec: ServiceConfig,
        environment: Environment,
        release: Release,
        port: int,
        given: DeploymentEnv,
        deployment_id: int | None = None,
    ) -> dict[str, str]:
        host = environment.host_name(spec.subdomain, self.config.project.zone)
        url = f"http://{host}:{self.edge_port}/" if self.edge_port else f"http://{host}/"
        db = envtemplate.database_facts(given.vars.get("DATABASE_URL"))
        facts = {
            **db, "port": str(port), "release": release.name, "commit": release.commit,
            "environment": environment.name, "service": spec.name, "url": url,
        }  # fmt: skip
        # Declared only: nothing of the environment branchline itself runs with.
        env = self.sandbox.base_env()
        env.update(envtemplate.render(spec.env, facts, service=spec.name))
        env.update(given.vars)
        env.update(given.secrets)
        if db:
            env.update(
                DATABASE_URL=db["db.uri"], PGHOST=db["db.host"], PGPORT=db["db.port"],
                PGUSER=db["db.user"], PGPASSWORD=db["db.password"], PGDATABASE=db["db.name"],
            )  # fmt: skip
        env.update(
            PORT=str(port), BRANCHLINE_RELEASE=release.name, BRANCHLINE_COMMIT=release.commit,
            BRANCHLINE_ENVIRONMENT=environment.name, BRANCHLINE_SERVICE=spec.name,
            BRANCHLINE_PROJECT=self.project, BRANCHLINE_STATE=str(self.state_dir),
            BRANCHLINE_DEPLOYMENT=str(deployment_id or ""),
        )  # fmt: skip
        return env

    async def _retire(self, old: list[rows.DeploymentRow], status: str = "stopped") -> None:
        """Let in-flight requests finish on the old process, then stop it."""
        await asyncio.sleep(self.drain)
        for deployment in old:
            pid = processes.recorded(deployment.detail)
            if pid is not None:
                await asyncio.to_thread(processes.stop, pid)
            async with self.store.connect() as conn:
                await rows.update_deployment(
                    conn, deployment.id, status=status, detail={"stopped_at": _now()}
                )

    async def trial(
        self,
        service: str,
        environment: Environment,
        release: Release,
        env: DeploymentEnv,
        *,
        retries: int = 4,
    ) -> HealthResult:
        """Start `release` with `vars` (another database, say) on a free port, check its
        health, stop it: no route, no deployment. The production pipeline asks this of
        the live release against a migrated copy, before migrating for real. Few
        retries: that release is known to start, so a failure is not a slow warm-up."""
        spec = self._service(service)
        port = free_port()
        variables = self._env(spec, environment, release, port, env)
        variables["BRANCHLINE_TRIAL"] = "1"  # reconcile leaves a running trial alone
        log = self.state_dir / "trials" / f"{spec.name}-{release.id}-{port}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        pid = await asyncio.to_thread(self._launch, spec, release, variables, log)
        try:
            return await self._health(spec, port, release, pid, 0, retries)
        finally:
            await asyncio.shield(asyncio.to_thread(processes.stop, pid, grace=2.0))

    async def rollback(
        self, service: str, environment: Environment, to: int | None = None
    ) -> Deployment:
        """Back to the release before the live one (or release id `to`), blue-green,
        with the environment's current DeploymentEnv."""
        self._service(service)
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
            target = await self._rollback_target(conn, history, live, service, to)
        deployment = await self._deploy(
            service, environment, target, await self.environment_of(environment),
            retire_as="rolled_back",
        )  # fmt: skip
        async with self.store.connect() as conn:
            await rows.update_deployment(conn, live.id, detail={"rolled_back_to": deployment.id})
        return deployment

    async def _rollback_target(
        self,
        conn: Conn,
        history: list[rows.DeploymentRow],
        live: rows.DeploymentRow,
        service: str,
        to: int | None,
    ) -> Release:
        if to is not None:
            chosen = await rows.get_release(conn, to)
            if chosen is None or chosen.service != service or chosen.status != "ready":
                raise UsageError(
                    f"release {to} is not an available release of {service}",
                    hint=f"See `branchline releases list {service}`.",
                )
            return _release(chosen)
        for earlier in history:
            if (
                earlier.id < live.id
                and earlier.release_id != live.release_id
                and (earlier.status in ("stopped", "rolled_back", "draining"))
            ):
                found = await rows.get_release(conn, earlier.release_id)
                if found is not None and found.status == "ready":
                    return _release(found)
        raise UsageError(
            f"{service} has no earlier release in this environment to roll back to",
            hint=f"Deploy a release explicitly: `branchline deploy {service} --commit SHA`.",
        )

    async def delete(self, service: str, environment: Environment) -> bool:
        """Stop and remove every deployment of the service in the environment."""
        where = environment.name
        async with self._locked(f"deploy:{service}:{where}") as conn:
            running = await rows.deployments(
                conn, self.project, environment=where, service=service, statuses=STOPPABLE
            )
            await resources.record(
                conn, self.project, "deployment", f"{service}:{where}", "deleting"
            )
            await routes.delete_routes(conn, project=self.project, environment=where,
                                       service=service)  # fmt: skip
            for deployment in running:
                pid = processes.recorded(deployment.detail)
                if pid is not None:
                    await asyncio.to_thread(processes.stop, pid, grace=2.0)
                await rows.update_deployment(conn, deployment.id, status="stopped")
            await resources.record(
                conn, self.project, "deployment", f"{service}:{where}", "deleted"
            )
        return bool(running)

    async def list_deployments(self, environment: Environment | None = None) -> list[Deployment]:
        where = environment.name if environment is not None else None
        async with self.store.connect() as conn:
            found = await rows.deployments(conn, self.project, environment=where)
            built = await rows.releases_by_id(conn, sorted({d.release_id for d in found}))
        return [self._to_deployment(d, built[d.release_id]) for d in found]

    def log_path(self, environment: Environment, service: str, deployment_id: int) -> Path:
        return self.state_dir / "deployments" / environment.name / service / f"{deployment_id}.log"

    async def logs(
        self, service: str, environment: Environment, *, since: datetime | None = None,
        follow: bool = False,
    ) -> AsyncIterator[str]:  # fmt: skip
        """The output files of the latest deployment (or of every one since `since`),
        in order; with `follow`, what the last one gains until cancelled."""
        found = [
            d for d in await self.list_deployments(environment)
            if d.service == service and (since is None or d.created_at >= since)
        ]  # fmt: skip
        if not found:
            raise UsageError(
                f"{service} has no deployment in {environment.name}",
                hint="See `branchline deployments list`.",
            )
        files = [Path(str(d.detail["log"])) for d in reversed(found) if "log" in d.detail]
        if since is None:
            files = files[-1:]
        offset = 0
        for path in files:
            text, offset = await asyncio.to_thread(_read_from, path, 0)
            if text:
                yield text
        while follow and files:
            text, offset = await asyncio.to_thread(_read_from, files[-1], offset)
            if text:
                yield text
            else:
                await asyncio.sleep(FOLLOW_POLL)

    # -- supervision ------------------------------------------------------------

    async def supervise(self) -> list[str]:
        """Restart live services whose process is gone (with backoff), record the crash.
        Live processes that still run are adopted as they are, never duplicated."""
        restarted = []
        async with self.store.connect() as conn:
            live = await rows.deployments(conn, self.project, statuses=LIVE)
        for deployment in live:
            pid = processes.recorded(deployment.detail)
            if pid is not None and pid.alive():
                continue
            if await self.adopt(deployment):
                continue  # its process runs: started by a supervisor that died before saying so
            if not self._due(deployment.detail):
                continue
            # Under the deploy's own lock, and only if it is still live: a deploy,
            # rollback or delete of the service may be stopping this very process.
            key = f"deploy:{deployment.service}:{deployment.environment}"
            async with locks.if_free(self.store, self._lock_key(key)) as conn:
                if conn is None:
                    continue  # being deployed or stopped right now
                current = await rows.get_deployment(conn, deployment.id)
                if current is None or current.status != "live":
                    continue
                recorded = processes.recorded(current.detail)
                if recorded is not None and recorded.alive():
                    continue
                if recorded is not None:
                    # Its first process is gone, but what it started may still run (a
                    # sandbox's own processes, a server's workers): all of it goes
                    # first, or the new one would find its port taken.
                    await asyncio.to_thread(processes.stop, recorded, grace=2.0)
                await self._restart(current)
            restarted.append(f"{deployment.service}:{deployment.environment}")
        return restarted

    async def adopt(self, deployment: rows.DeploymentRow) -> bool:
        """Record a running process started for `deployment` but never recorded."""
        found = await asyncio.to_thread(processes.find_by_env, {
            "BRANCHLINE_STATE": str(self.state_dir), "BRANCHLINE_DEPLOYMENT": str(deployment.id),
        })  # fmt: skip
        if found is None:
            return False
        async with self.store.connect() as conn:
            await rows.update_deployment(
                conn, deployment.id, detail={"pid": found.pid, "start_time": found.start_time}
            )
        return True

    # -- reconciling -----------------------------------------------------------

    async def reconcile(self, *, dry_run: bool = False) -> list[Finding]:
        """Compute's own leftovers: deploys nobody finishes, retired releases still
        running, processes no deployment knows (or knows but never recorded), and
        routes that point at a deployment that is not live."""
        found = await self._interrupted_deployments(dry_run)
        found += await self._stray_processes(dry_run)
        found += await self._stale_routes(dry_run)
        return found

    async def _interrupted_deployments(self, dry_run: bool) -> list[Finding]:
        found = []
        async with self.store.connect() as conn:
            rows_found = await rows.deployments(
                conn, self.project, statuses=("starting", "draining")
            )
        for row in rows_found:
            key = f"branchline:compute:{self.project}:deploy:{row.service}:{row.environment}"
            async with locks.if_free(self.store, key) as conn:
                if conn is None:
                    continue  # a deploy of this service is running right now
                if row.status == "draining" and time.time() - row.updated_at.timestamp() < 30:
                    continue  # being retired by the deploy that replaced it
                target = f"{row.service} in {row.environment} (deployment {row.id})"
                reason = (
                    "its deploy was interrupted" if row.status == "starting" else "left draining"
                )
                finding = Finding("deployment", target, "stop", reason)
                if not dry_run:
                    pid = processes.recorded(row.detail)
                    if pid is not None:
                        await asyncio.to_thread(processes.stop, pid, grace=2.0)
                    await rows.update_deployment(
                        conn, row.id, status="failed" if row.status == "starting" else "stopped"
                    )
                    finding.done = True
                found.append(finding)
        return found

    async def service_processes(self) -> list[tuple[int, dict[str, str], float]]:
        """(pid, environment, age in seconds) of every process this branchline started
        for the project: matched by its environment (BRANCHLINE_STATE and project),
        never by command line, so two state directories never take each other's."""
        return await asyncio.to_thread(
            processes.started_for, {"BRANCHLINE_PROJECT": self.project,
                                    "BRANCHLINE_STATE": str(self.state_dir)}
        )  # fmt: skip

    async def _stray_processes(self, dry_run: bool) -> list[Finding]:
        async with self.store.connect() as conn:
            running = await rows.deployments(conn, self.project, statuses=RUNNING)
        known = {int(r.detail["pid"]) for r in running if "pid" in r.detail}
        by_id = {r.id: r for r in running}
        found = []
        for pid, env, age in await self.service_processes():
            if pid in known:
                continue
            owner = by_id.get(int(env.get("BRANCHLINE_DEPLOYMENT") or 0))
            recorded = processes.recorded(owner.detail) if owner is not None else None
            if owner is not None and (recorded is None or not recorded.alive()):
                # Started for a live deployment whose recorded process is gone: its
                # starter died before recording it. Adopt it rather than start another.
                finding = Finding(
                    "process", f"pid {pid} ({owner.service} in {owner.environment})",
                    "adopt", "started for its deployment, never recorded",
                )  # fmt: skip
                if not dry_run and await self.adopt(owner):
                    finding.done = True
                found.append(finding)
                continue
            trial = env.get("BRANCHLINE_TRIAL") == "1"
            if age < (TRIAL_AGE if trial else STRAY_AGE):
                continue
            what = (
                f"{env.get('BRANCHLINE_SERVICE', '?')} in {env.get('BRANCHLINE_ENVIRONMENT', '?')}"
            )
            finding = Finding("process", f"pid {pid} ({what})", "stop", "no deployment knows it")
            if not dry_run:
                started = processes.start_time_of(pid)
                if started is not None:
                    await asyncio.to_thread(
                        processes.stop, processes.ProcessId(pid, started), grace=2.0
                    )
                finding.done = True
            found.append(finding)
        return found

    async def _stale_routes(self, dry_run: bool) -> list[Finding]:
        found = []
        async with self.store.connect() as conn:
            live = {
                (d.service, d.environment): d
                for d in await rows.deployments(conn, self.project, statuses=LIVE)
            }
            for route in await routes.list_routes(conn, self.project):
                current = live.get((route.service, route.environment))
                if current is not None and route.deployment_id == current.id:
                    continue
                if current is not None and "port" in current.detail:
                    finding = Finding(
                        "route", route.host, "point at the live deployment",
                        f"it pointed at deployment {route.deployment_id}",
                    )  # fmt: skip
                    if not dry_run:
                        await routes.set_route(
                            conn, host=route.host, project=self.project,
                            environment=route.environment, service=route.service,
                            port=int(current.detail["port"]), deployment_id=current.id,
                        )  # fmt: skip
                        finding.done = True
                else:
                    finding = Finding("route", route.host, "remove", "no live deployment behind it")
                    if not dry_run:
                        await routes.delete_route(conn, route.host)
                        finding.done = True
                found.append(finding)
        return found

    def _due(self, detail: Mapping[str, Any]) -> bool:
        crashes = int(detail.get("crashes", 0))
        last = float(detail.get("last_crash_at", 0.0))
        return time.time() >= last + min(2.0**crashes * 0.5, 60.0)

    async def _restart(self, deployment: rows.DeploymentRow) -> None:
        spec = self._service(deployment.service)
        async with self.store.connect() as conn:
            found = await rows.get_release(conn, deployment.release_id)
        assert found is not None
        release = _release(found)
        port = int(deployment.detail["port"])
        environment = Environment.parse(deployment.environment)
        given = await self.environment_of(environment)
        env = self._env(spec, environment, release, port, given, deployment.id)
        log = Path(deployment.detail["log"])
        await asyncio.to_thread(
            _append, log, f"\n[branchline] process exited; restarting at {_now()}\n"
        )
        pid = await asyncio.to_thread(self._launch, spec, release, env, log)
        async with self.store.connect() as conn:
            await rows.update_deployment(
                conn, deployment.id,
                detail={"pid": pid.pid, "start_time": pid.start_time,
                        "crashes": int(deployment.detail.get("crashes", 0)) + 1,
                        "last_crash_at": time.time()},
            )  # fmt: skip

    async def aclose(self) -> None:
        """Finish draining old processes before the command exits."""
        pending, self._background = self._background, []
        for task in pending:
            with contextlib.suppress(BranchlineError, OSError):
                await task
        if self._http is not None and self._http[0] is asyncio.get_running_loop():
            await self._http[1].aclose()
        self._http = None

    # -- internals ------------------------------------------------------------

    async def _deployment(self, deployment_id: int) -> Deployment:
        async with self.store.connect() as conn:
            row = await rows.get_deployment(conn, deployment_id)
            assert row is not None
            release = await rows.get_release(conn, row.release_id)
        assert release is not None
        return self._to_deployment(row, release)

    def _to_deployment(self, row: rows.DeploymentRow, release: rows.ReleaseRow) -> Deployment:
        host = row.detail.get("host")
        url = None
        if host:
            url = f"http://{host}:{self.edge_port}/" if self.edge_port else f"http://{host}/"
        return Deployment(
            id=row.id, service=row.service, environment=Environment.parse(row.environment),
            release=_release(release), status=row.status, url=url, created_at=row.created_at,
            detail={k: v for k, v in row.detail.items()
                    if k not in ("vars", "var_names", "secret_names")},
        )  # fmt: skip

    def _launch(
        self, spec: ServiceConfig, release: Release, env: Mapping[str, str], log: Path
    ) -> processes.ProcessId:
        """Start `release` of `spec` in the sandbox: its release directory read-only,
        outliving this process (the next supervisor adopts it). The variables that
        find it again (BRANCHLINE_STATE) stay with the sandbox, not the service."""
        self.sandbox.check()
        tree = Path(release.location) / "tree"
        service_dir = tree / spec.path
        box = Box(readable=(tree,), with_parent=False, unset=SANDBOX_ONLY)
        argv = self.sandbox.wrap(spec.run, box, cwd=service_dir)
        return processes.start(argv, cwd=service_dir, env=env, log=log)

    def _locked(self, what: str) -> contextlib.AbstractAsyncContextManager[Conn]:
        return locks.held(self.store, self._lock_key(what))

    def _lock_key(self, what: str) -> str:
        return f"branchline:compute:{self.project}:{what}"


def _release(row: rows.ReleaseRow) -> Release:
    return Release(
        id=row.id, service=row.service, commit=row.commit_sha, build_number=row.build_number,
        location=row.location or "", created_at=row.created_at,
    )  # fmt: skip


def _read_from(path: Path, offset: int) -> tuple[str, int]:
    """What `path` holds past `offset`, and the new offset."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return "", offset
    return data.decode(errors="replace"), offset + len(data)


def _append(path: Path, text: str) -> None:
    with processes.private_log(path) as fh:
        fh.write(text.encode())


def _tail(log: Path) -> str:
    try:
        text = log.read_bytes()[-LOG_TAIL:].decode(errors="replace").strip()
    except OSError:
        return "(no log)"
    return " | ".join(text.splitlines()[-5:]) or "(empty)"


def _now() -> str:
    return datetime.now(UTC).isoformat()
