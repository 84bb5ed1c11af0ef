"""A Worker service from the command line: `branchline deploy` builds it with wrangler
and serves it in workerd behind the edge, on production's database with production's
secret; `logs` shows workerd's output; `down` stops it all."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from branchline.edge import daemon
from tests import workers_tools
from tests.conftest import run_cli
from tests.integration.test_compute_local import git

SECRET = "production-s3cr3t-for-the-worker"
CONFIG = """\
[project]
name = "notes"
zone = "notes.localhost"

[database]
migrate = "true"

[services.notes]
path = "services/notes"
runtime = "worker"
build = ["npm", "ci", "--no-audit", "--no-fund"]

[secrets.production]
names = ["API_SECRET"]
"""


@pytest.fixture
def project(tmp_path: Path, state_dir: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    workers_tools.required()
    root = tmp_path / "notes"
    shutil.copytree(workers_tools.NOTES_WORKER, root / "services" / "notes")
    (root / "branchline.toml").write_text(CONFIG)
    git(root, "init", "-q", "-b", "main")
    root.chmod(0o755)  # as root, Postgres and the sandbox run as other users
    env = {"BRANCHLINE_STATE_DIR": str(state_dir)}
    try:
        yield root, env
    finally:
        run_cli("down", cwd=root, env=env)


def cli(project: tuple[Path, dict[str, str]], *args: str, input: str | None = None) -> str:
    root, env = project
    done: subprocess.CompletedProcess[str] = run_cli(*args, cwd=root, env=env, input=input)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def through_edge(port: int, path: str, body: bytes | None = None) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, headers={"Host": "notes.notes.localhost"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def test_a_worker_is_deployed_reached_and_logged_from_the_command_line(
    project: tuple[Path, dict[str, str]],
) -> None:
    root, env = project
    cli(project, "db", "init")
    git(root, "add", ".")
    git(root, "commit", "-qm", "notes")
    cli(project, "secret", "set", "API_SECRET", "--env", "production", input=SECRET + "\n")
    deployed = json.loads(cli(project, "--json", "deploy", "notes", "--env", "production"))
    assert deployed["status"] == "live"
    info = daemon.read_info(Path(env["BRANCHLINE_STATE_DIR"]))
    assert info is not None
    commit = git(root, "rev-parse", "HEAD")
    assert through_edge(info.edge_port, "/health") == {"status": "ok", "commit": commit}
    digest = hashlib.sha256(SECRET.encode()).hexdigest()
    assert through_edge(info.edge_port, "/secret") == {"set": True, "sha256": digest}
    # Production's own database, over TCP from workerd in the sandbox.
    assert through_edge(info.edge_port, "/notes", b"from production") == {"id": 1}
    notes = through_edge(info.edge_port, "/notes")
    assert [n["body"] for n in notes] == ["from production"]
    logs = cli(project, "logs", "notes", "--env", "production")
    assert "Listening on http://127.0.0.1:" in logs
    # Written down nowhere: releases, deployments, configs and logs.
    project_dir = Path(env["BRANCHLINE_STATE_DIR"]) / "projects" / "notes"
    for where in ("releases", "deployments"):
        for path in (project_dir / where).rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert SECRET.encode() not in path.read_bytes(), path
