"""Deploy, reach through the edge by host name, roll back, read logs, DNS and health:
the real commands, a real edge in the background, real service processes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from branchline.config import load_config
from branchline.edge import daemon
from branchline.environment import Environment
from branchline.providers.compute.local import LocalComputeProvider
from branchline.store import Store, locate_state
from tests.conftest import run_cli
from tests.integration.test_compute_local import APP, git

CONFIG = """\
[project]
name = "shop"
zone = "shop.localhost"

[database]
migrate = "true"

[services.api]
path = "services/api"
run = [{python}, "app.py"]
"""


def commit(repo: Path, greeting: str) -> str:
    app = repo / "services" / "api" / "app.py"
    app.parent.mkdir(parents=True, exist_ok=True)
    app.write_text(APP.format(greeting=greeting, healthy=True))
    git(repo, "add", ".")
    git(repo, "commit", "-qm", greeting)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def project(tmp_path: Path, state_dir: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    git(tmp_path, "init", "-q", "-b", "main")
    (tmp_path / "branchline.toml").write_text(CONFIG.format(python=json.dumps(sys.executable)))
    commit(tmp_path, "hello v1")
    env = {"BRANCHLINE_STATE_DIR": str(state_dir)}
    try:
        yield tmp_path, env
    finally:
        run_cli("stop", "--all", cwd=tmp_path, env=env)
        _delete_services(tmp_path, state_dir)


def _delete_services(root: Path, state_dir: Path) -> None:
    async def go() -> None:
        store = Store(locate_state(root, {"BRANCHLINE_STATE_DIR": str(state_dir)}))
        await store.start()
        config = load_config(root / "branchline.toml", env={})
        provider = LocalComputeProvider(
            config=config, store=store, state_dir=store.location.project_dir("shop")
        )
        for environment in (Environment.production(), Environment.preview(8)):
            await provider.delete("api", environment)

    asyncio.run(go())


def through_edge(port: int, host: str) -> dict[str, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Host": host})
    with urllib.request.urlopen(request, timeout=10) as answer:
        data: dict[str, Any] = json.loads(answer.read())
    return data


def cli(project: tuple[Path, dict[str, str]], *args: str) -> subprocess.CompletedProcess[str]:
    root, env = project
    result = run_cli(*args, cwd=root, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_deploy_rollback_logs_dns_and_health(project: tuple[Path, dict[str, str]]) -> None:
    root, env = project
    first = cli(project, "--json", "deploy", "api", "--env", "production")
    assert "started branchline serve in the background" in first.stderr
    info = daemon.read_info(Path(env["BRANCHLINE_STATE_DIR"]))
    assert info is not None
    deployed = json.loads(first.stdout)
    assert deployed["status"] == "live"
    assert deployed["url"] == f"http://api.shop.localhost:{info.edge_port}/"
    v1 = through_edge(info.edge_port, "api.shop.localhost")
    assert v1["greeting"] == "hello v1"
    # A secret changed under a running service: how to give it the value is said, for
    # production only (no preview runs).
    for target, warned in (("production", True), ("preview", False)):
        stored = run_cli("secret", "set", "EXTRA", "--env", target, cwd=root, env=env,
                         input="a value\n")  # fmt: skip
        assert stored.returncode == 0, stored.stderr
        said = "branchline restart --all --env production" in stored.stderr
        assert said is warned and ("restart" in stored.stderr) is warned, stored.stderr

    commit(root, "hello v2")
    cli(project, "deploy", "api", "--env", "production")
    assert through_edge(info.edge_port, "api.shop.localhost")["greeting"] == "hello v2"

    back = json.loads(cli(project, "--json", "rollback", "api", "--env", "production").stdout)
    assert back["release"]["commit"] == v1["commit"]
    assert through_edge(info.edge_port, "api.shop.localhost")["greeting"] == "hello v1"

    history = json.loads(
        cli(project, "--json", "deployments", "list", "--env", "production").stdout
    )
    assert [d["status"] for d in history][:3] == ["live", "rolled_back", "stopped"]
    assert all("vars" not in d["detail"] for d in history)
    releases = json.loads(cli(project, "--json", "releases", "list", "api").stdout)
    assert len(releases) == 2

    logs = cli(project, "logs", "api", "--env", "production")
    assert logs.returncode == 0
    missing = run_cli("logs", "api", "--env", "preview-8", cwd=root, env=env)
    assert missing.returncode == 2 and "deployments list" in missing.stderr

    cli(project, "dns", "ensure", "api-preview-8", "--proxied", "--env", "preview-8")
    verified = json.loads(
        cli(
            project, "--json", "dns", "verify", "api-preview-8", "--expect", "shop.localhost"
        ).stdout
    )
    assert verified["ok"] is True
    records = json.loads(cli(project, "--json", "dns", "list").stdout)
    assert [r["name"] for r in records] == ["api-preview-8.shop.localhost"]

    healthy = cli(
        project, "--json", "health", f"http://127.0.0.1:{info.edge_port}/health",
        "--host", "api.shop.localhost", "--expect-commit", v1["commit"],
    )  # fmt: skip
    assert json.loads(healthy.stdout)["healthy"] is True
    wrong = run_cli(
        "health", f"http://127.0.0.1:{info.edge_port}/health", "--host", "api.shop.localhost",
        "--expect-commit", "0" * 40, "--retries", "0", cwd=root, env=env,
    )  # fmt: skip
    assert wrong.returncode == 1

    unknown = urllib.request.Request(
        f"http://127.0.0.1:{info.edge_port}/", headers={"Host": "nope.shop.localhost"}
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(unknown, timeout=10)
    assert err.value.code == 404 and b"api.shop.localhost" in err.value.read()

    stopped = cli(project, "stop", "--all")
    assert "serve stopped" in stopped.stdout
    assert daemon.read_info(Path(env["BRANCHLINE_STATE_DIR"])) is None
