"""Fixtures of the protocol contract suites: each provider twice, as its in-memory
fake ("memory") and as the local provider ("local", marked integration), and the
cloud providers on their HTTP fakes ("neon", "github", "cloudflare"), behind a
small adapter that holds the provider and the few backend-specific helpers a
contract needs and the protocol does not give: writing and reading a branch's data,
building a release that does or does not pass its health check, seeing what a
started service was given, opening a pull request, reading comments back.

Every local setup is stopped and removed by a finalizer, also when a test fails.
The costly ones (a root cluster, git repositories, the store) live for the module
or the session; what a test makes on them (branches, deployments) is removed after
it, and each test gets fresh names (environments, projects, branches).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import psycopg
import pytest

from branchline.config import Config, load_config
from branchline.edge.dns_server import ZoneServer
from branchline.environment import Environment
from branchline.fakes.cloudflare import FakeCloudflare
from branchline.fakes.github import FakeGitHub
from branchline.fakes.neon import FakeNeon
from branchline.postgres import Cluster
from branchline.processes import ProcessId, start_time_of, stop
from branchline.providers.compute import ComputeProvider, Deployment, DeploymentEnv, Release
from branchline.providers.compute.local import LocalComputeProvider
from branchline.providers.database import DatabaseProvider
from branchline.providers.database.local import LocalDatabaseProvider
from branchline.providers.database.neon import NeonDatabaseProvider
from branchline.providers.database.neon_api import NeonClient
from branchline.providers.dns import DnsProvider
from branchline.providers.dns.cloudflare import CloudflareDnsProvider, Resolver
from branchline.providers.dns.cloudflare_api import CloudflareDnsClient
from branchline.providers.dns.local import LocalDnsProvider
from branchline.providers.forge import ForgeProvider, PullRequest
from branchline.providers.forge.github import GitHubForge
from branchline.providers.forge.github_api import Credentials, GitHubClient
from branchline.providers.forge.local import LocalForge
from branchline.store import Store
from branchline.store import forge as forge_rows
from tests.cloudflare_zone import FakeZoneServer
from tests.fakes import MemoryCompute, MemoryDatabase, MemoryDns, MemoryForge
from tests.integration.conftest import store_in

T = TypeVar("T")
BACKENDS = ["memory", pytest.param("local", marks=pytest.mark.integration)]
GITHUB_TOKEN = "ghp_contract-test-token-0123456789"  # the fake GitHub's, of no account
CLOUDFLARE_TOKEN = "cf-contract-test-token-0123456789"  # the fake Cloudflare's
ZONE = "contract.test"
SERVICE = "api"
MARK = "CONTRACT_"  # the variables a contract gives a service, and reads back
_serial = itertools.count(1)  # fresh names: environments, projects, git branches


def fresh(prefix: str) -> str:
    return f"{prefix}{next(_serial)}{os.urandom(2).hex()}"


class _Closable(Protocol):
    async def aclose(self) -> None: ...


def run_closing(provider: _Closable, work: Coroutine[Any, Any, T]) -> T:
    """Run provider work as a command does: its background work (refilling a spare,
    draining a retired release) is finished before the event loop ends."""

    async def main() -> T:
        try:
            return await work
        finally:
            await provider.aclose()

    return asyncio.run(main())


def temp_dir(root: Path | None, prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    path.chmod(0o755)  # the unprivileged Postgres user enters cluster homes under it
    return path


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


@pytest.fixture(scope="session")
def contract_store(pg_cluster: Cluster) -> Store:
    """The state database of every local provider here (each under projects of its own)."""
    return store_in(pg_cluster, "bl_contract")


# -- database -------------------------------------------------------------------------


class DatabaseContract:
    """A DatabaseProvider, and a branch's data as key -> value."""

    root = "production"

    def __init__(self, provider: DatabaseProvider) -> None:
        self.provider = provider

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return run_closing(self.provider, work)

    def write(self, branch: str, key: str, value: str) -> None:
        raise NotImplementedError

    def read(self, branch: str) -> dict[str, str]:
        raise NotImplementedError

    def moment(self) -> datetime:
        """A moment after every write so far and before every later one."""
        raise NotImplementedError


class MemoryDatabaseContract(DatabaseContract):
    provider: MemoryDatabase

    def write(self, branch: str, key: str, value: str) -> None:
        self.provider.write(branch, key, value)

    def read(self, branch: str) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.provider.read(branch).items()}

    def moment(self) -> datetime:
        time.sleep(0.002)
        noted = datetime.now(UTC)
        time.sleep(0.002)
        return noted


class LocalDatabaseContract(DatabaseContract):
    """The data is a `kv` table of the branch's database, through psycopg (a local
    cluster's, or a Neon branch's: the fake Neon's are local clusters too)."""

    provider: LocalDatabaseProvider | NeonDatabaseProvider

    def _uri(self, branch: str) -> str:
        return self.run(self.provider.connection_uri(branch))

    def write(self, branch: str, key: str, value: str) -> None:
        with psycopg.connect(self._uri(branch), autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS kv (key text PRIMARY KEY, value text)")
            conn.execute(
                "INSERT INTO kv VALUES (%s, %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def read(self, branch: str) -> dict[str, str]:
        with psycopg.connect(self._uri(branch), autocommit=True) as conn:
            try:
                rows = conn.execute("SELECT key, value FROM kv").fetchall()
            except psycopg.errors.UndefinedTable:
                return {}
        return {str(k): str(v) for k, v in rows}

    def moment(self) -> datetime:
        # Commit timestamps and the server's clock are this machine's: a margin on
        # either side keeps the moment strictly between the writes around it.
        time.sleep(0.2)
        noted = datetime.now(UTC)
        time.sleep(0.2)
        return noted

    def clean(self) -> None:
        """Back to a root alone, with no data: what the next test starts from."""
        for branch in self.run(self.provider.list_branches()):
            if branch.name != self.root:
                self.run(self.provider.delete_branch(branch.name))
        with psycopg.connect(self._uri(self.root), autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS kv")


@pytest.fixture(scope="module")
def local_database_provider(
    contract_store: Store, cluster_root: Path
) -> Iterator[LocalDatabaseProvider]:
    """One root cluster (and its spare) for the module's tests."""
    state = temp_dir(cluster_root, "contract-db-")
    provider = LocalDatabaseProvider(
        project=fresh("contract-db-"), state_dir=state, store=contract_store, database="app"
    )
    try:
        run_closing(provider, provider.init_root())
        yield provider
    finally:
        for home in [*(state / "branches").glob("*"), *(state / "spares").glob("*-*")]:
            Cluster(home).destroy()
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def neon_database_provider(
    contract_store: Store, cluster_root: Path
) -> Iterator[NeonDatabaseProvider]:
    """A fake Neon (real clusters behind Neon's API, every exchange checked against
    Neon's OpenAPI document) for the module's tests, and the Neon provider on it."""
    state = temp_dir(cluster_root, "contract-neon-")
    fake = FakeNeon.start(state, api_key="contract-neon-key")
    client = NeonClient(base_url=fake.url, api_key=fake.api_key, project_id=fake.project_id)
    provider = NeonDatabaseProvider(
        project=fresh("contract-neon-"), store=contract_store, client=client,
        operation_timeout=120.0,
    )  # fmt: skip
    try:
        run_closing(provider, provider.init_root())
        yield provider
        failures = fake.calls()["validation_failures"]
        assert failures == {"request": 0, "response": 0}, fake.calls().get("failures")
    finally:
        fake.stop()
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(params=[*BACKENDS, pytest.param("neon", marks=pytest.mark.integration)])
def database(request: pytest.FixtureRequest) -> Iterator[DatabaseContract]:
    if request.param == "memory":
        yield MemoryDatabaseContract(MemoryDatabase())
        return
    if request.param == "neon":
        neon = LocalDatabaseContract(request.getfixturevalue("neon_database_provider"))
        try:
            yield neon
        finally:
            neon.clean()
        return
    local = LocalDatabaseContract(request.getfixturevalue("local_database_provider"))
    try:
        yield local
    finally:
        local.clean()


# -- compute --------------------------------------------------------------------------

COMPUTE_CONFIG = """\
[project]
name = "contract"
zone = "contract.localhost"

[database]
migrate = "true"

[health]
retries = 2
backoff_base = "100ms"

[services.api]
path = "services/api"
run = ["{python}", "app.py"]
"""

# Answers its commit (the health check asks for it) and every CONTRACT_ variable it
# was started with; /health answers 500 when it is built unhealthy.
APP = """\
import json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HEALTHY = {healthy}

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({{
            "status": "ok", "commit": os.environ["BRANCHLINE_COMMIT"], "version": "{version}",
            "env": {{k: v for k, v in os.environ.items() if k.startswith("{mark}")}},
        }}).encode()
        self.send_response(200 if HEALTHY or self.path != "/health" else 500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


class _Source:
    """The EnvironmentSource a provider is built with: it answers `current`."""

    def __init__(self) -> None:
        self.current = DeploymentEnv()

    async def __call__(self, _environment: Environment) -> DeploymentEnv:
        return self.current


class ComputeContract:
    """A ComputeProvider, releases that pass or fail their health check, and what a
    started service was given."""

    service = SERVICE

    def __init__(self, provider: ComputeProvider, config: Config, source: _Source) -> None:
        self.provider = provider
        self.config = config
        self._source = source
        self.environments: list[Environment] = []

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return run_closing(self.provider, work)

    def environment(self) -> Environment:
        """An environment no test has used."""
        environment = Environment.preview(next(_serial))
        self.environments.append(environment)
        return environment

    def set_source(self, env: DeploymentEnv) -> None:
        """What the EnvironmentSource answers from now on (for rollbacks)."""
        self._source.current = env

    def url_of(self, environment: Environment) -> str:
        spec = self.config.services[self.service]
        return f"http://{environment.host_name(spec.subdomain, self.config.project.zone)}/"

    def release(self, *, healthy: bool = True) -> Release:
        """A built release of a new commit, whose health check passes or fails."""
        raise NotImplementedError

    def seen(self, deployment: Deployment) -> dict[str, str]:
        """The CONTRACT_ variables (and secrets) the deployment's service was started with."""
        raise NotImplementedError

    def serving(self, deployment: Deployment) -> bool:
        raise NotImplementedError


class MemoryComputeContract(ComputeContract):
    provider: MemoryCompute

    def release(self, *, healthy: bool = True) -> Release:
        built = self.run(self.provider.build(self.service, os.urandom(20).hex()))
        if not healthy:
            self.provider.unhealthy.add(built.commit)
        return built

    def seen(self, deployment: Deployment) -> dict[str, str]:
        start = next(
            s for s in reversed(self.provider.starts)
            if (s.service, s.environment, s.release)
            == (deployment.service, deployment.environment, deployment.release.name)
        )  # fmt: skip
        given = {**start.env.vars, **start.env.secrets}
        return {k: v for k, v in given.items() if k.startswith(MARK)}

    def serving(self, deployment: Deployment) -> bool:
        now = next(d for d in self.provider.deployments if d.id == deployment.id)
        return now.status == "live"


class LocalComputeContract(ComputeContract):
    """Releases are commits of a tiny HTTP app in a git repository; what a service
    was given, it answers."""

    provider: LocalComputeProvider

    def __init__(
        self, provider: LocalComputeProvider, config: Config, source: _Source, repo: Path
    ) -> None:
        super().__init__(provider, config, source)
        self.repo = repo

    def release(self, *, healthy: bool = True) -> Release:
        app = self.repo / "services" / SERVICE / "app.py"
        app.parent.mkdir(parents=True, exist_ok=True)
        app.write_text(APP.format(healthy=healthy, version=fresh("v"), mark=MARK))
        git(self.repo, "add", ".")
        git(self.repo, "commit", "-qm", f"healthy={healthy}")
        return self.run(self.provider.build(self.service, git(self.repo, "rev-parse", "HEAD")))

    def seen(self, deployment: Deployment) -> dict[str, str]:
        port = int(deployment.detail["port"])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
            env: dict[str, str] = json.loads(answer.read())["env"]
        return env

    def serving(self, deployment: Deployment) -> bool:
        pid = ProcessId(int(deployment.detail["pid"]), int(deployment.detail["start_time"]))
        return pid.alive()

    def clean(self) -> None:
        for environment in self.environments:
            self.run(self.provider.delete(self.service, environment))


@pytest.fixture(scope="module")
def compute_config() -> Iterator[Config]:
    where = temp_dir(None, "contract-config-")
    try:
        (where / "services" / SERVICE).mkdir(parents=True)  # the config checks it exists
        (where / "branchline.toml").write_text(COMPUTE_CONFIG.format(python=sys.executable))
        yield load_config(where / "branchline.toml", env={})
    finally:
        shutil.rmtree(where, ignore_errors=True)


@pytest.fixture(scope="module")
def local_compute_setup(
    contract_store: Store, cluster_root: Path, compute_config: Config
) -> Iterator[tuple[LocalComputeProvider, _Source, Path]]:
    """One git repository and provider for the module; each test deploys to
    environments of its own, deleted after it."""
    repo = temp_dir(None, "contract-repo-")
    state = temp_dir(cluster_root, "contract-compute-")
    project = compute_config.project.model_copy(update={"name": fresh("contract")})
    config = compute_config.model_copy(update={"project": project})
    source = _Source()
    provider = LocalComputeProvider(
        config=config, store=contract_store, state_dir=state, repo=repo, drain=0.1,
        keep_releases=100, environment=source,
    )  # fmt: skip
    try:
        git(repo, "init", "-q", "-b", "main")
        yield provider, source, repo
    finally:
        # Every deployment was deleted after its test; stop whatever a failure left.
        for pid, _env, _age in run_closing(provider, provider.service_processes()):
            started = start_time_of(pid)
            if started is not None:
                stop(ProcessId(pid, started), grace=2.0)
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(repo, ignore_errors=True)


@pytest.fixture(params=BACKENDS)
def compute(request: pytest.FixtureRequest, compute_config: Config) -> Iterator[ComputeContract]:
    if request.param == "memory":
        source = _Source()
        yield MemoryComputeContract(MemoryCompute(compute_config, source), compute_config, source)
        return
    provider, source, repo = request.getfixturevalue("local_compute_setup")
    source.current = DeploymentEnv()
    local = LocalComputeContract(provider, provider.config, source, repo)
    try:
        yield local
    finally:
        local.clean()


# -- dns ------------------------------------------------------------------------------


class DnsContract:
    zone = ZONE

    def __init__(self, provider: DnsProvider) -> None:
        self.provider = provider

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run(work)


@contextlib.contextmanager
def _zone_server(store: Store) -> Iterator[ZoneServer]:
    server = ZoneServer(fresh("contract-dns-"), ZONE, store)
    try:
        yield server.start()
    finally:
        server.stop()


class CloudflareDnsContract(DnsContract):
    """Work run as a command does: the provider's connections closed at the end."""

    provider: CloudflareDnsProvider

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return run_closing(self.provider, work)


@pytest.fixture(scope="module")
def fake_cloudflare(cluster_root: Path) -> Iterator[tuple[FakeCloudflare, FakeZoneServer]]:
    """A fake Cloudflare holding the contract's zone (every exchange held to
    Cloudflare's documents), and a real DNS server answering that zone from the
    fake's records, for the module's tests."""
    state = temp_dir(cluster_root, "contract-cloudflare-")
    fake = FakeCloudflare.start(state, token=CLOUDFLARE_TOKEN, zones=(ZONE,))
    try:
        with FakeZoneServer(fake, ZONE) as zone_server:
            yield fake, zone_server
        assert fake.calls()["invalid"] == []
    finally:
        fake.stop()
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(params=[*BACKENDS, pytest.param("cloudflare", marks=pytest.mark.integration)])
def dns(request: pytest.FixtureRequest) -> Iterator[DnsContract]:
    """A zone of its own per test; locally a DNS server on a free loopback port; on
    the fake Cloudflare a project of its own, the zone emptied after each test."""
    if request.param == "memory":
        yield DnsContract(MemoryDns(ZONE))
        return
    store: Store = request.getfixturevalue("contract_store")
    if request.param == "cloudflare":
        fake, zone_server = request.getfixturevalue("fake_cloudflare")
        client = CloudflareDnsClient(
            zone_id=fake.zones[ZONE], api_token=CLOUDFLARE_TOKEN, base_url=fake.url
        )
        provider = CloudflareDnsProvider(
            fresh("contract-cf-"), ZONE, store, client,
            resolvers=[Resolver(*zone_server.address)],
        )  # fmt: skip
        try:
            yield CloudflareDnsContract(provider)
        finally:
            empty_zone(client)
        return
    with _zone_server(store) as server:
        yield DnsContract(LocalDnsProvider(server.project, ZONE, store, server.address))


def empty_zone(client: CloudflareDnsClient) -> None:
    """Delete every record of the client's zone, whoever made it."""

    async def work() -> None:
        try:
            for record in await client.list_records():
                await client.delete_record(record.id)
        finally:
            await client.aclose()

    asyncio.run(work())


# -- forge ----------------------------------------------------------------------------


class ForgeContract:
    """A ForgeProvider, how to open a pull request, and what was posted to it."""

    def __init__(self, provider: ForgeProvider) -> None:
        self.provider = provider

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run(work)

    def open_pr(self, branch: str) -> PullRequest:
        """Open a pull request of a new branch (with a commit of its own) into main."""
        raise NotImplementedError

    def comments(self, pr: int) -> list[tuple[str, str]]:
        """(key, body) of every comment on `pr`, by key."""
        raise NotImplementedError

    def status(self, sha: str, context: str) -> str | None:
        raise NotImplementedError

    def issue_state(self, number: int) -> str:
        """open or closed."""
        raise NotImplementedError


class MemoryForgeContract(ForgeContract):
    provider: MemoryForge

    def open_pr(self, branch: str) -> PullRequest:
        number = max(self.provider.prs, default=0) + 1
        return self.provider.open(number, os.urandom(20).hex(), branch)

    def comments(self, pr: int) -> list[tuple[str, str]]:
        return sorted((key, body) for (n, key), body in self.provider.comments.items() if n == pr)

    def status(self, sha: str, context: str) -> str | None:
        found = self.provider.statuses.get((sha, context))
        return found[0] if found else None

    def issue_state(self, number: int) -> str:
        assert 0 < number <= len(self.provider.issues)
        return "closed" if number in self.provider.closed_issues else "open"


class LocalForgeContract(ForgeContract):
    provider: LocalForge

    def open_pr(self, branch: str) -> PullRequest:
        repo = self.provider.repo
        git(repo, "switch", "-q", "-c", branch, "main")
        (repo / f"{branch}.txt").write_text(branch)
        git(repo, "add", ".")
        git(repo, "commit", "-qm", branch)
        git(repo, "switch", "-q", "main")
        opened = self.run(self.provider.open_pr(branch)).pr
        assert opened is not None
        return opened

    def comments(self, pr: int) -> list[tuple[str, str]]:
        async def read() -> list[forge_rows.CommentRow]:
            async with self.provider.store.connect() as conn:
                return await forge_rows.comments(conn, self.provider.project, pr)

        return sorted((row.key, row.body) for row in self.run(read()))

    def status(self, sha: str, context: str) -> str | None:
        async def read() -> list[forge_rows.StatusRow]:
            async with self.provider.store.connect() as conn:
                return await forge_rows.statuses(conn, self.provider.project, sha)

        return next((row.state for row in self.run(read()) if row.context == context), None)

    def issue_state(self, number: int) -> str:
        async def read() -> list[forge_rows.IssueRow]:
            async with self.provider.store.connect() as conn:
                return await forge_rows.issues(conn, self.provider.project, number)

        (row,) = self.run(read())
        return row.state


class GitHubForgeContract(ForgeContract):
    """The GitHub code host against a fake GitHub: pull requests are the fake's, and
    what was posted is read back from it."""

    provider: GitHubForge

    def __init__(self, provider: GitHubForge, fake: FakeGitHub) -> None:
        super().__init__(provider)
        self.fake = fake

    def open_pr(self, branch: str) -> PullRequest:
        sha = os.urandom(20).hex()
        number = self.fake.add_pull(head=branch, sha=sha, base="main", title=branch)
        return PullRequest(number=number, title=branch, head_branch=branch,
                           base_branch="main", head_sha=sha, state="open")  # fmt: skip

    def comments(self, pr: int) -> list[tuple[str, str]]:
        found = []
        for comment in self.fake.state()["comments"]:
            first, _, body = str(comment["body"]).partition("\n")
            if comment["issue"] == pr and first.startswith("<!-- branchline:"):
                found.append((first.removeprefix("<!-- branchline:").removesuffix(" -->"), body))
        return sorted(found)

    def status(self, sha: str, context: str) -> str | None:
        states = [s["state"] for s in self.fake.state()["statuses"]
                  if s["sha"] == sha and s["context"] == context]  # fmt: skip
        return states[-1] if states else None

    def issue_state(self, number: int) -> str:
        return str(self.fake.state()["issues"][str(number)]["state"])


@pytest.fixture
def fake_github(tmp_path: Path) -> Iterator[FakeGitHub]:
    """A repository of its own per test, as the other backends' projects are."""
    fake = FakeGitHub.start(
        tmp_path / "fake-github", repository="acme/contract", token=GITHUB_TOKEN
    )
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture(scope="module")
def forge_repo() -> Iterator[Path]:
    """A git repository with `main`; each test opens pull requests of new branches."""
    repo = temp_dir(None, "contract-forge-")
    try:
        git(repo, "init", "-q", "-b", "main")
        (repo / "README").write_text("contract\n")
        git(repo, "add", ".")
        git(repo, "commit", "-qm", "first")
        yield repo
    finally:
        shutil.rmtree(repo, ignore_errors=True)


@pytest.fixture(params=[*BACKENDS, pytest.param("github", marks=pytest.mark.integration)])
def forge(request: pytest.FixtureRequest) -> ForgeContract:
    """A project of its own per test (its pull requests and issues numbered from 1)."""
    if request.param == "memory":
        return MemoryForgeContract(MemoryForge())
    if request.param == "github":
        fake: FakeGitHub = request.getfixturevalue("fake_github")
        client = GitHubClient(
            repository=fake.repository, credentials=Credentials(token=GITHUB_TOKEN),
            api_url=fake.url, write_interval=0.0,
        )  # fmt: skip
        return GitHubForgeContract(GitHubForge(client), fake)
    return LocalForgeContract(
        LocalForge(
            project=fresh("contract-forge-"),
            store=request.getfixturevalue("contract_store"),
            repo=request.getfixturevalue("forge_repo"),
            production_branch="main",
        )
    )
