"""What a release runs with: a declared environment (never the shell of whoever
started branchline), its own dependencies installed once per lock file, files from
outside its path, and a release phase before each deploy. Real processes, boxed."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from branchline import processes
from branchline.config import load_config
from branchline.environment import Environment
from branchline.errors import BranchlineError
from branchline.migrations import migrate
from branchline.postgres.cluster import Cluster
from branchline.providers.compute import DeploymentEnv
from branchline.providers.compute import local as compute_local
from branchline.providers.compute.local import LocalComputeProvider
from branchline.providers.database.local import LocalDatabaseProvider
from branchline.sandbox import Sandbox, default_path
from branchline.store import Store
from tests.integration.conftest import store_in
from tests.integration.test_compute_local import git, run
from tests.integration.test_database_local import _provider
from tests.integration.test_database_local import run as run_db

pytestmark = pytest.mark.integration
T = TypeVar("T")
PRODUCTION = Environment.production()
SECRET = "s3cr3t-release-value"
GIVEN = DeploymentEnv(secrets={"API_KEY": SECRET})

APP = """\
import json, os, subprocess
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

def dep_version():
    try:
        return subprocess.run(["dep-version"], capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:
        return None

def shared():
    try:
        return open("../../shared/greeting.txt").read().strip()
    except OSError:
        return None

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"path": os.environ["PATH"], "env": sorted(os.environ),
                           "dep": dep_version(), "shared": shared(),
                           "release": os.environ["BRANCHLINE_RELEASE"]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""

# Installs "dependencies" into $DEPS: a tool on PATH saying which lock it came from.
INSTALL = """\
import os, pathlib, stat
deps = pathlib.Path(os.environ["DEPS"])
lock = pathlib.Path("requirements.txt").read_text().strip()
tool = deps / "bin" / "dep-version"
tool.parent.mkdir(parents=True, exist_ok=True)
tool.write_text(f"#!/bin/sh\\necho {lock}\\n")
tool.chmod(tool.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
print("installed", lock)
"""

RELEASE = """\
import os, sys
print("release phase of", os.environ["BRANCHLINE_RELEASE"], "key:", os.environ["API_KEY"])
sys.exit(int(open("release-exit").read()))
"""

CONFIG = """\
[project]
name = "shop"
zone = "shop.localhost"

[database]
migrate = "true"

[services.app]
path = "services/app"
run = ["python3", "app.py"]
health_path = "/"
release = ["python3", "release.py"]
include = ["shared"]

[services.app.deps]
lock = ["requirements.txt"]
install = ["python3", "install.py"]
"""


async def given(_environment: Environment) -> DeploymentEnv:
    """What compute asks for when it starts a release by itself (a rollback)."""
    return GIVEN


def commit(repo: Path, *, lock: str, greeting: str, release_exit: int = 0) -> str:
    app = repo / "services" / "app"
    app.mkdir(parents=True, exist_ok=True)
    (app / "app.py").write_text(APP)
    (app / "install.py").write_text(INSTALL)
    (app / "release.py").write_text(RELEASE)
    (app / "release-exit").write_text(str(release_exit))
    (app / "requirements.txt").write_text(lock + "\n")
    (repo / "shared").mkdir(exist_ok=True)
    (repo / "shared" / "greeting.txt").write_text(greeting + "\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", f"{lock} {greeting}")
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def compute(
    pg_cluster: Cluster, tmp_path: Path, cluster_root: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[LocalComputeProvider, Path]]:
    # Whoever started branchline had a virtualenv and a token in their shell.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("VIRTUAL_ENV", str(Path(sys.executable).parent.parent))
    monkeypatch.setenv("LEAKED_TOKEN", "ghp_never_for_a_branch")
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "branchline.toml").write_text(CONFIG)
    (repo / "services" / "app").mkdir(parents=True)
    config = load_config(repo / "branchline.toml", env={})
    config = config.model_copy(update={"project": config.project.model_copy(
        update={"name": f"rel{os.urandom(3).hex()}"})})  # fmt: skip
    store = store_in(pg_cluster, "bl_state")
    state = Path(tempfile.mkdtemp(prefix="release-env-", dir=cluster_root))
    state.chmod(0o755)
    provider = LocalComputeProvider(
        config=config, store=store, state_dir=state, repo=repo, drain=0.2,
        sandbox=Sandbox.for_project(config, state), environment=given,
    )  # fmt: skip
    try:
        yield provider, repo
    finally:
        run(provider, provider.delete("app", PRODUCTION))
        shutil.rmtree(state, ignore_errors=True)


def answer(provider: LocalComputeProvider) -> dict[str, Any]:
    async def port() -> int:
        live = [d for d in await provider.list_deployments(PRODUCTION) if d.status == "live"]
        return int(live[0].detail["port"])

    with urllib.request.urlopen(f"http://127.0.0.1:{run(provider, port())}/", timeout=5) as a:
        data: dict[str, Any] = json.loads(a.read())
    return data


def deploy(provider: LocalComputeProvider, sha: str) -> Any:
    async def go() -> Any:
        release = await provider.build("app", sha)
        return await provider.deploy("app", PRODUCTION, release, GIVEN)

    return run(provider, go())


def test_a_release_runs_what_was_declared_with_its_own_dependencies(
    compute: tuple[LocalComputeProvider, Path],
) -> None:
    provider, repo = compute
    first = commit(repo, lock="deps-a", greeting="hello")
    deploy(provider, first)
    seen = answer(provider)
    # Declared only: the default PATH (the system's), after the release's own tools;
    # nothing of the shell that started branchline.
    app_dir = Path(seen["path"].split(os.pathsep)[0]).parent.parent
    assert seen["path"].split(os.pathsep)[-len(default_path()) :] == list(default_path())
    assert str(Path(sys.executable).parent) not in seen["path"].split(os.pathsep)
    assert "VIRTUAL_ENV" not in seen["env"] and "LEAKED_TOKEN" not in seen["env"]
    assert seen["dep"] == "deps-a"  # installed for this lock, found on PATH
    assert seen["shared"] == "hello"  # `include`: a file outside the service's path
    assert (app_dir / ".venv").is_symlink()

    # A code change with the same lock file: the install is shared, not repeated.
    second = commit(repo, lock="deps-a", greeting="hello again")
    deploy(provider, second)
    installs = sorted((provider.state_dir / "deps" / "app").glob("*/bin"))
    assert len(installs) == 1 and answer(provider)["shared"] == "hello again"

    # New dependencies, then a rollback across the change: the old ones again.
    third = commit(repo, lock="deps-b", greeting="hello b")
    deploy(provider, third)
    assert answer(provider)["dep"] == "deps-b"
    assert len(list((provider.state_dir / "deps" / "app").glob("*/bin"))) == 2
    back = run(provider, provider.rollback("app", PRODUCTION))
    assert back.release.commit == second
    assert answer(provider)["dep"] == "deps-a"


def test_the_release_phase_runs_before_the_switch_with_secrets_masked(
    compute: tuple[LocalComputeProvider, Path],
) -> None:
    provider, repo = compute
    good = commit(repo, lock="deps-a", greeting="v1")
    live = deploy(provider, good)
    log = Path(live.detail["log"]).read_text()
    assert f"release phase of {live.release.name} key:" in log
    bad = commit(repo, lock="deps-a", greeting="v2", release_exit=3)
    with pytest.raises(BranchlineError) as failed:
        deploy(provider, bad)
    assert "release command of app" in failed.value.message
    assert "exit code 3" in failed.value.message
    assert SECRET not in failed.value.hint and "key: ***" in failed.value.hint
    # The old release never stopped serving.
    assert answer(provider)["release"] == live.release.name


@pytest.fixture
def db(shared_store: Store, cluster_root: Path) -> Iterator[LocalDatabaseProvider]:
    yield from _provider(shared_store, cluster_root)


MIGRATE_CONFIG = """\
[project]
name = "shop"
zone = "shop.localhost"

[database]
migrate = ["python3", "-c", "import os; print('migrating with', os.environ['API_KEY'], \
'and', os.environ.get('LEAKED_TOKEN'))"]
"""


def test_the_migrate_step_gets_the_environments_secrets_masked_and_nothing_else(
    db: LocalDatabaseProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEAKED_TOKEN", "ghp_never_for_a_branch")
    (tmp_path / "branchline.toml").write_text(MIGRATE_CONFIG)
    config = load_config(tmp_path / "branchline.toml", env={})
    run_db(db, db.create_branch("mig-1"))
    tmp_path.chmod(0o755)  # the boxed user enters the project
    sandbox = Sandbox.for_project(config, tmp_path / "state")
    result = run_db(db, migrate(config, db, "mig-1", secrets={"API_KEY": SECRET},
                                sandbox=sandbox, fingerprint=False))  # fmt: skip
    assert result.ok, result.output_tail
    assert "migrating with *** and None" in result.output_tail
    assert SECRET not in "".join(result.output_tail)


HANGING_RELEASE = """\
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
print("release phase waits", flush=True)
time.sleep(600)
"""


def test_a_release_phase_past_its_deadline_is_stopped_with_its_whole_tree(
    compute: tuple[LocalComputeProvider, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    provider, repo = compute
    live = deploy(provider, commit(repo, lock="deps-a", greeting="v1"))
    commit(repo, lock="deps-a", greeting="v2")
    (repo / "services" / "app" / "release.py").write_text(HANGING_RELEASE)
    git(repo, "commit", "-qam", "a release phase that hangs")
    monkeypatch.setattr(compute_local, "RELEASE_TIMEOUT", 2.0)
    began = time.monotonic()
    with pytest.raises(BranchlineError) as failed:
        deploy(provider, git(repo, "rev-parse", "HEAD"))
    assert "failed (timed out)" in failed.value.message
    assert "timed out after 2s; its processes were stopped" in failed.value.hint
    assert time.monotonic() - began < 30
    # Nothing of it runs (found by its tag, as the parts that left its group are).
    left = [t for t in processes.trees("release.") if t.env.get("BRANCHLINE_SERVICE") == "app"
            and t.env.get("BRANCHLINE_PROJECT") == provider.project]  # fmt: skip
    assert left == [], left
    assert answer(provider)["release"] == live.release.name


def test_a_cancelled_deploy_stops_its_release_phase(
    compute: tuple[LocalComputeProvider, Path],
) -> None:
    provider, repo = compute
    commit(repo, lock="deps-a", greeting="v1")
    (repo / "services" / "app" / "release.py").write_text(HANGING_RELEASE)
    git(repo, "commit", "-qam", "a release phase that hangs")
    sha = git(repo, "rev-parse", "HEAD")

    def ours() -> list[processes.Tree]:
        return [t for t in processes.trees("release.")
                if t.env.get("BRANCHLINE_PROJECT") == provider.project]  # fmt: skip

    async def go() -> None:
        release = await provider.build("app", sha)
        task = asyncio.create_task(provider.deploy("app", PRODUCTION, release, GIVEN))
        deadline = time.monotonic() + 60
        while not ours() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # its child started too
        assert len(ours()) == 1 and len(ours()[0].pids) >= 2
        task.cancel()  # what a `runs cancel` or a step's deadline does to the deploy
        with pytest.raises(asyncio.CancelledError):
            await task

    run(provider, go())
    assert ours() == []


def test_a_build_that_points_the_dependency_link_elsewhere_is_refused(
    compute: tuple[LocalComputeProvider, Path],
) -> None:
    """The build runs after the dependency link is made, with the tree writable: a
    build pointing the link at another directory (the state, a home) would have it
    shown to the service's box. The build fails instead, naming the link."""
    provider, repo = compute
    spec = provider.config.services["app"]
    repoint = ("python3", "-c", "import os; os.remove('.venv'); os.symlink('/root', '.venv')")
    services = {**provider.config.services, "app": spec.model_copy(update={"build": repoint})}
    provider.config = provider.config.model_copy(update={"services": services})
    sha = commit(repo, lock="deps-a", greeting="hello")
    with pytest.raises(BranchlineError) as info:
        run(provider, provider.build("app", sha))
    assert "dependency link .venv" in info.value.message
    assert "outside branchline's dependency cache" in info.value.message
