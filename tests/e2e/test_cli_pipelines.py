"""The pipelines through the CLI alone, on a fresh copy of the example repository:
a push tested on an ephemeral branch; a pull request's preview reachable through
the edge, updated by a new commit, and removed entirely when it closes."""

from __future__ import annotations

import json
import os
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from branchline.processes import ProcessId
from tests.codex_project import commit_on, make_project, stop_serve_and_services
from tests.conftest import eventually, run_cli

SERVICES = ("api", "auth", "web")


@pytest.fixture
def project(tmp_path: Path, state_dir: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    root = make_project(tmp_path / "codex")
    env = {
        "BRANCHLINE_STATE_DIR": str(state_dir),
        # The example's services and tests run `python`: one with psycopg.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    try:
        yield root, env
    finally:
        stop_serve_and_services(root, env)  # also whatever a failed test left running


def cli(project: tuple[Path, dict[str, str]], *args: str) -> Any:
    root, env = project
    result = run_cli("--json", *args, cwd=root, env=env)
    if result.returncode != 0 and "failed: run" in result.stderr:  # say why, in the report
        run_id = result.stderr.split("failed: run ", 1)[1].split(";")[0].split(",")[0]
        shown = json.loads(run_cli("--json", "runs", "show", run_id, cwd=root, env=env).stdout)
        failed = [job["name"] for job in shown["jobs"] if job["status"] == "failure"]
        logs = [run_cli("runs", "logs", run_id, "--job", name, cwd=root, env=env).stdout[-6000:]
                for name in failed]  # fmt: skip
        raise AssertionError(result.stderr + "\n".join(logs))
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def edge_port(project: tuple[Path, dict[str, str]]) -> int:
    _root, env = project
    info = json.loads((Path(env["BRANCHLINE_STATE_DIR"]) / "edge.json").read_text())
    return int(info["edge_port"])


def health(port: int, host: str) -> dict[str, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/health", headers={"Host": host})
    with urllib.request.urlopen(request, timeout=10) as answer:
        data: dict[str, Any] = json.loads(answer.read())
    return data


# What branchline gives a service (the rest of its environment is the machine's).
GIVEN = (
    "DATABASE_URL", "PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE",
    "API_URL", "API_HOST", "AUTH_URL", "AUTH_HOST", "WEB_URL", "WEB_HOST",
    "AUTH_SECRET", "PAYMENT_WEBHOOK_SECRET", "BRANCHLINE_ENVIRONMENT", "LOG_LEVEL",
)  # fmt: skip


def answers(port: int, host: str) -> dict[str, Any] | None:
    """The health answer through the edge, or None while nothing answers."""
    try:
        return health(port, host)
    except (urllib.error.URLError, OSError):
        return None


def live_pid(project: tuple[Path, dict[str, str]], service: str, environment: str) -> int:
    (live,) = [d for d in cli(project, "deployments", "list", "--env", environment)
               if d["service"] == service and d["status"] == "live"]  # fmt: skip
    return int(live["detail"]["pid"])


def given_to(
    project: tuple[Path, dict[str, str]], service: str, environment: str
) -> dict[str, str]:
    """The variables branchline gave the live process of `service`, read from the
    process itself."""
    raw = Path(f"/proc/{live_pid(project, service, environment)}/environ").read_bytes()
    env = dict(item.decode().split("=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {key: env.get(key, "") for key in GIVEN}


def test_push_then_a_pull_request_preview_from_open_to_close(
    project: tuple[Path, dict[str, str]],
) -> None:
    root, env = project
    cli(project, "db", "init")
    for name in ("AUTH_SECRET", "PAYMENT_WEBHOOK_SECRET"):
        done = run_cli("secret", "set", name, "--env", "production", cwd=root, env=env,
                       input=f"{name.lower()}-production-value\n")  # fmt: skip
        assert done.returncode == 0, done.stderr

    pushed = cli(project, "push", "main")
    assert [(r["workflow"], r["status"]) for r in pushed["runs"]] == [
        ("testing", "success"), ("production", "success"),
    ]  # fmt: skip
    run = cli(project, "runs", "show", str(pushed["runs"][0]["id"]))
    jobs = {job["name"]: job["status"] for job in run["jobs"]}
    assert jobs["integration"] == jobs["e2e"] == jobs["cleanup"] == "success"
    # The ephemeral branches are gone afterwards.
    assert [b["name"] for b in cli(project, "db", "branches", "list")] == ["production"]

    first = commit_on(root, "feature", {"services/web/NOTE": "v1\n"}, "a note")
    opened = cli(project, "pr", "open", "feature", "--title", "A note")
    assert [(r["workflow"], r["status"]) for r in opened["runs"]] == [
        ("testing", "success"), ("preview", "success"),
    ]  # fmt: skip
    tested = cli(project, "runs", "show", str(opened["runs"][0]["id"]))
    jobs = {job["name"]: job["status"] for job in tested["jobs"]}
    # Only web changed: only its unit tests ran (and E2E, which is about web).
    assert (jobs["unit-web"], jobs["unit-api"], jobs["e2e"]) == ("success", "skipped", "success")
    (preview,) = opened["previews"]
    urls = preview["urls"]
    assert sorted(urls) == list(SERVICES)
    port = edge_port(project)
    for service in SERVICES:
        host = f"{service}-preview-1.codex.localhost"
        assert urls[service] == f"http://{host}:{port}/"
        eventually(lambda h=host: health(port, h)["commit"] == first or None)

    second = commit_on(
        root, "feature",
        {"migrations/003_note.sql": "ALTER TABLE products ADD COLUMN note text;\n"},
        "products get a note",
    )  # fmt: skip
    synced = cli(project, "pr", "sync", "1")
    assert synced["previews"][0]["urls"] == urls
    for service in SERVICES:
        host = f"{service}-preview-1.codex.localhost"  # the edge switches on NOTIFY: moments
        eventually(lambda h=host: health(port, h)["commit"] == second or None)
    shown = cli(project, "pr", "show", "1")
    assert "note text" in shown["comments"][0]["body"]  # the migration, in the schema diff
    assert shown["statuses"][0]["state"] == "success"
    live = [d for d in cli(project, "deployments", "list", "--env", "preview-1")
            if d["status"] == "live"]  # fmt: skip
    pids = [ProcessId(d["detail"]["pid"], d["detail"]["start_time"]) for d in live]
    assert len(pids) == 3 and all(pid.alive() for pid in pids)
    # Whoever starts a service, it is given the same: the pipeline, `deploy`, `restart`
    # and `rollback` (before, `deploy` gave no secrets and no sibling URLs).
    given = {"pipeline": given_to(project, "api", "preview-1")}
    cli(project, "restart", "api", "--env", "preview-1")
    given["restart"] = given_to(project, "api", "preview-1")
    cli(project, "deploy", "api", "--env", "preview-1", "--commit", first)
    given["deploy"] = given_to(project, "api", "preview-1")
    cli(project, "rollback", "api", "--env", "preview-1")
    given["rollback"] = given_to(project, "api", "preview-1")
    # The supervisor's restart of a crashed service, in serve: the same again.
    crashed = live_pid(project, "api", "preview-1")
    os.kill(crashed, signal.SIGKILL)
    eventually(lambda: live_pid(project, "api", "preview-1") != crashed or None, timeout=20)
    eventually(lambda: answers(port, "api-preview-1.codex.localhost"), timeout=20)
    given["supervisor"] = given_to(project, "api", "preview-1")
    assert given["pipeline"]["AUTH_SECRET"] and given["pipeline"]["DATABASE_URL"]
    assert given["pipeline"]["AUTH_HOST"] == "auth-preview-1.codex.localhost"
    for how, seen in given.items():
        assert seen == given["pipeline"], how
    pids = [ProcessId(d["detail"]["pid"], d["detail"]["start_time"])
            for d in cli(project, "deployments", "list", "--env", "preview-1")
            if d["status"] == "live"]  # fmt: skip

    closed = cli(project, "pr", "close", "1")
    assert [(r["workflow"], r["status"]) for r in closed["runs"]] == [("cleanup", "success")]
    assert closed["previews"] == []
    assert [b["name"] for b in cli(project, "db", "branches", "list")] == ["production"]
    assert cli(project, "dns", "list", "--env", "preview-1") == []
    assert not any(pid.alive() for pid in pids)
    production = [d for d in cli(project, "deployments", "list", "--env", "production")
                  if d["status"] == "live"]  # fmt: skip
    assert len(production) == 3  # untouched by the preview's cleanup
    for service in SERVICES:
        with pytest.raises(urllib.error.HTTPError) as gone:
            health(port, f"{service}-preview-1.codex.localhost")
        assert gone.value.code == 404
    assert "Preview removed" in cli(project, "pr", "show", "1")["comments"][0]["body"]
