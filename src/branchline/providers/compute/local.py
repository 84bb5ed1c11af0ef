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
import copy
import dataclasses
import os
import secrets
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from branchline import processes
from branchline.config import Config, ServiceConfig
from branchline.config.limits import human_duration
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
    runtimes,
)
from branchline.providers.compute.deploying import LIVE, deploying, shown_detail
from branchline.providers.reconciling import Finding
from branchline.sandbox import Box, Sandbox
from branchline.store import Store, locks, resources, routes
from branchline.store import compute as rows
from branchline.store.queries import Conn

if TYPE_CHECKING:
    import httpx

RUNNING = ("starting", "live", "draining", "stopping")
# What delete stops: also failed deploys, whose process an interruption may have left.
STOPPABLE = (*RUNNING, "failed")
LOG_TAIL = 2000
# seconds: a process this young, its deploy under way, may be about to be recorded
STRAY_AGE = 10.0
TRIAL_AGE = 300.0  # a pre-flight trial older than this outlived its rollout
# How long a stopped service may take to shut down (finish its requests, close its
# connections) before it is killed.
SHUTDOWN_GRACE = 5.0
FOLLOW_POLL = 0.2  # how often a followed log is read again (a file has nothing to wait on)
# Kept on the sandbox process (how reconcile and the supervisor find a service), never
# handed to the service: a path into branchline's state.
SANDBOX_ONLY = ("BRANCHLINE_STATE",)
# How branchline finds a service's processes again (and its port): never one of the
# service's own variables (a worker's bindings).
FINDING = ("BRANCHLINE_STATE", "BRANCHLINE_PROJECT", "BRANCHLINE_DEPLOYMENT", "PORT")
READY = ".branchline-ready"  # in a dependency install that finished
RELEASE_TIMEOUT = 600.0  # seconds a service's `release` command may take


async def _nothing(_environment: Environment) -> DeploymentEnv:
    return DeploymentEnv()


@dataclasses.dataclass
class _Shared:
    """What every view of one provider shares (`with_config` makes views): the
    background work to finish and the health checks' HTTP client."""

    background: list[asyncio.Task[None]] = dataclasses.field(default_factory=list)
    http: tuple[asyncio.AbstractEventLoop, httpx.AsyncClient] | None = None


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
        self.shutdown_grace = SHUTDOWN_GRACE
        self.keep_releases = keep_releases
        self.environment_of = environment or _nothing
        # Builds and services are code from a branch: boxed, unless configured off.
        self.sandbox = sandbox or Sandbox.configure(
            enabled=False, protected=(state_dir,),
            path=os.environ.get("PATH", os.defpath).split(os.pathsep),
        )  # fmt: skip
        self._shared = _Shared()

    def with_config(self, config: Config) -> LocalComputeProvider:
        """This provider building and deploying services as `config` defines them."""
        view = copy.copy(self)
        view.config = config
        return view

    def _client(self) -> httpx.AsyncClient:
        """One HTTP client for every health check (building one costs ~40 ms of CPU on
        the event loop); per event loop, since a client cannot change loops. No
        keep-alive: an idle connection would hold a service's handler thread open."""
        import httpx  # here: commands that only read do not load it

        loop = asyncio.get_running_loop()
        shared = self._shared
        if shared.http is None or shared.http[0] is not loop:
            client = httpx.AsyncClient(
                follow_redirects=False, trust_env=False,
                limits=httpx.Limits(max_keepalive_connections=0),
            )  # fmt: skip
            shared.http = (loop, client)
        return shared.http[1]

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

    async def _spec_of(self, release: Release) -> ServiceConfig:
        """The service as its release's commit defined it (its run command, health
        path, variables): a rollback or a restart runs what was built, whatever the
        config says now. Releases built before specs were recorded use the config."""
        current = self.config.services.get(release.service)
        location = Path(release.location)
        recorded = await asyncio.to_thread(releases.recorded_spec, location, current)
        return recorded or self._service(release.service)

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
        service_dir = releases.export_tree(
            self.repo, commit, spec.path, location / "tree", spec.include
        )
        releases.record_spec(location, spec, frozenset(self.config.secret_values()))
        tree = location / "tree"
        steps = runtimes.runtime_of(spec).build_steps(spec, service_dir, location)
        if spec.deps or steps:
            self.sandbox.check()
            # The install and the build write into the release.
            for writable in (tree, *(w for step in steps for w in step.writable)):
                self.sandbox.hand_over(writable)
        if spec.deps:
            self._install_deps(spec, commit, service_dir, tree)
        for number, step in enumerate(steps):
            box = Box(writable=(tree, *step.writable), readable=step.readable)
            argv = self.sandbox.wrap(step.argv, box, cwd=service_dir)
            env = {**self.sandbox.base_env(own=service_dir), **step.env,
                   "BRANCHLINE_COMMIT": commit, "BRANCHLINE_SERVICE": spec.name}  # fmt: skip
            log = location / ("build.log" if number == 0 else f"build-{number + 1}.log")
            releases.run_build(argv, service_dir, log, env)
        _deps_of(spec, service_dir, self.state_dir)  # the build left the link as it was

    def _install_deps(
        self, spec: ServiceConfig, commit: str, service_dir: Path, tree: Path
    ) -> None:
        """The service's dependencies: installed once per content of its lock files
        (into a directory of their own, where a virtualenv's absolute paths stay
        true), then linked into the release."""
        assert spec.deps is not None
        key = releases.deps_key(service_dir, spec.deps.lock, spec.deps.install)
        cache = self.state_dir / "deps" / spec.name / key
        with releases.deps_locked(cache):
            if not (cache / READY).exists():
                releases.remove(cache)  # an install that was interrupted
                cache.mkdir(parents=True)
                self.sandbox.hand_over(cache)
                argv = self.sandbox.wrap(
                    list(spec.deps.install), Box(writable=(tree, cache)), cwd=service_dir
                )
                env = {**self.sandbox.base_env(own=service_dir), "DEPS": str(cache),
                       "BRANCHLINE_COMMIT": commit, "BRANCHLINE_SERVICE": spec.name}  # fmt: skip
                try:
                    releases.run_build(
                        argv, service_dir, tree.parent / "deps.log", env, what="deps"
                    )
                except BaseException:
                    releases.remove(cache)
                    raise
                (cache / READY).touch()
        link = service_dir / spec.deps.link
        if link.is_dir() and not link.is_symlink():
            releases.remove(link)  # a committed `.venv`: the install replaces it
        elif link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(cache, target_is_directory=True)

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
        spec = await self._spec_of(release)
        where = environment.name
        host = environment.host_name(spec.subdomain, self.config.project.zone)
        # Names only: the values (a password in DATABASE_URL, the secrets) are asked for
        # again whenever the service starts.
        detail = {"var_names": sorted(env.vars), "secret_names": sorted(env.secrets),
                  "host": host}  # fmt: skip
        async with (
            self._locked(f"deploy:{service}:{where}") as conn,
            deploying(
                conn, self.project, service, where, release.id, detail, retire_as="draining"
            ) as made,  # fmt: skip
        ):
            deployment_id, previous = made.deployment_id, made.previous
            if spec.release:
                await self._release_phase(spec, environment, release, env, deployment_id)
            port, _pid, result = await self._start_healthy(
                spec, environment, release, env, deployment_id, position
            )
            # The switch: one row update, picked up by the edge through NOTIFY.
            await routes.set_route(
                conn, host=host, project=self.project, environment=where,
                service=service, port=port, deployment_id=deployment_id,
            )  # fmt: skip
            made.healthy(result)
        if previous:
            task = asyncio.create_task(self._retire(previous, retire_as))
            self._shared.background.append(task)
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
        log = self.log_path(environment, spec.name, deployment_id)
        log.parent.mkdir(parents=True, exist_ok=True)
        launch = await asyncio.to_thread(
            self._process, spec, environment, release, port, env, deployment_id
        )
        pid = await asyncio.to_thread(self._launch, spec, release, launch, log, f"d{deployment_id}")
        try:
            async with self.store.connect() as conn:
                await rows.update_deployment(
                    conn, deployment_id, detail={**_recorded(pid), "port": port, "log": str(log)}
                )
            result = await self._health(spec, environment, port, release, pid, position)
        except BaseException:
            # Interrupted (Ctrl-C, a store error): the new process must not linger.
            await asyncio.shield(asyncio.to_thread(processes.stop, pid, grace=2.0))
            raise
        if not result.healthy:
            await asyncio.to_thread(processes.stop, pid, grace=2.0)
            # The log may print the connection URL or a secret: mask before showing.
            shown = mask(mask_url(_tail(log)), env.sensitive)
            # So may the answers' bodies (an error page quoting its settings).
            health = _masked(result.as_dict(), env.sensitive)
            async with self.store.connect() as conn:
                await rows.update_deployment(conn, deployment_id, detail={"health": health})
            raise UnhealthyError(
                f"{spec.name} ({release.name}) in {environment.name} did not become healthy: "
                f"{result.verdict}",
                hint=f"The old release keeps serving. Its log ends: {shown}",
                health=health,
            )
        return port, pid, result

    async def _health(
        self,
        spec: ServiceConfig,
        environment: Environment,
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
            self._listening_then_healthy(
                spec, port, release, policy, position, self._public_host(spec, environment)
            )
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

    def _public_host(self, spec: ServiceConfig, environment: Environment) -> str:
        """The Host header users' requests carry through the edge (`web.<zone>:8080`)."""
        host = environment.host_name(spec.subdomain, self.config.project.zone)
        return f"{host}:{self.edge_port}" if self.edge_port not in (None, 80) else host

    async def _listening_then_healthy(
        self, spec: ServiceConfig, port: int, release: Release, policy: HealthPolicy,
        position: int, host: str,
    ) -> HealthResult:  # fmt: skip
        """Wait (cheaply, every 10 ms) until the new process accepts connections, then
        run the health check: its exponential backoff is for a service that answers
        but is not ready, and would make a service listening at 0.34 s wait to 0.77 s.
        The check names the public host, as users' requests do: a release that
        refuses its own host name (Django's ALLOWED_HOSTS) fails it."""
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
            host_header=host,
        )

    def _process(
        self,
        spec: ServiceConfig,
        environment: Environment,
        release: Release,
        port: int,
        given: DeploymentEnv,
        deployment_id: int | None = None,
        command: Sequence[str] | None = None,
        workdir: Path | None = None,
    ) -> runtimes.Launch:
        """The service's command (what its runtime serves it with, or `command`: its
        release phase) and environment: declared values only, with the deployment's
        facts filled into `{{ placeholders }}`. `workdir`: where the runtime may write
        files for this start (default: beside the deployment's log)."""
        facts = self._facts(spec, environment, release, port, given)
        host, db = facts["host"], envtemplate.database_facts(given.vars.get("DATABASE_URL"))
        # Declared only: nothing of the environment branchline itself runs with.
        service_dir = Path(release.location) / "tree" / spec.path
        base = self.sandbox.base_env(own=service_dir)
        env = dict(base)
        if spec.deps:  # its dependencies' tools before anything else
            env["PATH"] = os.pathsep.join([str(service_dir / spec.deps.link / "bin"), env["PATH"]])
        env.update(envtemplate.render(spec.env, facts, service=spec.name))
        env.update(given.vars)
        env.update(given.secrets)
        if db:
            env.update(
                DATABASE_URL=db["db.uri"], PGHOST=db["db.host"], PGPORT=db["db.port"],
                PGUSER=db["db.user"], PGPASSWORD=db["db.password"], PGDATABASE=db["db.name"],
            )  # fmt: skip
        env.update(envtemplate.identity(
            project=self.project, service=spec.name, environment=environment.name,
            release=release.name, commit=release.commit, host=host,
        ))  # fmt: skip
        env.update(
            PORT=str(port), BRANCHLINE_STATE=str(self.state_dir),
            BRANCHLINE_DEPLOYMENT=str(deployment_id or ""),
        )  # fmt: skip
        if command is not None:
            return runtimes.Launch(envtemplate.render_args(command, facts, service=spec.name), env)
        # The service's own variables: what it was given, not what every program from a
        # branch gets (PATH, HOME) nor what finds it again.
        own = [k for k in env if k not in FINDING and k not in base]
        if workdir is None:
            log = self.log_path(environment, spec.name, deployment_id or 0)
            workdir = log.with_name(f"{log.stem}.{spec.runtime}")
        return runtimes.runtime_of(spec).launch(
            spec, Path(release.location), facts=facts, env=env, own=own, port=port,
            workdir=workdir,
        )  # fmt: skip

    def _facts(
        self, spec: ServiceConfig, environment: Environment, release: Release, port: int,
        given: DeploymentEnv,
    ) -> dict[str, str]:  # fmt: skip
        """What `{{ placeholders }}` of a service's commands and variables stand for."""
        host = environment.host_name(spec.subdomain, self.config.project.zone)
        url = f"http://{host}:{self.edge_port}/" if self.edge_port else f"http://{host}/"
        db = envtemplate.database_facts(given.vars.get("DATABASE_URL"))
        return {
            **db, "port": str(port), "release": release.name, "commit": release.commit,
            "environment": environment.name, "service": spec.name, "url": url, "host": host,
        }  # fmt: skip

    async def _release_phase(
        self, spec: ServiceConfig, environment: Environment, release: Release,
        given: DeploymentEnv, deployment_id: int,
    ) -> None:  # fmt: skip
        """Run the service's `release` command once for this deploy, before the new
        release starts: boxed like the service, with its variables and secrets, its
        output in the deployment's log. A failure stops the deploy."""
        assert spec.release is not None
        launch = self._process(
            spec, environment, release, 0, given, deployment_id, command=spec.release
        )
        argv, env = launch.argv, launch.env
        for name in (*SANDBOX_ONLY, "PORT"):  # it listens on nothing; it is not found again
            env.pop(name, None)
        log = self.log_path(environment, spec.name, deployment_id)
        log.parent.mkdir(parents=True, exist_ok=True)
        files = Path(release.location) / "tree"
        service_dir = files / spec.path
        readable = (files, *await asyncio.to_thread(_deps_of, spec, service_dir, self.state_dir))
        boxed = self.sandbox.wrap(argv, Box(readable=readable), cwd=service_dir)
        await asyncio.to_thread(_append, log, f"[branchline] release: {' '.join(argv)}\n")
        code = await _run_logged(boxed, service_dir, env, log, RELEASE_TIMEOUT)
        if code != 0:
            shown = mask(mask_url(_tail(log)), given.sensitive)
            raise BranchlineError(
                f"the release command of {spec.name} ({release.name}) in {environment.name} "
                f"failed ({'timed out' if code is None else f'exit code {code}'})",
                hint=f"The old release keeps serving. Its output ends: {shown}",
            )

    async def _retire(self, old: list[rows.DeploymentRow], status: str = "stopped") -> None:
        """Let in-flight requests finish on the old process, then stop it."""
        await asyncio.sleep(self.drain)
        for deployment in old:
            pid = processes.recorded(deployment.detail)
            if pid is not None:
                await asyncio.to_thread(processes.stop, pid)
            await asyncio.to_thread(_forget_start_files, deployment.detail)
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
        spec = await self._spec_of(release)
        port = free_port()
        log = self.state_dir / "trials" / f"{spec.name}-{release.id}-{port}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        workdir = log.with_suffix(f".{spec.runtime}")
        launch = await asyncio.to_thread(
            self._process, spec, environment, release, port, env, None, None, workdir
        )
        launch.env["BRANCHLINE_TRIAL"] = "1"  # reconcile leaves a running trial alone
        pid = await asyncio.to_thread(self._launch, spec, release, launch, log, "trial")
        try:
            return await self._health(spec, environment, port, release, pid, 0, retries)
        finally:
            await asyncio.shield(asyncio.to_thread(processes.stop, pid, grace=2.0))
            await asyncio.to_thread(releases.remove, workdir)

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
            hint=f"Deploy a release explicitly: `branchline deploy {service} --env "
            f"{live.environment} --commit SHA`.",
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
            # Said before any signal: nothing restarts a deployment that is stopping,
            # however long its processes take to go, and a stop cut short here is
            # finished by reconcile.
            for deployment in running:
                await rows.update_deployment(conn, deployment.id, status="stopping")
            for deployment in running:
                pid = processes.recorded(deployment.detail)
                if pid is not None:
                    await asyncio.to_thread(processes.stop, pid, grace=self.shutdown_grace)
                await asyncio.to_thread(_forget_start_files, deployment.detail)
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
            async with locks.if_free(self.store, self._lock_key(key), here=self._lock_dir) as conn:
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
            await rows.update_deployment(conn, deployment.id, detail=_recorded(found))
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
                conn, self.project, statuses=("starting", "draining", "stopping")
            )
        for row in rows_found:
            key = self._lock_key(f"deploy:{row.service}:{row.environment}")
            async with locks.if_free(self.store, key, here=self._lock_dir) as conn:
                if conn is None:
                    continue  # a deploy of this service is running right now
                if row.status == "draining" and time.time() - row.updated_at.timestamp() < 30:
                    continue  # being retired by the deploy that replaced it
                target = f"{row.service} in {row.environment} (deployment {row.id})"
                reason = {
                    "starting": "its deploy was interrupted",
                    "draining": "left draining",
                    "stopping": "its stop was interrupted",
                }[row.status]
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

    async def halt_all(self) -> list[str]:
        """`branchline down`: every service process tree of the project stopped at
        once, found by tree tag (no state database needed); deployments stay as they
        are, so the next `serve` starts the live ones again."""
        found = await self._service_trees()
        await asyncio.gather(*(
            asyncio.to_thread(processes.stop, tree.first, grace=self.shutdown_grace)
            for tree in found
        ))  # fmt: skip
        return sorted(
            f"{t.env.get('BRANCHLINE_SERVICE', '?')} in {t.env.get('BRANCHLINE_ENVIRONMENT', '?')}"
            for t in found
        )

    async def service_processes(self) -> list[tuple[int, dict[str, str], float]]:
        """(pid, environment, age in seconds) of the first process of every service
        this branchline started for the project: found by the tree tag every process
        of a service carries (or, for services started before tags, by
        BRANCHLINE_STATE on a group leader), never by command line."""
        return [(t.first.pid, t.env, t.age) for t in await self._service_trees()]

    async def _service_trees(self) -> list[processes.Tree]:
        def scan() -> list[processes.Tree]:
            found = [
                t for t in processes.trees(processes.tree_prefix(self.state_dir))
                if t.env.get("BRANCHLINE_PROJECT") == self.project
            ]  # fmt: skip
            untagged = processes.started_for(
                {"BRANCHLINE_PROJECT": self.project, "BRANCHLINE_STATE": str(self.state_dir)}
            )
            for pid, env, age in untagged:
                if processes.TREE_VARIABLE not in env:
                    first = processes.ProcessId(pid, processes.start_time_of(pid) or -1)
                    found.append(processes.Tree(f"pid:{pid}", first, env, age, (pid,)))
            return found

        return await asyncio.to_thread(scan)

    async def _stray_processes(self, dry_run: bool) -> list[Finding]:
        async with self.store.connect() as conn:
            running = await rows.deployments(conn, self.project, statuses=RUNNING)
        # A running deployment's tree is its own, whichever of its processes this is:
        # a server's workers, a daemon, a sandbox's inner processes.
        known_trees = {str(r.detail["tree"]) for r in running if r.detail.get("tree")}
        known = {int(r.detail["pid"]) for r in running if "pid" in r.detail}
        by_id = {r.id: r for r in running}
        found = []
        for tree in await self._service_trees():
            if tree.tag in known_trees or tree.first.pid in known:
                continue
            env = tree.env
            owner = by_id.get(int(env.get("BRANCHLINE_DEPLOYMENT") or 0))
            recorded = processes.recorded(owner.detail) if owner is not None else None
            if owner is not None and (recorded is None or not recorded.alive()):
                # Started for a live deployment whose recorded process is gone: its
                # starter died before recording it. Adopt it rather than start another.
                finding = Finding(
                    "process", f"pid {tree.first.pid} ({owner.service} in {owner.environment})",
                    "adopt", "started for its deployment, never recorded",
                )  # fmt: skip
                if not dry_run and await self.adopt(owner):
                    finding.done = True
                found.append(finding)
                continue
            trial = env.get("BRANCHLINE_TRIAL") == "1"
            if trial and tree.age < TRIAL_AGE:
                continue
            if not trial and tree.age < STRAY_AGE and await self._deploying(env):
                continue  # its deploy may be about to record it
            what = (
                f"{env.get('BRANCHLINE_SERVICE', '?')} in {env.get('BRANCHLINE_ENVIRONMENT', '?')}"
            )
            count = f", {len(tree.pids)} processes" if len(tree.pids) > 1 else ""
            finding = Finding(
                "process", f"pid {tree.first.pid} ({what}{count})", "stop",
                "no deployment knows it",
            )  # fmt: skip
            if not dry_run:
                await asyncio.to_thread(processes.stop, tree.first, grace=2.0)
                finding.done = True
            found.append(finding)
        return found

    async def _stale_routes(self, dry_run: bool) -> list[Finding]:
        found = []
        async with self.store.connect() as conn:
            # Routes first, deployments after: a deploy points the route at its new
            # deployment while that is still `starting`, then marks it live; read the
            # other way round, a first deploy's route looked stale in between (and was
            # removed: the service answered 404 until the next deploy).
            listed = await routes.list_routes(conn, self.project)
            live = {
                (d.service, d.environment): d
                for d in await rows.deployments(conn, self.project, statuses=LIVE)
            }
            starting = {d.id for d in await rows.deployments(conn, self.project,
                                                              statuses=("starting",))}  # fmt: skip
            for route in listed:
                current = live.get((route.service, route.environment))
                if current is not None and route.deployment_id == current.id:
                    continue
                if route.deployment_id in starting:
                    continue  # its deploy is under way: it marks it live or undoes it
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
        async with self.store.connect() as conn:
            found = await rows.get_release(conn, deployment.release_id)
        assert found is not None
        release = _release(found)
        spec = await self._spec_of(release)
        port = int(deployment.detail["port"])
        environment = Environment.parse(deployment.environment)
        given = await self.environment_of(environment)
        launch = await asyncio.to_thread(
            self._process, spec, environment, release, port, given, deployment.id
        )
        log = Path(deployment.detail["log"])
        await asyncio.to_thread(
            _append, log, f"\n[branchline] process exited; restarting at {_now()}\n"
        )
        pid = await asyncio.to_thread(self._launch, spec, release, launch, log, f"d{deployment.id}")
        async with self.store.connect() as conn:
            await rows.update_deployment(
                conn, deployment.id,
                detail={**_recorded(pid),
                        "crashes": int(deployment.detail.get("crashes", 0)) + 1,
                        "last_crash_at": time.time()},
            )  # fmt: skip

    async def aclose(self) -> None:
        """Finish draining old processes before the command exits."""
        shared = self._shared
        pending, shared.background = shared.background, []
        for task in pending:
            with contextlib.suppress(BranchlineError, OSError):
                await task
        if shared.http is not None and shared.http[0] is asyncio.get_running_loop():
            await shared.http[1].aclose()
        shared.http = None

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
            detail=shown_detail(row.detail),
        )  # fmt: skip

    def _launch(
        self, spec: ServiceConfig, release: Release, launch: runtimes.Launch, log: Path,
        what: str,
    ) -> processes.ProcessId:  # fmt: skip
        """Start `release` of `spec` in the sandbox under its keeper (which owns the
        service's whole process tree, daemons included): its release directory
        read-only, outliving this process (the next supervisor adopts it). Every
        process of it carries a fresh tree tag (`what`: whose start this is); the
        variables that find it again (BRANCHLINE_STATE) stay outside, with the
        sandbox, never with the service."""
        self.sandbox.check()
        files = Path(release.location) / "tree"
        service_dir = files / spec.path
        readable = (files, processes.KEEPER, *_deps_of(spec, service_dir, self.state_dir),
                    *launch.readable)  # fmt: skip
        box = Box(readable=readable, with_parent=False, unset=SANDBOX_ONLY)
        boxed = self.sandbox.wrap(processes.kept(launch.argv, unset=SANDBOX_ONLY), box,
                                  cwd=service_dir)  # fmt: skip
        tagged = {**launch.env,
                  processes.TREE_VARIABLE: processes.new_tree(self.state_dir, what)}  # fmt: skip
        return processes.start(boxed, cwd=service_dir, env=tagged, log=log)

    def _locked(self, what: str) -> contextlib.AbstractAsyncContextManager[Conn]:
        return locks.held(self.store, self._lock_key(what), here=self._lock_dir)

    async def _deploying(self, env: Mapping[str, str]) -> bool:
        """Whether a deploy of the service `env` names is under way now (its lock is
        held): only then may a young process nobody knows be one about to be
        recorded. With the lock free (its deployer died, or ended), it is a stray."""
        service, where = env.get("BRANCHLINE_SERVICE"), env.get("BRANCHLINE_ENVIRONMENT")
        if not service or not where:
            return True  # not enough to tell: give it its age
        key = self._lock_key(f"deploy:{service}:{where}")
        async with locks.if_free(self.store, key, here=self._lock_dir) as free:
            return free is None

    def _lock_key(self, what: str) -> str:
        return f"branchline:compute:{self.project}:{what}"

    @property
    def _lock_dir(self) -> Path:
        """Deploy locks are held on this machine's disk too: its processes go on when
        the state database dies and Postgres lets the advisory locks go."""
        return self.state_dir / "locks"


def _masked(health: dict[str, Any], sensitive: Iterable[str]) -> dict[str, Any]:
    """A health result whose answers' bodies show no secret of the deployment."""
    values = list(sensitive)
    for attempt in health.get("attempts", ()):
        if attempt.get("body"):
            attempt["body"] = mask(mask_url(attempt["body"]), values)
    return health


def _deps_of(spec: ServiceConfig, service_dir: Path, state_dir: Path) -> tuple[Path, ...]:
    """Where the release's dependency link points (shown read-only in the box): one of
    the service's dependency caches, nothing else. The build ran after the link was
    made, with the tree writable, so it may have pointed the link anywhere (a home
    directory, the state): that release is refused, not shown what the link names."""
    if spec.deps is None:
        return ()
    link = service_dir / spec.deps.link
    if not link.is_symlink():
        return ()
    target = link.resolve()
    caches = (state_dir / "deps" / spec.name).resolve()
    if not target.is_relative_to(caches) or target == caches:
        raise BranchlineError(
            f"the release of {spec.name} has its dependency link {spec.deps.link} pointing "
            "outside branchline's dependency cache (its build changed it)",
            hint=f"Keep the build of {spec.name} from writing {spec.deps.link}; then deploy "
            "a new commit.",
        )
    return (target,)


async def _run_logged(
    argv: list[str], cwd: Path, env: Mapping[str, str], log: Path, timeout: float
) -> int | None:
    """Run to the end with its output appended to `log`; None when it timed out. Past
    `timeout`, or when the calling task is cancelled (the deploy's step was), its
    whole tree is killed: its group and, by tree tag, what left the group."""
    tag = f"release.{secrets.token_hex(6)}"  # not a service's tag: never taken for one
    with processes.private_log(log) as out:
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, cwd=cwd, env={**env, processes.TREE_VARIABLE: tag},
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        except OSError as exc:
            out.write(f"[branchline] cannot run it: {exc.strerror}\n".encode())
            return 127
    try:
        return await asyncio.wait_for(process.wait(), timeout)
    except TimeoutError:
        await _kill_tree(process, tag)
        await asyncio.to_thread(
            _append, log, f"[branchline] release: timed out after {human_duration(timeout)}; "
            "its processes were stopped\n",
        )  # fmt: skip
        return None
    except BaseException:
        await asyncio.shield(_kill_tree(process, tag))
        raise


async def _kill_tree(process: asyncio.subprocess.Process, tag: str) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)

    def tagged() -> None:
        for member, _env in processes.with_environment(f"{processes.TREE_VARIABLE}={tag}"):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(member.pid, signal.SIGKILL)

    await asyncio.to_thread(tagged)
    await process.wait()


def _forget_start_files(detail: Mapping[str, Any]) -> None:
    """What a runtime wrote beside a stopped deployment's log for its starts (a worker's
    config and modules: `<id>.worker/`); the log itself stays."""
    if "log" not in detail:
        return
    log = Path(str(detail["log"]))
    for path in log.parent.glob(f"{log.stem}.*"):
        if path.is_dir() and not path.is_symlink():
            releases.remove(path)


def _recorded(pid: processes.ProcessId) -> dict[str, object]:
    """What a deployment's detail keeps of its process: how to find all of it again."""
    return {"pid": pid.pid, "start_time": pid.start_time, "tree": pid.tree}


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
