"""A fresh copy of the example app as a project of its own (its own git repository),
and a check of what a preview left behind: shared by the pipeline tests."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from branchline import processes
from branchline.environment import Environment
from branchline.processes import ProcessId
from branchline.store import routes
from tests.conftest import REPO, run_cli

EXAMPLE = REPO / "examples" / "codex"
PYTHON_BIN = str(Path(sys.executable).parent)
QUICK_TESTS = """
[tests.quick]
command = ["python", "-c", "print('quick test ok')"]
"""


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


def make_project(dest: Path, *, quick_tests: bool = False) -> Path:
    """Copy the example into `dest` (a new git repository on `main`)."""
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("__pycache__", ".branchline"))
    if quick_tests:
        # The example's own suites take seconds; tests of the pipelines' plumbing
        # swap them for one instant job.
        config = dest / "branchline.toml"
        kept, in_tests = [], False
        for line in config.read_text().splitlines():
            if line.startswith("["):
                in_tests = line.startswith("[tests.")
            if not in_tests:
                kept.append(line)
        config.write_text("\n".join(kept) + "\n" + QUICK_TESTS)
    # The example's code needs a `python` with psycopg: this interpreter's, named
    # in its `[security] path` (by default code from a branch gets the system's).
    config = dest / "branchline.toml"
    config.write_text(config.read_text().replace("${CODEX_PYTHON_BIN:-/usr/local/bin}", PYTHON_BIN))
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", ".")
    git(dest, "commit", "-qm", "codex")
    return dest


def cli_env(state_dir: Path) -> dict[str, str]:
    """What the CLI of a test project runs with: its own state directory, and a PATH
    whose `python` (the example's services and tests run it) has psycopg."""
    return {
        "BRANCHLINE_STATE_DIR": str(state_dir),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }


@contextlib.contextmanager
def served(root: Path, env: dict[str, str]) -> Iterator[tuple[Path, dict[str, str]]]:
    """The project for a test; its serve and services stopped afterwards."""
    try:
        yield root, env
    finally:
        stop_serve_and_services(root, env)


def json_cli(project: tuple[Path, dict[str, str]], *args: str) -> Any:
    """`branchline --json ARGS` in the project; it must succeed. Its answer."""
    root, env = project
    done = run_cli("--json", *args, cwd=root, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def stop_serve_and_services(root: Path, env: dict[str, str]) -> None:
    """`branchline stop` ends serve but leaves services running (the next serve adopts
    them): a test ends those too."""
    run_cli("stop", "--all", cwd=root, env=env)
    listed = run_cli("--json", "deployments", "list", cwd=root, env=env)
    for deployment in json.loads(listed.stdout or "[]") if listed.returncode == 0 else []:
        detail = deployment["detail"]
        pid = processes.recorded(detail)
        if pid is not None and deployment["status"] in ("live", "starting", "draining"):
            # The whole tree: a sandboxed service's own processes too.
            processes.stop(pid)


def stop_everything_started(root: Path, env: dict[str, str], state_dir: Path) -> None:
    """After a chaos test: serve stopped, and every service started for the project
    killed, group and all (its sandbox too), found by environment: a kill may have
    left one no record knows."""
    run_cli("stop", "--all", cwd=root, env=env)
    ours = str(state_dir / "projects" / "codex")
    for pid, _env, _age in processes.started_for(
        {"BRANCHLINE_PROJECT": "codex", "BRANCHLINE_STATE": ours}
    ):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def commit_on(repo: Path, branch: str, files: dict[str, str], message: str) -> str:
    """Commit `files` (path -> text) on `branch` (made from main if new); back to main."""
    exists = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--verify", "-q", branch], capture_output=True
    ).returncode == 0  # fmt: skip
    git(repo, "checkout", "-q", branch) if exists else git(repo, "checkout", "-qb", branch)
    for path, text in files.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
    git(repo, "add", ".")
    git(repo, "commit", "-qm", message)
    sha = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "main")
    return sha


async def leftovers(kit: Any, pr: int) -> dict[str, list[str]]:
    """Everything of preview `pr` that still exists: empty lists when it is all gone."""
    environment = Environment.preview(pr)
    branches = [b.name for b in await kit.database.list_branches() if b.name.startswith(f"pr-{pr}")]
    processes = []
    for deployment in await kit.compute.list_deployments(environment):
        detail = deployment.detail
        if "pid" in detail and ProcessId(detail["pid"], detail.get("start_time")).alive():
            processes.append(f"{deployment.service} pid {detail['pid']}")
    live = [
        d.service
        for d in await kit.compute.list_deployments(environment)
        if d.status in ("live", "starting", "draining")
    ]
    async with kit.store.connect() as conn:
        found_routes = [
            r.host for r in await routes.list_routes(conn, kit.project)
            if r.environment == environment.name
        ]  # fmt: skip
    records = [r.name for r in await kit.dns.list_records(environment)]
    secrets = [s.name for s in await kit.secrets.list(environment.name)]
    return {
        "branches": branches, "processes": processes, "deployments": live,
        "routes": found_routes, "dns": records, "secrets": secrets,
    }  # fmt: skip


NOTHING: dict[str, list[str]] = {
    "branches": [], "processes": [], "deployments": [], "routes": [], "dns": [], "secrets": []
}  # fmt: skip
