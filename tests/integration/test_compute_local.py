"""Local compute on real processes: releases from git, blue-green deploys, rollback,
unhealthy releases never routed, crash restarts and adoption."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from branchline.config import load_config
from branchline.environment import Environment
from branchline.errors import BranchlineError, UsageError
from branchline.processes import ProcessId
from branchline.providers.compute import ComputeProvider, DeploymentEnv
from branchline.providers.compute.local import LocalComputeProvider
from branchline.providers.reconciling import Finding
from branchline.store import compute as compute_rows
from branchline.store import routes
from tests.integration.conftest import store_in

pytestmark = pytest.mark.integration
T = TypeVar("T")

APP = """\
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HEALTHY = {healthy}

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({{
            "status": "ok", "commit": os.environ["BRANCHLINE_COMMIT"],
            "release": os.environ["BRANCHLINE_RELEASE"], "greeting": "{greeting}",
            "db_name": os.environ.get("APP_DB_NAME", ""),
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

CONFIG = """\
[project]
name = "shop"
zone = "shop.localhost"

[database]
migrate = "true"

[services.api]
path = "services/api"
build = ["{python}", "-c", "open('built.txt', 'w').write('ok')"]
run = ["{python}", "app.py"]

[services.api.env]
APP_DB_NAME = "{{{{ db.name }}}}"
"""


DB = DeploymentEnv(vars={"DATABASE_URL": "postgresql://u:pw@127.0.0.1:5999/shopdb"})
PRODUCTION = Environment.production()
PREVIEW = Environment.preview(8)


async def database_env(_environment: Environment) -> DeploymentEnv:
    """The environment source compute asks when it starts a service by itself."""
    return DB


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


def commit_app(repo: Path, greeting: str, *, healthy: bool = True) -> str:
    app = repo / "services" / "api" / "app.py"
    app.parent.mkdir(parents=True, exist_ok=True)
    app.write_text(APP.format(greeting=greeting, healthy=healthy))
    git(repo, "add", ".")
    git(repo, "commit", "-qm", greeting)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def compute(
    pg_cluster: Any, tmp_path: Path, cluster_root: Path
) -> Iterator[tuple[LocalComputeProvider, Path]]:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "branchline.toml").write_text(CONFIG.format(python=sys.executable))
    commit_app(repo, "hello v1")
    config = load_config(repo / "branchline.toml", env={})
    store = store_in(pg_cluster, "bl_state")
    state = Path(tempfile.mkdtemp(prefix="compute-", dir=cluster_root))
    config = config.model_copy(update={"project": config.project.model_copy(
        update={"name": f"shop{os.urandom(3).hex()}"})})  # fmt: skip
    provider = LocalComputeProvider(config=config, store=store, state_dir=state, repo=repo,
                                    drain=0.2, environment=database_env)  # fmt: skip
    try:
        yield provider, repo
    finally:
        run(provider, provider.delete("api", PRODUCTION))
        run(provider, provider.delete("api", PREVIEW))
        shutil.rmtree(state, ignore_errors=True)


def run(provider: LocalComputeProvider, work: Coroutine[Any, Any, T]) -> T:
    async def main() -> T:
        try:
            return await work
        finally:
            await provider.aclose()

    return asyncio.run(main())


def get(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
        data: dict[str, Any] = json.loads(answer.read())
    return data


async def route_port(provider: LocalComputeProvider, host: str) -> int | None:
    async with provider.store.connect() as conn:
        route = await routes.get_route(conn, host)
    return route.upstream_port if route else None


def test_the_provider_satisfies_the_interface(compute: tuple[LocalComputeProvider, Path]) -> None:
    assert isinstance(compute[0], ComputeProvider)


def test_deploy_new_release_rollback(compute: tuple[LocalComputeProvider, Path]) -> None:
    provider, repo = compute
    host = "api.shop.localhost"
    v1 = run(provider, provider.build("api", "HEAD"))
    assert run(provider, provider.build("api", "HEAD")).id == v1.id  # immutable, built once
    assert (Path(v1.location) / "tree/services/api/built.txt").read_text() == "ok"
    first = run(provider, provider.deploy("api", PRODUCTION, v1, DB))
    assert first.status == "live"
    port1 = asyncio.run(route_port(provider, host))
    assert port1 is not None
    answer = get(port1)
    assert answer["commit"] == v1.commit and answer["db_name"] == "shopdb"

    commit_app(repo, "hello v2")
    v2 = run(provider, provider.build("api", "HEAD"))
    second = run(provider, provider.deploy("api", PRODUCTION, v2, DB))
    port2 = asyncio.run(route_port(provider, host))
    assert port2 != port1 and get(port2)["greeting"] == "hello v2"
    old = ProcessId(int(first.detail["pid"]), int(first.detail["start_time"]))
    assert not old.alive(), "the old release was not stopped after draining"

    back = run(provider, provider.rollback("api", PRODUCTION))
    assert back.release.id == v1.id
    port3 = asyncio.run(route_port(provider, host))
    assert get(port3)["commit"] == v1.commit
    statuses = {d.id: d.status for d in run(provider, provider.list_deployments(PRODUCTION))}
    assert statuses[second.id] == "rolled_back" and statuses[back.id] == "live"


def test_an_unhealthy_release_is_never_routed(compute: tuple[LocalComputeProvider, Path]) -> None:
    provider, repo = compute
    good = run(provider, provider.build("api", "HEAD"))
    run(provider, provider.deploy("api", PREVIEW, good, DB))
    host = "api-preview-8.shop.localhost"
    before = asyncio.run(route_port(provider, host))
    commit_app(repo, "broken", healthy=False)
    bad = run(provider, provider.build("api", "HEAD"))
    fast = provider.config.health.model_copy(update={"retries": 1})
    provider.config = provider.config.model_copy(update={"health": fast})
    with pytest.raises(BranchlineError, match="did not become healthy") as info:
        run(provider, provider.deploy("api", PREVIEW, bad, DB))
    assert "old release keeps serving" in info.value.hint
    assert asyncio.run(route_port(provider, host)) == before
    assert get(before or 0)["commit"] == good.commit


def test_a_killed_service_is_restarted_and_adopted_not_duplicated(
    compute: tuple[LocalComputeProvider, Path],
) -> None:
    provider, _ = compute
    release = run(provider, provider.build("api", "HEAD"))
    deployed = run(provider, provider.deploy("api", PRODUCTION, release, DB))
    pid = int(deployed.detail["pid"])
    assert run(provider, provider.supervise()) == []  # alive: adopted as it is
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while (
        ProcessId(pid, int(deployed.detail["start_time"])).alive() and time.monotonic() < deadline
    ):
        time.sleep(0.02)
    assert run(provider, provider.supervise()) == ["api:production"]
    port = int(deployed.detail["port"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            assert get(port)["commit"] == release.commit
            break
        except OSError:
            time.sleep(0.05)
    else:
        raise AssertionError("the restarted service never answered")
    # A new branchline process (a fresh provider) adopts it rather than starting another.
    fresh = LocalComputeProvider(config=provider.config, store=provider.store,
                                 state_dir=provider.state_dir, repo=provider.repo,
                                 environment=database_env)  # fmt: skip
    assert run(fresh, fresh.supervise()) == []
    (now,) = run(fresh, fresh.list_deployments(PRODUCTION))
    assert now.detail["crashes"] == 1


def test_a_service_started_but_never_recorded_is_adopted_not_started_again(
    compute: tuple[LocalComputeProvider, Path],
) -> None:
    """A supervisor killed between starting a service and recording its pid: the
    store names a dead process, the service runs. The next supervisor adopts it."""
    provider, _ = compute
    release = run(provider, provider.build("api", "HEAD"))
    deployed = run(provider, provider.deploy("api", PRODUCTION, release, DB))
    running = ProcessId(int(deployed.detail["pid"]), int(deployed.detail["start_time"]))

    async def forget() -> None:  # as if the recorded process were an older, dead one
        async with provider.store.connect() as conn:
            await compute_rows.update_deployment(
                conn, deployed.id, detail={"pid": running.pid, "start_time": 1}
            )

    run(provider, forget())
    assert run(provider, provider.supervise()) == []  # adopted: nothing restarted
    (now,) = run(provider, provider.list_deployments(PRODUCTION))
    assert (now.detail["pid"], now.detail["start_time"]) == (running.pid, running.start_time)
    assert "crashes" not in now.detail
    assert get(int(now.detail["port"]))["commit"] == release.commit


def test_failed_build_leaves_nothing(compute: tuple[LocalComputeProvider, Path]) -> None:
    provider, _ = compute
    spec = provider.config.services["api"].model_copy(
        update={"build": (sys.executable, "-c", "import sys; print('no compiler'); sys.exit(4)")}
    )
    provider.config = provider.config.model_copy(update={"services": {"api": spec}})
    with pytest.raises(BranchlineError, match="build failed") as info:
        run(provider, provider.build("api", "HEAD"))
    assert "no compiler" in info.value.hint
    assert not any((provider.state_dir / "releases" / "api").glob("*"))


@pytest.mark.parametrize("environment", ["prod'uction", "$(id)", "../../etc", "preview-0"])
def test_hostile_environments_are_refused(
    compute: tuple[LocalComputeProvider, Path], environment: str
) -> None:
    provider, _ = compute
    with pytest.raises(UsageError):
        Environment.parse(environment)  # the one way text becomes an environment
    assert not (provider.state_dir / "deployments").exists()


def test_a_database_placeholder_without_a_database_is_explained(
    compute: tuple[LocalComputeProvider, Path],
) -> None:
    provider, _ = compute
    release = run(provider, provider.build("api", "HEAD"))
    with pytest.raises(UsageError, match="has no database"):
        run(provider, provider.deploy("api", PRODUCTION, release, DeploymentEnv()))


def test_unknown_service_and_commit_are_explained(
    compute: tuple[LocalComputeProvider, Path],
) -> None:
    provider, _ = compute
    with pytest.raises(UsageError, match="no service 'nope'"):
        run(provider, provider.build("nope", "HEAD"))
    with pytest.raises(UsageError, match="not a commit"):
        run(provider, provider.build("api", "deadbeef" * 5))


def test_reconcile_leaves_the_route_of_a_deploy_under_way(
    compute: tuple[LocalComputeProvider, Path],
) -> None:
    """A deploy points the route at its deployment while that is still `starting`,
    then marks it live: a reconcile pass in between leaves the route alone (it
    removed a first deploy's route, and the service answered 404 from then on)."""
    provider, _repo = compute
    host = "api.shop.localhost"
    release = run(provider, provider.build("api", "HEAD"))
    live = run(provider, provider.deploy("api", PRODUCTION, release, DB))
    port = asyncio.run(route_port(provider, host))
    assert port is not None

    async def reconcile_between_its_switch_and_live() -> tuple[int, list[Finding]]:
        # As a deploy holds it: its lock, its `starting` row, the route switched.
        async with provider._locked(f"deploy:api:{PRODUCTION.name}") as conn:
            starting = await compute_rows.insert_deployment(
                conn, provider.project, "api", PRODUCTION.name, release.id, {"port": port}
            )
            await routes.set_route(conn, host=host, project=provider.project,
                                   environment=PRODUCTION.name, service="api", port=port,
                                   deployment_id=starting)  # fmt: skip
            return starting, await provider.reconcile()

    starting, found = asyncio.run(reconcile_between_its_switch_and_live())
    assert not [f for f in found if f.kind == "route"], found
    assert asyncio.run(route_deployment(provider, host)) == starting
    # Its deploy failed instead: the route goes back to the live deployment.

    async def failed() -> None:
        async with provider.store.connect() as conn:
            await compute_rows.update_deployment(conn, starting, status="failed")

    asyncio.run(failed())
    assert [f.action for f in run(provider, provider.reconcile()) if f.kind == "route"] == [
        "point at the live deployment"
    ]
    assert asyncio.run(route_deployment(provider, host)) == live.id


async def route_deployment(provider: LocalComputeProvider, host: str) -> int | None:
    async with provider.store.connect() as conn:
        route = await routes.get_route(conn, host)
    return route.deployment_id if route else None
