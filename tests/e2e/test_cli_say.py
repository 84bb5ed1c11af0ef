"""Commands say what happens: `push` on the production branch says it rolls out
(and `--no-deploy` tests only); `status` lists every live environment, a preview
deployed by hand included; `deployments history` holds deploys and rollbacks made
by hand; `rollback --to` takes the release name every listing shows; `env delete`
removes an environment that has no pull request."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from branchline.config import load_config
from branchline.kit import Kit
from branchline.store import Store, locate_state
from tests.codex_project import NOTHING, cli_env, git, leftovers, make_project, served
from tests.codex_project import json_cli as cli
from tests.conftest import run_cli


@pytest.fixture
def project(tmp_path: Path, state_dir: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    root = make_project(tmp_path / "codex", quick_tests=True)
    with served(root, cli_env(state_dir)) as both:
        yield both


def commit(root: Path, text: str) -> str:
    (root / "services" / "web" / "VERSION").write_text(text + "\n")
    git(root, "add", "-A")
    git(root, "commit", "-qm", text)
    return git(root, "rev-parse", "HEAD")


def test_push_to_the_production_branch_says_it_rolls_out_and_no_deploy_tests_only(
    project: tuple[Path, dict[str, str]],
) -> None:
    root, env = project
    cli(project, "db", "init")
    for name in ("AUTH_SECRET", "PAYMENT_WEBHOOK_SECRET"):
        done = run_cli("secret", "set", name, "--env", "production", cwd=root, env=env,
                       input=f"{name.lower()}-production-value\n")  # fmt: skip
        assert done.returncode == 0, done.stderr
    said = run_cli("push", "main", cwd=root, env=env)
    assert said.returncode == 0, said.stderr
    assert "testing, then a rollout to production (api, auth, web) when the tests pass" in (
        said.stdout
    )
    runs = {r["workflow"]: r for r in cli(project, "runs", "list")}
    assert runs["production"]["status"] == "success"

    sha = commit(root, "tests only")
    quiet = cli(project, "push", "main", "--no-deploy")
    assert quiet["recorded"]["deploys_to"] is None
    assert [r["workflow"] for r in quiet["runs"]] == ["testing"]  # no rollout followed
    assert quiet["runs"][0]["status"] == "success" and quiet["runs"][0]["sha"] == sha
    human = run_cli("push", "main", "--no-deploy", "--no-wait", cwd=root, env=env)
    assert "testing only (--no-deploy), production is not changed" in human.stdout
    live = {d["service"]: d for d in cli(project, "deployments", "list", "--env", "production")
            if d["status"] == "live"}  # fmt: skip
    assert live["web"]["release"]["commit"] != sha


def test_status_history_rollback_by_name_and_env_delete_without_a_pull_request(
    project: tuple[Path, dict[str, str]],
) -> None:
    root, env = project
    cli(project, "db", "init")
    first = cli(project, "deploy", "web", "--env", "production")["release"]["name"]
    commit(root, "second")
    second = cli(project, "deploy", "web", "--env", "production")["release"]["name"]
    wrong = run_cli("rollback", "web", "--to", "api@0123456789ab.1", cwd=root, env=env)
    assert wrong.returncode == 2 and "is a release of api, not of web" in wrong.stderr
    back = cli(project, "rollback", "web", "--to", first)
    assert back["release"]["name"] == first
    history = cli(project, "deployments", "history")
    assert [(h["kind"], h["status"], h["detail"]["releases"]["web"]) for h in history] == [
        ("rollback", "success", first), ("deploy", "success", second),
        ("deploy", "success", first),
    ]  # fmt: skip
    assert all(h["environment"] == "production" and "(cli)" in h["triggered_by"]
               for h in history)  # fmt: skip

    # A preview by hand: a branch and a service, no pull request.
    cli(project, "db", "branches", "create", "pr-41")
    cli(project, "db", "migrate", "pr-41")
    cli(project, "deploy", "web", "--env", "preview-41")
    listed = {e["name"]: e for e in cli(project, "status")["environments"]}
    assert [s["service"] for s in listed["preview-41"]["services"]] == ["web"]
    assert listed["preview-41"]["status"] == "live"
    human = run_cli("status", cwd=root, env=env).stdout
    assert "preview-41" in human and "none yet" not in human

    gone = cli(project, "env", "delete", "preview-41")
    assert [r["status"] for r in gone["runs"]] == ["success"]  # no foreign-key error
    assert gone["removed"]["services"] == ["web"] and "pr-41" in gone["removed"]["branches"]
    assert asyncio.run(_leftovers(root, env, 41)) == NOTHING
    assert "preview-41" not in {e["name"] for e in cli(project, "env", "list")}
    assert cli(project, "env", "delete", "preview-41")["runs"][0]["status"] == "success"
    refused = run_cli("env", "delete", "production", cwd=root, env=env)
    assert refused.returncode == 2 and "production cannot be deleted" in refused.stderr


async def _leftovers(root: Path, env: dict[str, str], pr: int) -> dict[str, list[str]]:
    store = Store(locate_state(root, env))
    await store.start()
    kit = Kit.build(load_config(root / "branchline.toml", env={}), store)
    try:
        return await leftovers(kit, pr)
    finally:
        await kit.aclose()
