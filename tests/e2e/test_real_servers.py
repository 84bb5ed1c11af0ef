"""Real app servers with worker processes, deployed as users deploy them: gunicorn
and uvicorn with two workers each, a server that daemonises, one slow to shut down.
Each is one deployment that owns its whole process tree: its workers are never taken
for strays, reconcile never holds the edge, a stop ends every process of it, and
nothing starts it again behind cleanup's back."""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from branchline import processes
from branchline.config import load_config
from branchline.edge import daemon
from branchline.environment import Environment
from branchline.kit import Kit
from branchline.store import Store, locate_state
from tests.codex_project import cli_env, git, stop_serve_and_services
from tests.conftest import REPO, eventually, run_cli

APPS = REPO / "tests" / "apps"
VENV_BIN = Path(sys.executable).parent

CONFIG = """\
[project]
name = "servers"
zone = "servers.localhost"

[database]
migrate = "true"

[security]
# Declared, not inherited: the servers come from the test's virtualenv.
path = [{venv_bin}, "/usr/bin", "/bin"]

[services.gunicorn]
path = "services/gunicorn"
run = ["gunicorn", "--workers", "2", "--graceful-timeout", "1", "wsgi_app:application"]
health_path = "/"
# Django's recipe: the public host name of whichever environment this runs in.
env = {{ ALLOWED_HOSTS = "{{{{ host }}}}" }}

[services.uvicorn]
path = "services/uvicorn"
run = ["uvicorn", "asgi_app:app", "--workers", "2", "--host", "127.0.0.1",
       "--port", "{{{{ port }}}}"]
health_path = "/"
env = {{ ALLOWED_HOSTS = "{{{{ host }}}}" }}

[services.daemon]
path = "services/daemon"
run = ["python3", "plain_server.py", "--daemonise"]
health_path = "/"

[services.slow]
path = "services/slow"
run = ["python3", "plain_server.py", "--slow-stop"]
health_path = "/"
"""
FILES = {
    "gunicorn": ("hosts.py", "wsgi_app.py"),
    "uvicorn": ("hosts.py", "asgi_app.py"),
    "daemon": ("hosts.py", "plain_server.py"),
    "slow": ("hosts.py", "plain_server.py"),
}


@pytest.fixture
def project(tmp_path: Path, state_dir: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    root = tmp_path / "servers"
    for service, files in FILES.items():
        (root / "services" / service).mkdir(parents=True)
        for name in files:
            shutil.copy(APPS / name, root / "services" / service / name)
    (root / "branchline.toml").write_text(CONFIG.format(venv_bin=json.dumps(str(VENV_BIN))))
    git(root, "init", "-q", "-b", "main")
    git(root, "add", ".")
    git(root, "commit", "-qm", "servers")
    # Reconcile every second, so that a test sees several passes.
    env = {**cli_env(state_dir), "BRANCHLINE_RECONCILE_EVERY": "1"}
    try:
        yield root, env
    finally:
        stop_serve_and_services(root, env)


def cli(project: tuple[Path, dict[str, str]], *args: str) -> str:
    root, env = project
    result = run_cli(*args, cwd=root, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@dataclass
class Poller:
    """A client asking the edge every 50 ms, as a user's browser would, timing each
    answer."""

    port: int
    hosts: list[str]
    every: float = 0.05
    timings: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        turn = 0
        while not self._stop.is_set():
            host = self.hosts[turn % len(self.hosts)]
            turn += 1
            request = urllib.request.Request(
                f"http://127.0.0.1:{self.port}/", headers={"Host": host}
            )
            began = time.monotonic()
            try:
                with urllib.request.urlopen(request, timeout=5) as answer:
                    json.loads(answer.read())
                self.timings.append(time.monotonic() - began)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                self.failures.append(f"{host}: {exc}")
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()


def reconcile_passes(state_dir: Path) -> int:
    log = state_dir / "edge.log"
    return log.read_text().count("reconcile pass:") if log.exists() else 0


def test_worker_servers_live_through_reconcile_with_a_responsive_edge(
    project: tuple[Path, dict[str, str]],
) -> None:
    _root, env = project
    state_dir = Path(env["BRANCHLINE_STATE_DIR"])
    for service in ("gunicorn", "uvicorn"):
        deployed = json.loads(cli(project, "--json", "deploy", service, "--env", "production"))
        assert deployed["status"] == "live", deployed
    info = daemon.read_info(state_dir)
    assert info is not None
    hosts = ["gunicorn.servers.localhost", "uvicorn.servers.localhost"]
    trees = _trees(project)
    # keeper, server, two workers (and the sandbox's own two): at least four each.
    assert len(trees) == 2 and all(len(pids) >= 4 for pids in trees.values()), trees
    poller = Poller(info.edge_port, hosts)
    thread = threading.Thread(target=poller.run)
    before = reconcile_passes(state_dir)
    window_start = len((state_dir / "edge.log").read_text())
    thread.start()
    try:
        # Three passes of reconcile (every second here) while the client polls.
        eventually(lambda: reconcile_passes(state_dir) >= before + 3 or None, timeout=30)
        time.sleep(0.5)
    finally:
        poller.stop()
        thread.join()
    log = (state_dir / "edge.log").read_text()
    assert not poller.failures, poller.failures[:5]
    timings = sorted(poller.timings)
    p99 = timings[int(len(timings) * 0.99) - 1]
    assert len(timings) > 40
    assert p99 < 0.05, (
        f"edge p99 {p99 * 1e3:.0f} ms (median {statistics.median(timings) * 1e3:.1f})"
    )
    assert timings[-1] < 0.1, f"a request took {timings[-1] * 1e3:.0f} ms"
    # Only the polling window: deploying before it is not what is measured here.
    assert "event loop stalled" not in log[window_start:], log[window_start:]
    # Every process of both servers (the master and its two workers, in their box) is
    # the one that ran before: none was taken for a stray, nothing was restarted.
    assert "no deployment knows it" not in log
    assert _trees(project) == trees, "a server's processes changed during reconcile"


def test_a_daemonising_server_is_one_deployment_and_stops_for_good(
    project: tuple[Path, dict[str, str]],
) -> None:
    root, env = project
    state_dir = Path(env["BRANCHLINE_STATE_DIR"])
    deployed = json.loads(cli(project, "--json", "deploy", "daemon", "--env", "production"))
    assert deployed["status"] == "live", deployed
    info = daemon.read_info(state_dir)
    assert info is not None
    first = _answer(info.edge_port, "daemon.servers.localhost")
    before = reconcile_passes(state_dir)
    eventually(lambda: reconcile_passes(state_dir) >= before + 2 or None, timeout=30)
    # Its first process exited long ago: the daemon is still the same process, and
    # nothing was restarted on top of it.
    assert _answer(info.edge_port, "daemon.servers.localhost")["pid"] == first["pid"]
    listed = json.loads(cli(project, "--json", "deployments", "list", "--env", "production"))
    live = next(d for d in listed if d["status"] == "live")
    assert "crashes" not in live["detail"]
    tree = live["detail"]["tree"]
    assert _tree(tree), "its processes carry its tree tag"

    asyncio.run(_delete(root, env, "daemon", Environment.production()))
    assert not _tree(tree), "a process of the daemon outlived its stop"
    before = reconcile_passes(state_dir)
    eventually(lambda: reconcile_passes(state_dir) >= before + 2 or None, timeout=30)
    assert not [pid for pid in _tree_prefix(state_dir) if pid], "something started it again"


async def _delete(root: Path, env: dict[str, str], service: str, environment: Environment) -> None:
    """What removing a service from an environment does (a preview's cleanup does it
    for each of its services)."""
    store = Store(locate_state(root, env))
    await store.start()
    config = load_config(root / "branchline.toml", env={})
    kit = Kit.build(config, store, edge_port=None, dns_port=None)
    try:
        await kit.compute.delete(service, environment)
    finally:
        await kit.aclose()


def _tree_prefix(state_dir: Path) -> list[int]:
    prefix = processes.tree_prefix(state_dir / "projects" / "servers")
    return [pid for t in processes.trees(prefix) for pid in t.pids]


def test_health_is_checked_under_the_public_host_name(
    project: tuple[Path, dict[str, str]],
) -> None:
    """A release that accepts its public host name passes; one that refuses it (an
    ALLOWED_HOSTS that names only localhost) answers 400 to every user, so it fails
    its check, at once, saying what it answered, and the live release keeps serving."""
    root, env = project
    state_dir = Path(env["BRANCHLINE_STATE_DIR"])
    cli(project, "deploy", "gunicorn", "--env", "production")
    info = daemon.read_info(state_dir)
    assert info is not None
    good = _answer(info.edge_port, "gunicorn.servers.localhost")
    config = root / "branchline.toml"
    config.write_text(
        config.read_text().replace(
            'env = { ALLOWED_HOSTS = "{{ host }}" }', 'env = { ALLOWED_HOSTS = "localhost" }', 1
        )
    )
    git(root, "commit", "-qam", "only localhost")
    began = time.monotonic()
    failed = run_cli("--json", "deploy", "gunicorn", "--env", "production", cwd=root, env=env)
    took = time.monotonic() - began
    assert failed.returncode != 0
    error = json.loads(failed.stderr[failed.stderr.index("{") :])
    assert "HTTP 400 3 times in a row" in error["message"], error
    assert took < 15, f"a deterministic failure took {took:.1f} s"
    attempts = error["health"]["attempts"] if "health" in error else None
    assert attempts is None or "invalid HTTP_HOST" in attempts[0]["body"]
    assert _answer(info.edge_port, "gunicorn.servers.localhost")["commit"] == good["commit"]


def test_a_service_slow_to_stop_is_never_started_again_by_the_supervisor(
    project: tuple[Path, dict[str, str]],
) -> None:
    """Cleanup stops a preview's service that takes a second to shut down, while
    serve's supervisor looks every second for live services whose process is gone:
    the deployment says it is stopping before any signal, so nothing restarts it."""
    root, env = project
    state_dir = Path(env["BRANCHLINE_STATE_DIR"])
    preview = Environment.preview(8)
    deployed = json.loads(cli(project, "--json", "deploy", "slow", "--env", preview.name))
    tree = deployed["detail"]["tree"]
    assert _tree(tree)
    began = time.monotonic()
    asyncio.run(_delete(root, env, "slow", preview))
    assert time.monotonic() - began >= 1.0, "it was killed, not let to shut down"
    assert not _tree(tree)
    time.sleep(3.5)  # three supervision passes
    listed = json.loads(cli(project, "--json", "deployments", "list", "--env", preview.name))
    assert [d["status"] for d in listed] == ["stopped"], listed
    prefix = processes.tree_prefix(state_dir / "projects" / "servers")
    assert not processes.trees(prefix), "the supervisor started it again"
    assert "restarting" not in Path(listed[0]["detail"]["log"]).read_text()


def _trees(project: tuple[Path, dict[str, str]]) -> dict[str, set[int]]:
    """The processes of each live deployment, found by its tree tag."""
    listed = json.loads(cli(project, "--json", "deployments", "list", "--env", "production"))
    return {
        d["service"]: set(_tree(d["detail"]["tree"]))
        for d in listed if d["status"] == "live" and "crashes" not in d["detail"]
    }  # fmt: skip


def _answer(port: int, host: str) -> dict[str, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Host": host})
    with urllib.request.urlopen(request, timeout=5) as answer:
        data: dict[str, Any] = json.loads(answer.read())
    return data


def _tree(tag: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                items = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"{processes.TREE_VARIABLE}={tag}".encode() in items:
                found.append(int(entry.name))
    return found
