"""`branchline serve --detach`: one background process with the edge and the
pipelines' workers; a signed GitHub push delivery to its HTTP server becomes a
testing run; `branchline stop` ends it."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from branchline.postgres.cluster import free_port
from branchline.server.webhooks import signature_of
from tests.codex_project import git, make_project
from tests.conftest import REPO, eventually, run_cli

SECRET = "a webhook secret for this test"
PUSH = REPO / "tests" / "fixtures" / "github-webhooks" / "octokit-examples"


@pytest.fixture
def project(tmp_path: Path, state_dir: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    root = make_project(tmp_path / "codex", quick_tests=True)
    env = {
        "BRANCHLINE_STATE_DIR": str(state_dir),
        "BRANCHLINE_WEBHOOK_SECRET": SECRET,
        "BRANCHLINE_API_PORT": str(free_port()),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    try:
        yield root, env
    finally:
        run_cli("stop", "--all", cwd=root, env=env)


def cli(project: tuple[Path, dict[str, str]], *args: str) -> Any:
    root, env = project
    done = run_cli("--json", *args, cwd=root, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def deliver(port: int, body: bytes, signature: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/webhooks/github", data=body, method="POST",
        headers={"X-GitHub-Event": "push", "X-GitHub-Delivery": str(uuid.uuid4()),
                 "X-Hub-Signature-256": signature, "Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


def test_serve_detached_turns_a_signed_push_into_a_run(
    project: tuple[Path, dict[str, str]],
) -> None:
    root, env = project
    cli(project, "db", "init")
    started = cli(project, "serve", "--detach")
    assert started["started"] is True
    again = cli(project, "serve", "--detach")
    assert again["started"] is False and again["pid"] == started["pid"]
    port = int(env["BRANCHLINE_API_PORT"])
    health = eventually(lambda: _get(f"http://127.0.0.1:{port}/healthz"), timeout=20)
    assert health["status"] == "ok"

    payload = json.loads((PUSH / "push.new-branch-master.payload.json").read_text())
    payload.update(ref="refs/heads/feature", before="0" * 40)
    git(root, "branch", "feature")
    payload["after"] = git(root, "rev-parse", "feature")
    body = json.dumps(payload).encode()
    assert deliver(port, body, signature_of(b"wrong", body))[0] == 401
    status, answer = deliver(port, body, signature_of(SECRET.encode(), body))
    assert status == 202 and answer["message"] == "recorded"

    def finished() -> dict[str, Any] | None:
        runs = cli(project, "runs", "list")
        done = [r for r in runs if r["workflow"] == "testing" and r["status"] == "success"]
        return done[0] if done else None

    run = eventually(finished, timeout=60)
    assert run["sha"] == payload["after"] and run["triggered_by"].startswith("push to feature")
    stopped = cli(project, "stop")
    assert stopped["stopped"] is True


def _get(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            data: dict[str, Any] = json.loads(answer.read())
            return data
    except (urllib.error.URLError, OSError):
        return None


def test_a_clean_stop_logs_no_traceback(project: tuple[Path, dict[str, str]]) -> None:
    """`branchline stop` (workers paused, the HTTP server with them), serve again (the
    API takes its port back) and `stop --all`: edge.log says what happened, with no
    traceback and no worker left retrying after its pipelines closed."""
    root, env = project
    port = int(env["BRANCHLINE_API_PORT"])
    cli(project, "serve", "--detach")
    assert eventually(lambda: _get(f"http://127.0.0.1:{port}/healthz"), timeout=20)
    assert cli(project, "stop")["stopped"] is True
    cli(project, "serve", "--detach")  # resumed: the HTTP server binds its port again
    assert eventually(lambda: _get(f"http://127.0.0.1:{port}/healthz"), timeout=20)
    assert cli(project, "stop", "--all")["stopped"] is True
    log = (Path(env["BRANCHLINE_STATE_DIR"]) / "edge.log").read_text()
    assert "workers stopped" in log and "workers resumed" in log
    for unwanted in ("Traceback", "CancelledError", "ERROR", "App was not open"):
        assert unwanted not in log, log
    assert root.is_dir()
