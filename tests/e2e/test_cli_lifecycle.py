"""`branchline stop` stops serve's workers and leaves the edge serving; `--all`
stops the edge too; `branchline down` stops everything the project started
(serve, services, branch clusters, spares, the state database), says what it left
on disk, and can run twice. The next `serve` brings the live services back."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from branchline.edge import daemon
from branchline.operations.lifecycle import disk_usage
from branchline.processes import ProcessId
from tests.codex_project import cli_env, make_project, served
from tests.codex_project import json_cli as cli
from tests.conftest import eventually, leftover_processes, run_cli


@pytest.fixture
def project(tmp_path: Path, state_dir: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    root = make_project(tmp_path / "codex", quick_tests=True)
    with served(root, cli_env(state_dir)) as both:
        yield both


def web_through_edge(port: int) -> int | None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/health", headers={"Host": "web.codex.localhost"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return int(answer.status)
    except OSError:
        return None


def live_web(project: tuple[Path, dict[str, str]]) -> dict[str, int]:
    """The live web process in production (a restart replaces it)."""
    listed = cli(project, "deployments", "list", "--env", "production")
    live = next(d for d in listed if d["service"] == "web" and d["status"] == "live")
    return {"pid": live["detail"]["pid"], "start_time": live["detail"]["start_time"]}


def test_stop_leaves_the_edge_serving_and_down_stops_everything(
    project: tuple[Path, dict[str, str]],
) -> None:
    root, env = project
    state_dir = Path(env["BRANCHLINE_STATE_DIR"])
    cli(project, "db", "init")
    deployed = cli(project, "deploy", "web", "--env", "production")
    web = ProcessId(deployed["detail"]["pid"], deployed["detail"]["start_time"])
    cli(project, "db", "branches", "create", "dev-lea")
    serve = daemon.read_info(state_dir)
    assert serve is not None and serve.workers

    stopped = cli(project, "stop")
    assert stopped == {"stopped": True, "workers": True, "edge": False}
    paused = daemon.read_info(state_dir)
    assert paused is not None and paused.pid == serve.pid and not paused.workers
    assert web_through_edge(serve.edge_port) == 200  # production is still reachable
    assert cli(project, "stop")["stopped"] is False  # twice is fine
    resumed = cli(project, "serve", "--detach")
    assert resumed["said"] == "workers resumed" and resumed["pid"] == serve.pid
    assert daemon.read_info(state_dir).workers  # type: ignore[union-attr]
    cli(project, "stop")
    # A command that needs the workers brings them back, and says so.
    again = run_cli("restart", "web", "--env", "production", cwd=root, env=env)
    assert again.returncode == 0, again.stderr
    assert "resumed branchline serve's workers in the background" in again.stderr
    assert daemon.read_info(state_dir).workers  # type: ignore[union-attr]
    web = ProcessId(**live_web(project))

    everything = cli(project, "stop", "--all")
    assert everything["stopped"] is True and daemon.read_info(state_dir) is None
    assert web.alive()  # services keep running: only `down` stops them

    down = cli(project, "down")
    assert down["stopped"]["serve"] is False  # stop --all did
    assert down["stopped"]["services"] == ["web in production"]
    assert {"production", "dev-lea"} <= set(down["stopped"]["clusters"])
    assert down["stopped"]["state_database"] == "stopped"
    assert down["left_on_disk"]["path"] == str(state_dir)
    assert down["left_on_disk"]["bytes"] == disk_usage(state_dir) > 10_000_000
    assert not web.alive()
    assert leftover_processes(state_dir) == []  # nothing of the project runs

    again = run_cli("down", cwd=root, env=env)
    assert again.returncode == 0 and "nothing was running" in again.stdout
    assert f"left on disk: {state_dir} (" in again.stdout

    # Data and records stayed: the next serve starts the live service again.
    back = cli(project, "serve", "--detach")
    assert eventually(lambda: web_through_edge(back["edge_port"]), timeout=30) == 200
