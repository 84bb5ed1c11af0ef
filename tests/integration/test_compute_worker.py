"""A `runtime = "worker"` service on local compute: built by wrangler in the sandbox,
served by workerd in the sandbox, deployed blue-green in a preview environment on its
branch database, answering through the edge; its secret in no file branchline wrote."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from branchline import processes
from branchline.config import load_config
from branchline.environment import Environment
from branchline.errors import BranchlineError
from branchline.providers.compute import DeploymentEnv, runtimes
from branchline.providers.compute.local import LocalComputeProvider
from branchline.providers.database.local import LocalDatabaseProvider
from branchline.sandbox import Sandbox
from branchline.store import Store
from tests import workers_tools
from tests.conftest import eventually
from tests.integration.test_compute_local import git, run
from tests.integration.test_database_local import _provider
from tests.integration.test_database_local import run as run_db
from tests.integration.test_edge import EdgeThread

pytestmark = pytest.mark.integration
PREVIEW = Environment.preview(5)
SECRET = "s3cr3t-of-preview-5"

CONFIG = """\
[project]
name = "{name}"
zone = "notes.localhost"

[database]
migrate = "true"

[services.notes]
path = "services/notes"
runtime = "worker"
# Its dependencies (pg) from its own lock file; wrangler then bundles them.
build = ["npm", "ci", "--no-audit", "--no-fund"]

[services.notes.env]
GREETING = "hello from {{{{ environment }}}}"
"""


@pytest.fixture
def db(shared_store: Store, cluster_root: Path) -> Iterator[LocalDatabaseProvider]:
    yield from _provider(shared_store, cluster_root)


@pytest.fixture
def edge(shared_store: Store) -> Iterator[EdgeThread]:
    runner = EdgeThread(shared_store, refresh_interval=3600)
    try:
        yield runner
    finally:
        runner.close()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    workers_tools.required()
    repo = tmp_path / "repo"
    shutil.copytree(workers_tools.NOTES_WORKER, repo / "services" / "notes")
    (repo / "branchline.toml").write_text(CONFIG.format(name=f"notes{os.urandom(3).hex()}"))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "notes worker")
    return repo


@pytest.fixture
def compute(
    project: Path, shared_store: Store, state_dir: Path, edge: EdgeThread
) -> Iterator[LocalComputeProvider]:
    config = load_config(project / "branchline.toml", env={})
    provider = LocalComputeProvider(
        config=config, store=shared_store, state_dir=state_dir, repo=project, drain=0.2,
        edge_port=edge.port, sandbox=Sandbox.for_project(config, state_dir),
    )  # fmt: skip
    try:
        yield provider
    finally:
        run(provider, provider.delete("notes", PREVIEW))


def through_edge(edge: EdgeThread, path: str, body: bytes | None = None) -> Any:
    host = f"{PREVIEW.host_name('notes', 'notes.localhost')}:{edge.port}"
    with edge.client(host) as client:
        answer = client.post(path, content=body) if body is not None else client.get(path)
    assert answer.status_code in (200, 201), answer.text
    return answer.json()


def test_a_worker_service_deployed_in_a_preview_answers_through_the_edge(
    compute: LocalComputeProvider, db: LocalDatabaseProvider, edge: EdgeThread, project: Path
) -> None:
    run_db(db, db.create_branch("pr-5"))
    given = DeploymentEnv(vars={"DATABASE_URL": run_db(db, db.connection_uri("pr-5"))},
                          secrets={"API_SECRET": SECRET})  # fmt: skip

    async def environment(_environment: Environment) -> DeploymentEnv:
        return given

    compute.environment_of = environment
    first = git(project, "rev-parse", "HEAD")

    async def build_and_deploy(commit: str) -> Any:
        began = time.monotonic()
        release = await compute.build("notes", commit)
        built = time.monotonic() - began
        deployment = await compute.deploy("notes", PREVIEW, release, given)
        print(f"build {built:.2f} s, deploy {time.monotonic() - began - built:.2f} s")
        return release, deployment

    release, deployment = run(compute, build_and_deploy(first))
    location = Path(release.location)
    assert (location / runtimes.BUNDLE / "index.js").is_file()  # wrangler's bundle, kept
    assert deployment.status == "live"
    started = processes.recorded(deployment.detail)
    assert started is not None
    boxed = processes.command_line(started.pid) or []
    assert Path(boxed[0]).name == "bwrap" and "serve" in boxed  # workerd, in the sandbox
    assert through_edge(edge, "/health") == {"status": "ok", "commit": first}
    # Its variables: branchline's over the wrangler config's `[vars]`, which it keeps.
    assert through_edge(edge, "/var/GREETING") == {"GREETING": "hello from preview-5"}
    assert through_edge(edge, "/var/SOURCE") == {"SOURCE": "wrangler.toml"}
    assert through_edge(edge, "/secret")["sha256"] == hashlib.sha256(SECRET.encode()).hexdigest()
    # Its branch, over TCP from inside the sandbox.
    assert through_edge(edge, "/notes", b"first note") == {"id": 1}
    assert [n["body"] for n in through_edge(edge, "/notes")] == ["first note"]

    # A pre-flight trial (no route, no deployment) starts it aside, then removes it all.
    trial = run(compute, compute.trial("notes", PREVIEW, release, given))
    assert trial.healthy, trial.verdict
    assert not list((compute.state_dir / "trials").glob("*.worker"))

    # Blue-green: a new commit takes over through the edge; the old workerd stops.
    (project / "services" / "notes" / "CHANGES").write_text("v2\n")
    git(project, "add", ".")
    git(project, "commit", "-qm", "v2")
    second = git(project, "rev-parse", "HEAD")
    _release2, deployment2 = run(compute, build_and_deploy(second))
    assert through_edge(edge, "/health")["commit"] == second
    assert [n["body"] for n in through_edge(edge, "/notes")] == ["first note"]
    old = processes.recorded(deployment.detail)
    assert old is not None
    eventually(lambda: True if not old.alive() else None, timeout=10)
    # What was written for it (its config, its modules) went with it; its log stays.
    assert not Path(str(deployment.detail["log"])).with_suffix(".worker").exists()
    assert Path(str(deployment.detail["log"])).is_file()
    assert Path(str(deployment2.detail["log"])).with_suffix(".worker").is_dir()

    # Supervised like any service: killed, it is started again.
    new = processes.recorded(deployment2.detail)
    assert new is not None
    processes.stop(new, grace=0.5)
    assert run(compute, compute.supervise()) == [f"notes:{PREVIEW.name}"]

    def answers() -> Any:
        try:
            return through_edge(edge, "/health")
        except (AssertionError, httpx.HTTPError):
            return None

    assert eventually(answers, timeout=20)["commit"] == second

    # Rolled back, through the same path.
    back = run(compute, compute.rollback("notes", PREVIEW))
    assert back.release.commit == first
    assert through_edge(edge, "/health")["commit"] == first

    # The secret is in no file branchline wrote (configs name it only), nor in the logs.
    for path in compute.state_dir.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert SECRET.encode() not in path.read_bytes(), path
    written = list(compute.state_dir.glob("deployments/preview-5/notes/*.worker/config.capnp"))
    assert len(written) == 1  # the live one's; the others went with their deployments
    named = written[0].read_text()
    for binding in ("DATABASE_URL", "PGPASSWORD", "API_SECRET", "BRANCHLINE_COMMIT", "GREETING"):
        assert f'(name = "{binding}", fromEnvironment = "{binding}")' in named
    for other in ("PATH", "HOME", "PORT", "BRANCHLINE_STATE", "BRANCHLINE_DEPLOYMENT"):
        assert f'"{other}"' not in named  # not the Worker's: how branchline runs and finds it
    assert '(name = "SOURCE", text = "wrangler.toml")' in named


def test_a_worker_service_without_a_wrangler_config_is_explained(
    compute: LocalComputeProvider, project: Path
) -> None:
    (project / "services" / "notes" / "wrangler.toml").unlink()
    git(project, "commit", "-qam", "no wrangler config")
    with pytest.raises(BranchlineError) as failed:
        run(compute, compute.build("notes", "HEAD"))
    assert "wrangler config" in failed.value.message
    assert "wrangler.toml" in failed.value.hint
