"""Races and honest errors through the real CLI: two `pr open` of one branch at the
same moment make one pull request and one preview; a branch asked for with another
parent than it has is an error naming both; a program that cannot be started is
said so with a hint, never as a bug in branchline."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from branchline.store import Store, locate_state
from tests.codex_project import cli_env, commit_on, git, make_project, stop_serve_and_services
from tests.conftest import ANY_FREE_PORT, eventually, run_cli

pytestmark = pytest.mark.integration
Project = tuple[Path, dict[str, str]]


@pytest.fixture
def codex(tmp_path: Path, state_dir: Path) -> Iterator[Project]:
    root = make_project(tmp_path / "codex", quick_tests=True)
    env = cli_env(state_dir)
    try:
        yield root, env
    finally:
        stop_serve_and_services(root, env)


def cli(project: Project, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    root, env = project
    done = run_cli(*args, cwd=root, env=env)
    assert done.returncode == code, done.stdout + done.stderr
    return done


def listed(project: Project, *args: str) -> Any:
    return json.loads(cli(project, "--json", *args).stdout)


def test_two_pr_opens_at_once_make_one_pull_request_and_one_preview(codex: Project) -> None:
    root, env = codex
    cli(codex, "db", "init")
    commit_on(root, "feature", {"README.md": "a change\n"}, "a change")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BRANCHLINE_")}
    full_env |= {**ANY_FREE_PORT, **env}
    store = Store(locate_state(root, env))
    asyncio.run(store.start())
    # The lock that numbers pull requests, held here while both processes start: each
    # gets as far as it can before inserting, so the two meet in the database every
    # time (without it they rarely overlap, and a check-then-insert would pass).
    with psycopg.connect(store.url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(hashtextextended('branchline:pr:codex', 0))")
        # Both run the pipelines they start (no --no-wait), as two people would.
        command = [sys.executable, "-m", "branchline", "--json", "pr", "open", "feature"]
        both = [subprocess.Popen(command, cwd=root, env=full_env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
        eventually(lambda: waiting_for_the_lock(holder) == 2 or None, timeout=60)
        holder.execute("SELECT pg_advisory_unlock_all()")
    said = [p.communicate(timeout=300) for p in both]
    outcomes = [(p.returncode, out, err) for p, (out, err) in zip(both, said, strict=True)]
    codes = sorted(code for code, _out, _err in outcomes)
    assert codes == [0, 2], outcomes
    (won,) = [out for code, out, _err in outcomes if code == 0]
    (lost,) = [err for code, _out, err in outcomes if code == 2]
    assert "pull request #1 is already open for 'feature'" in lost and "pr sync 1" in lost
    assert "internal error" not in lost
    opened = json.loads(won)
    assert [(r["workflow"], r["status"]) for r in opened["runs"]] == [
        ("testing", "success"), ("preview", "success"),
    ]  # fmt: skip

    assert [(p["number"], p["head"]) for p in listed(codex, "pr", "list")] == [(1, "feature")]
    runs = [r["workflow"] for r in listed(codex, "runs", "list")]
    assert sorted(runs) == ["preview", "testing"]
    previews = [e["name"] for e in listed(codex, "env", "list") if e["name"].startswith("prev")]
    assert previews == ["preview-1"]
    branches = sorted(b["name"] for b in listed(codex, "db", "branches", "list"))
    assert branches == ["pr-1", "production"]


def waiting_for_the_lock(conn: psycopg.Connection[Any]) -> int:
    found = conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    ).fetchone()
    return int(found[0]) if found else 0


def test_a_branch_asked_for_with_another_parent_is_an_error_naming_both(codex: Project) -> None:
    cli(codex, "db", "init")
    cli(codex, "db", "branches", "create", "dev-a")
    made = listed(codex, "db", "branches", "create", "dup", "--parent", "dev-a")
    assert made["parent"] == "dev-a"
    refused = cli(codex, "db", "branches", "create", "dup", "--parent", "production", code=2)
    said = refused.stderr
    assert "'dup' already exists with parent 'dev-a', not 'production'" in said, said
    assert "branches delete dup" in said and "internal error" not in said
    again = cli(codex, "db", "branches", "create", "dup", "--parent", "dev-a")
    assert "exists already: branch dup (parent dev-a)" in " ".join(again.stdout.split())
    assert listed(codex, "db", "branches", "create", "dup")["parent"] == "dev-a"
    parents = {b["name"]: b["parent"] for b in listed(codex, "db", "branches", "list")}
    assert parents == {"production": None, "dev-a": "production", "dup": "dev-a"}


SMALL = """\
[project]
name = "shop"
zone = "shop.localhost"

[database]
migrate = "true"

[services.api]
path = "api"
build = ["./build.sh"]
run = ["no-such-server", "--port", "$PORT"]

[security]
sandbox = "off"   # the program is started by Python itself: its own error is seen
"""


@pytest.fixture
def small(tmp_path: Path, state_dir: Path) -> Iterator[Project]:
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "build.sh").write_text("#!/bin/sh\necho built\n")  # not executable
    (tmp_path / "branchline.toml").write_text(SMALL)
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "first")
    env = {"BRANCHLINE_STATE_DIR": str(state_dir)}
    try:
        yield tmp_path, env
    finally:
        stop_serve_and_services(tmp_path, env)


def test_programs_that_cannot_be_started_are_said_so_with_a_hint(small: Project) -> None:
    root, _env = small
    built = cli(small, "deploy", "api", "--env", "production", code=1)
    said = " ".join(built.stderr.split())
    assert "cannot run the build command './build.sh': Permission denied" in said, said
    assert "chmod +x" in said and "internal error" not in said and "bug" not in said
    (root / "api" / "build.sh").chmod(0o755)
    git(root, "add", ".")
    git(root, "commit", "-qm", "executable")
    started = cli(small, "deploy", "api", "--env", "production", code=1)
    said = " ".join(started.stderr.split())
    assert "did not become healthy" in said, said
    assert "cannot start 'no-such-server': No such file or directory" in said
    assert "internal error" not in said and "bug" not in said
