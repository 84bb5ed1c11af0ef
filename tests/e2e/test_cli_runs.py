"""`branchline worker` and `branchline runs` end to end: real worker processes,
live logs through LISTEN/NOTIFY, cancel from the command line."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from branchline.engine.engine import Engine
from branchline.engine.model import Command, Job, RunIf, Step, Workflow
from branchline.store import Store, locate_state
from tests.conftest import ANY_FREE_PORT, run_cli

CONFIG = """\
[project]
name = "shop"
zone = "shop.localhost"

[database]
migrate = "true"

[services.api]
path = "api"
run = "python -m api"
"""


@pytest.fixture
def quiet_project(tmp_path: Path, state_dir: Path) -> Iterator[tuple[Path, dict[str, str], str]]:
    """The project with nothing running for it."""
    root, env, sha = _make(tmp_path, state_dir)
    try:
        yield root, env, sha
    finally:
        run_cli("stop", "--all", cwd=root, env=env)


@pytest.fixture
def project(tmp_path: Path, state_dir: Path) -> Iterator[tuple[Path, dict[str, str], str]]:
    """The project with a worker working its queue."""
    _make(tmp_path, state_dir)
    env = {"BRANCHLINE_STATE_DIR": str(state_dir)}
    sha = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True,
                         text=True, check=True).stdout.strip()  # fmt: skip
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BRANCHLINE_")}
    full_env.update(ANY_FREE_PORT)
    worker = subprocess.Popen(
        [sys.executable, "-m", "branchline", "worker", "--concurrency", "2"],
        cwd=tmp_path, env={**full_env, **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        yield tmp_path, env, sha
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        run_cli("stop", "--all", cwd=tmp_path, env=env)  # the worker started the edge


def _make(tmp_path: Path, state_dir: Path) -> tuple[Path, dict[str, str], str]:
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "x.txt").write_text("x")
    (tmp_path / "branchline.toml").write_text(CONFIG)
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    sha = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                         check=True).stdout.strip()  # fmt: skip
    env = {"BRANCHLINE_STATE_DIR": str(state_dir)}
    assert run_cli("status", cwd=tmp_path, env=env).returncode == 0
    return tmp_path, env, sha


def submit(root: Path, env: dict[str, str], sha: str, workflow: Workflow) -> int:
    async def go() -> int:
        store = Store(locate_state(root, env))
        await store.start()
        engine = Engine(store, project="shop")
        async with engine.open():
            return await engine.submit(workflow, triggered_by="test", repo=root, sha=sha)

    return asyncio.run(go())


def ticker(count: int, pause: float) -> Command:
    code = f"import time\nfor i in range({count}):\n    print('tick', i, flush=True)\n"
    code += f"    time.sleep({pause})\n"
    return Command(args=(sys.executable, "-c", code))


def test_logs_follow_a_run_live_and_show_its_tree(
    project: tuple[Path, dict[str, str], str],
) -> None:
    root, env, sha = project
    workflow = Workflow(
        "testing",
        (
            Job("unit", (Step("ticks", ticker(5, 0.3)),)),
            Job("report", (Step("r", Command(args=("git", "log", "--oneline"))),),
                needs=("unit",)),
        ),
    )  # fmt: skip
    run_id = submit(root, env, sha, workflow)
    began = time.monotonic()
    follow = run_cli("runs", "logs", str(run_id), "--follow", cwd=root, env=env)
    assert follow.returncode == 0, follow.stderr
    assert time.monotonic() - began >= 1.0  # it really waited for the lines
    for i in range(5):
        assert f"tick {i}" in follow.stdout
    assert "init" in follow.stdout  # the report job ran `git log` in a checkout
    shown = run_cli("--json", "runs", "show", str(run_id), cwd=root, env=env)
    data = json.loads(shown.stdout)
    assert data["status"] == "success"
    assert [j["status"] for j in data["jobs"]] == ["success", "success"]
    tree = run_cli("runs", "show", str(run_id), cwd=root, env=env)
    assert "unit" in tree.stdout and "report" in tree.stdout
    listed = json.loads(run_cli("--json", "runs", "list", cwd=root, env=env).stdout)
    assert listed[0]["id"] == run_id
    only = run_cli("--json", "runs", "logs", str(run_id), "--job", "unit", cwd=root, env=env)
    records = [json.loads(line) for line in only.stdout.splitlines()]
    # First, how the job's code runs (boxed); then its output.
    assert records[0]["stream"] == "system" and records[0]["line"].startswith("sandbox: ")
    assert [r["line"] for r in records[1:]] == [f"tick {i}" for i in range(5)]
    bad = run_cli("runs", "logs", str(run_id), "--job", "nope", cwd=root, env=env)
    assert bad.returncode == 2 and "unit" in bad.stderr


def test_cancel_and_rerun_from_the_command_line(
    project: tuple[Path, dict[str, str], str],
) -> None:
    root, env, sha = project
    workflow = Workflow(
        "slow",
        (
            Job("long", (Step("ticks", ticker(600, 0.1)),)),
            Job("cleanup", (Step("c", Command(args=("true",))),), needs=("long",),
                run_if=RunIf.ALWAYS),
        ),
    )  # fmt: skip
    run_id = submit(root, env, sha, workflow)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        data = json.loads(run_cli("--json", "runs", "show", str(run_id), cwd=root, env=env).stdout)
        if data["jobs"][0]["status"] == "running":
            break
        time.sleep(0.1)
    cancelled = run_cli("runs", "cancel", str(run_id), cwd=root, env=env)
    assert cancelled.returncode == 0 and "cancelling" in cancelled.stdout
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        data = json.loads(run_cli("--json", "runs", "show", str(run_id), cwd=root, env=env).stdout)
        if data["status"] != "running":
            break
        time.sleep(0.1)
    assert data["status"] == "cancelled"
    assert [j["status"] for j in data["jobs"]] == ["cancelled", "success"]
    again = json.loads(
        run_cli("--json", "runs", "rerun", str(run_id), "--no-wait", cwd=root, env=env).stdout
    )
    assert again["rerun_of"] == run_id and again["run"] != run_id
    run_cli("runs", "cancel", str(again["run"]), cwd=root, env=env)
    missing = run_cli("runs", "show", "999999", cwd=root, env=env)
    assert missing.returncode == 2 and "runs list" in missing.stderr


def test_a_rerun_with_nothing_running_starts_serve_and_waits_for_its_end(
    quiet_project: tuple[Path, dict[str, str], str],
) -> None:
    root, env, sha = quiet_project
    quick = Workflow("quick", (Job("one", (Step("say", Command(args=("echo", "hi"))),)),))
    run_id = submit(root, env, sha, quick)  # queued: nothing works the queue
    again = run_cli("--json", "runs", "rerun", str(run_id), cwd=root, env=env)
    assert again.returncode == 0, again.stderr
    data = json.loads(again.stdout)
    assert data["rerun_of"] == run_id
    assert [(r["id"], r["status"]) for r in data["runs"]] == [(data["run"], "success")]
    assert "started branchline serve in the background" in again.stderr


def test_runs_prune_deletes_what_is_past_its_retention(
    project: tuple[Path, dict[str, str], str],
) -> None:
    root, env, sha = project
    run_id = submit(root, env, sha, Workflow("quick", (Job("j", (Step("t", ticker(1, 0)),)),)))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        data = json.loads(run_cli("--json", "runs", "show", str(run_id), cwd=root, env=env).stdout)
        if data["status"] == "success":
            break
        time.sleep(0.1)
    kept = json.loads(run_cli("--json", "runs", "prune", cwd=root, env=env).stdout)
    assert kept["runs"] == 0  # 30 days by default
    config = root / "branchline.toml"
    config.write_text(config.read_text() + '\n[retention]\nruns = "1s"\n')
    time.sleep(1.5)
    pruned = run_cli("--json", "runs", "prune", cwd=root, env=env)
    assert pruned.returncode == 0, pruned.stderr
    assert json.loads(pruned.stdout)["runs"] == 1
    gone = run_cli("runs", "show", str(run_id), cwd=root, env=env)
    assert gone.returncode == 2 and "runs list" in gone.stderr
    said = run_cli("runs", "prune", cwd=root, env=env)
    assert "deleted 0 runs" in said.stdout
