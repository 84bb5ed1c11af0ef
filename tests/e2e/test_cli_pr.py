"""The local code host through the CLI: pushes, pull requests, a real merge, and
events recorded exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import pytest

from branchline.config import load_config
from branchline.events import PullRequestChanged, Push
from branchline.providers.registry import forge_provider
from branchline.store import Store, locate_state
from branchline.store import forge as rows
from tests.conftest import run_cli
from tests.integration.test_compute_local import git

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
def project(tmp_path: Path, state_dir: Path) -> tuple[Path, dict[str, str]]:
    git(tmp_path, "init", "-q", "-b", "main")
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "app.py").write_text("v1\n")
    (tmp_path / "branchline.toml").write_text(CONFIG)
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "first")
    git(tmp_path, "switch", "-q", "-c", "feature/login")
    (tmp_path / "api" / "login.py").write_text("login\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "login")
    git(tmp_path, "switch", "-q", "main")
    return tmp_path, {"BRANCHLINE_STATE_DIR": str(state_dir)}


def cli(project: tuple[Path, dict[str, str]], *args: str) -> subprocess.CompletedProcess[str]:
    """The command; pushes and pull request changes only record their events here
    (--no-wait): these tests are about the code host, not the pipelines."""
    root, env = project
    records = {"open", "sync", "close", "push"} & set(args) and "--hook" not in args
    return run_cli(*args, *(["--no-wait"] if records else []), cwd=root, env=env)


def events(project: tuple[Path, dict[str, str]]) -> list[rows.EventRow]:
    root, env = project

    async def go() -> list[rows.EventRow]:
        store = Store(locate_state(root, env))
        await store.start()
        async with store.connect() as conn:
            return await rows.events(conn, "shop")

    return asyncio.run(go())


def test_pull_request_lifecycle_with_a_real_merge(project: tuple[Path, dict[str, str]]) -> None:
    root, _ = project
    opened = cli(project, "--json", "pr", "open", "feature/login", "--title", "Log in")
    assert opened.returncode == 0, opened.stderr
    pr = json.loads(opened.stdout)["pr"]
    assert pr["number"] == 1 and pr["head"] == "feature/login" and pr["base"] == "main"
    again = cli(project, "pr", "open", "feature/login")
    assert again.returncode == 2 and "pr sync 1" in again.stderr

    nothing = cli(project, "--json", "pr", "sync", "1")
    assert json.loads(nothing.stdout)["event"] is None
    git(root, "switch", "-q", "feature/login")
    (root / "api" / "login.py").write_text("login v2\n")
    git(root, "commit", "-qam", "login v2")
    git(root, "switch", "-q", "main")
    synced = json.loads(cli(project, "--json", "pr", "sync", "1").stdout)
    assert synced["event"]["action"] == "synchronize"
    assert synced["pr"]["sha"] == git(root, "rev-parse", "feature/login")
    # No new commit, yet run again on purpose (a fixed config, a flaky test).
    again_synced = cli(project, "pr", "sync", "1", "--again")
    assert "again at" in again_synced.stdout, again_synced.stderr

    before = git(root, "rev-parse", "main")
    closed = cli(project, "--json", "pr", "close", "1", "--merge")
    assert closed.returncode == 0, closed.stderr
    kinds = [(e["event"]["kind"], e["event"]["action"]) for e in json.loads(closed.stdout)]
    assert kinds == [("pull_request", "closed"), ("push", None)]
    after = git(root, "rev-parse", "main")
    assert after != before
    assert git(root, "rev-parse", f"{after}^2") == git(root, "rev-parse", "feature/login")
    assert (root / "api" / "login.py").read_text() == "login v2\n"  # the checkout followed
    shown = json.loads(cli(project, "--json", "pr", "show", "1").stdout)
    assert shown["state"] == "merged"
    assert cli(project, "pr", "close", "1").returncode == 2  # already merged

    recorded = events(project)
    assert [(e.kind, e.action) for e in recorded] == [
        ("pull_request", "opened"), ("pull_request", "synchronize"),
        ("pull_request", "synchronize"), ("pull_request", "closed"), ("push", None),
    ]  # fmt: skip
    merged, pushed = recorded[3].event, recorded[4].event
    assert isinstance(merged, PullRequestChanged) and merged.merged is True
    assert isinstance(pushed, Push) and pushed.after == after and pushed.branch == "main"
    assert len({e.delivery_id for e in recorded}) == len(recorded)


def test_a_hook_push_is_recorded_once_per_commit(project: tuple[Path, dict[str, str]]) -> None:
    first = json.loads(cli(project, "--json", "push", "--hook").stdout)
    assert first["event"]["kind"] == "push"
    replay = cli(project, "push", "--hook")
    assert replay.returncode == 0 and "recorded before" in replay.stdout
    plain = json.loads(cli(project, "--json", "push", "feature/login").stdout)
    assert plain["event"] is not None
    assert len(events(project)) == 2
    missing = cli(project, "push", "no-such-branch")
    assert missing.returncode == 2 and "no branch" in missing.stderr


def test_merge_refuses_a_dirty_checkout(project: tuple[Path, dict[str, str]]) -> None:
    root, _ = project
    assert cli(project, "pr", "open", "feature/login").returncode == 0
    (root / "api" / "app.py").write_text("uncommitted\n")
    refused = cli(project, "pr", "close", "1", "--merge")
    assert refused.returncode == 2 and "uncommitted changes" in refused.stderr
    assert (root / "api" / "app.py").read_text() == "uncommitted\n"  # nothing lost
    shown = json.loads(cli(project, "--json", "pr", "show", "1").stdout)
    assert shown["state"] == "open"


def test_comments_are_sticky_and_statuses_shown(project: tuple[Path, dict[str, str]]) -> None:
    root, env = project
    assert cli(project, "pr", "open", "feature/login").returncode == 0

    async def post() -> int:
        store = Store(locate_state(root, env))
        await store.start()
        forge = forge_provider(load_config(root / "branchline.toml", env={}), store)
        sha = git(root, "rev-parse", "feature/login")
        await forge.upsert_comment(1, "preview", "Preview: building")
        await forge.upsert_comment(1, "preview", "Preview: ready at http://api-preview-1")
        await forge.set_status(sha, "branchline/testing", "success", "http://runs/1")
        return await forge.create_issue("Deploy failed", "rolled back", ["incident"])

    assert asyncio.run(post()) == 1
    shown = json.loads(cli(project, "--json", "pr", "show", "1").stdout)
    assert [c["body"] for c in shown["comments"]] == ["Preview: ready at http://api-preview-1"]
    assert shown["statuses"][0]["state"] == "success"
    human = cli(project, "pr", "show", "1")
    assert "branchline/testing: success" in human.stdout


def test_init_hooks_record_a_push_on_every_commit(project: tuple[Path, dict[str, str]]) -> None:
    root, env = project
    installed = json.loads(cli(project, "--json", "init", "--hooks", str(root)).stdout)
    assert [Path(p).name for p in installed["hooks"]] == ["post-commit", "post-merge"]
    hook_env = {**os.environ, **env}
    for i in range(2):
        (root / "api" / f"n{i}.py").write_text(f"{i}\n")
        subprocess.run(["git", "-C", str(root), "add", "."], check=True)
        subprocess.run(
            ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t",
             "commit", "-qm", f"change {i}"],
            check=True, env=hook_env,
        )  # fmt: skip
    recorded = events(project)
    assert [e.kind for e in recorded] == ["push", "push"]
    last = recorded[-1].event
    assert isinstance(last, Push) and last.after == git(root, "rev-parse", "HEAD")
    assert all(e.source == "hook" for e in recorded)
    # A hook of someone else's is never overwritten.
    foreign = root / ".git" / "hooks" / "post-commit"
    foreign.write_text("#!/bin/sh\necho mine\n")
    refused = cli(project, "init", "--hooks", str(root))
    assert refused.returncode == 2 and "not written by branchline" in refused.stderr
    assert foreign.read_text() == "#!/bin/sh\necho mine\n"


DOOR_CHECKS = [
    (("pr", "open", "a..b"), "'a..b' is not a git branch name: it contains '..'"),
    (("pr", "open", "evil\nbranch"), "'evil\\nbranch' is not a git branch name"),
    (("push", "x.lock"), "it ends with '.lock'"),
    (("push", "-x"), "No such option"),  # typer's: an option, never a branch
    (("push", "--no-wait", "--", "-x"), "it starts with '-'"),
    (("pr", "sync", "0"), "Invalid pull request number 0"),
    (("pr", "close", "2147483648"), "Invalid pull request number 2147483648"),
    (("pr", "show", "0"), "Invalid pull request number 0"),
    (("pr", "approve", "--", "-1"), "Invalid pull request number -1"),
]


def test_refs_and_pr_numbers_are_checked_at_the_door(
    project: tuple[Path, dict[str, str]],
) -> None:
    root, env = project
    for args, says in DOOR_CHECKS:
        refused = run_cli(*args, cwd=root, env=env)
        assert refused.returncode == 2, (args, refused.stdout + refused.stderr)
        assert says in refused.stderr, (args, refused.stderr)
        assert "internal error" not in refused.stderr
    assert events(project) == []


def test_listings_escape_what_rows_from_before_the_checks_hold(
    project: tuple[Path, dict[str, str]],
) -> None:
    """Rows stored before names were checked (a newline in a branch, a terminal escape
    in a title or a ref) are shown escaped, one line each, by `pr list` and
    `runs list`."""
    root, env = project

    async def old_row() -> None:
        store = Store(locate_state(root, env))
        await store.start()
        async with store.connect() as conn:
            await conn.execute(
                "INSERT INTO branchline.pull_requests (project, number, title, head_branch, "
                "base_branch, head_sha) VALUES ('shop', 1, %s, %s, 'main', %s)",
                ("\x1b[2Jwiped", "evil\nbranch", "a" * 40),
            )
            await conn.execute(
                "INSERT INTO branchline.runs (project, workflow, triggered_by, ref, status) "
                "VALUES ('shop', 'testing', 'push', %s, 'success')",
                ("evil\nbranch..\x1b[31mred",),
            )

    asyncio.run(old_row())
    runs = run_cli("runs", "list", cwd=root, env={**env, "COLUMNS": "200"})  # no wrapping
    assert runs.returncode == 0, runs.stderr
    (run,) = [line for line in runs.stdout.splitlines() if "testing" in line]
    assert "evil\\nbranch..\\x1b[31mred" in run and "\x1b" not in runs.stdout
    shown = cli(project, "pr", "list")
    assert shown.returncode == 0, shown.stderr
    assert "\x1b" not in shown.stdout and "\\x1b[2Jwiped" in shown.stdout
    assert "evil\\nbranch" in shown.stdout
    row = [line for line in shown.stdout.splitlines() if "wiped" in line]
    assert len(row) == 1 and "evil\\nbranch" in row[0]
