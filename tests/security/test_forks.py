"""A pull request from a fork: its tests run without secrets, it gets no preview
until a writer approves its head commit, and a new commit needs a new approval."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.codex_project import (
    cli_env,
    commit_on,
    git,
    make_project,
    served,
)
from tests.conftest import run_cli

SAYS = ["python", "-c", "import os; print('has secret:', bool(os.environ.get('AUTH_SECRET')))"]


@pytest.fixture
def project(tmp_path: Path, state_dir: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    root = make_project(tmp_path / "codex", quick_tests=True)
    config = root / "branchline.toml"
    config.write_text(config.read_text().replace(
        """command = ["python", "-c", "print('quick test ok')"]""", f"command = {json.dumps(SAYS)}"
    ))  # fmt: skip
    git(root, "commit", "-qam", "a test that says whether it got a secret")
    with served(root, cli_env(state_dir)) as project:
        yield project


def cli(project: tuple[Path, dict[str, str]], *args: str) -> Any:
    root, env = project
    result = run_cli("--json", *args, cwd=root, env=env)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return json.loads(result.stdout)


def said(project: tuple[Path, dict[str, str]], run_id: int) -> str:
    root, env = project
    logs = run_cli("runs", "logs", str(run_id), cwd=root, env=env).stdout
    return next(line for line in logs.splitlines() if "has secret:" in line)


def approval_status(shown: Any) -> tuple[str, str]:
    """The state and description of the head commit's `branchline/fork-approval`."""
    (status,) = [s for s in shown["statuses"] if s["context"] == "branchline/fork-approval"]
    return status["state"], status["description"]


def test_a_forks_code_gets_no_secrets_and_no_preview_until_approved(
    project: tuple[Path, dict[str, str]],
) -> None:
    cli(project, "db", "init")
    root, _env = project
    commit_on(root, "theirs", {"NOTE": "from a fork\n"}, "a fork's change")
    opened = cli(project, "pr", "open", "theirs", "--from-fork")
    assert [(r["workflow"], r["status"]) for r in opened["runs"]] == [("testing", "success")]
    assert said(project, opened["runs"][0]["id"]).endswith("has secret: False")
    assert opened["previews"] == []  # tested, not previewed
    shown = cli(project, "pr", "show", "1")
    assert shown["preview"] is None and shown["fork"] is True
    assert approval_status(shown) == ("pending", "waiting for approval: a writer adds the "
                                      "safe-to-preview label")  # fmt: skip

    approved = cli(project, "pr", "approve", "1", "--by", "a-writer")
    assert [(r["workflow"], r["status"]) for r in approved["runs"]] == [("preview", "success")]
    (preview,) = approved["previews"]
    assert sorted(preview["urls"]) == ["api", "auth", "web"]
    state, description = approval_status(cli(project, "pr", "show", "1"))
    assert state == "success" and description.startswith("approved by a-writer at ")

    # A new commit: tested without secrets again; its preview waits for a new approval.
    commit_on(root, "theirs", {"NOTE": "changed again\n"}, "more from the fork")
    synced = cli(project, "pr", "sync", "1")
    assert [r["workflow"] for r in synced["runs"]] == ["testing"]
    assert said(project, synced["runs"][0]["id"]).endswith("has secret: False")
    assert approval_status(cli(project, "pr", "show", "1"))[0] == "pending"
    again = cli(project, "pr", "approve", "1", "--by", "a-writer")
    assert [r["workflow"] for r in again["runs"]] == ["preview"]


def test_a_trusted_pull_requests_tests_get_their_secrets(
    project: tuple[Path, dict[str, str]],
) -> None:
    cli(project, "db", "init")
    root, _env = project
    commit_on(root, "ours", {"NOTE": "ours\n"}, "our change")
    opened = cli(project, "pr", "open", "ours", "--no-wait")
    assert opened["pr"]["fork"] is False
    pushed = cli(project, "push", "ours")
    testing = [r for r in pushed["runs"] if r["workflow"] == "testing"]
    assert testing and said(project, testing[0]["id"]).endswith("has secret: True")
