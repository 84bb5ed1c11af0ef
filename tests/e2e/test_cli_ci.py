"""A pull request's whole life through `branchline ci`, as the exported workflows call
it: testing, then its preview (once its testing run passed), then the cleanup when it
closes; the state in a Postgres URL, the local providers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from branchline.config import load_config
from branchline.kit import Kit
from branchline.store import Store, locate_state
from tests.codex_project import (
    NOTHING,
    cli_env,
    commit_on,
    git,
    leftovers,
    make_project,
    served,
)
from tests.conftest import ANY_FREE_PORT, run_cli
from tests.e2e.test_github_actions_workflow import pull_request_payload, state_url

__all__ = ["state_url"]  # the fixture, shared


def ci(
    root: Path, env: dict[str, str], tmp_path: Path, pipeline: str, payload: dict[str, Any],
    run_id: int, *extra: str,
) -> tuple[int, dict[str, Any], str]:  # fmt: skip
    event = tmp_path / f"event-{run_id}.json"
    event.write_text(json.dumps(payload))
    summary = tmp_path / f"summary-{run_id}.md"
    done = run_cli("--json", "ci", pipeline, *extra, cwd=root, env={
        **env, "GITHUB_EVENT_NAME": "pull_request", "GITHUB_EVENT_PATH": str(event),
        "GITHUB_SHA": payload["pull_request"]["head"]["sha"], "GITHUB_REF": "refs/pull/8/merge",
        "GITHUB_REPOSITORY": "acme/codex", "GITHUB_RUN_ID": str(run_id),
        "GITHUB_STEP_SUMMARY": str(summary),
    })  # fmt: skip
    answer = json.loads(done.stdout) if done.stdout.strip().startswith("{") else {}
    text = summary.read_text() if summary.exists() else ""
    return done.returncode, answer, done.stderr + text


def test_a_pull_request_tested_previewed_and_cleaned_up_by_ci(
    tmp_path: Path, state_dir: Path, state_url: str
) -> None:
    root = make_project(tmp_path / "codex", quick_tests=True)
    base = git(root, "rev-parse", "HEAD")
    head = commit_on(root, "feature", {"services/web/NOTE.md": "hi\n"}, "a change")
    env = {**cli_env(state_dir), "BRANCHLINE_DATABASE_URL": state_url}
    with served(root, env):
        assert run_cli("db", "init", cwd=root, env=env).returncode == 0
        opened = pull_request_payload(8, "feature", head, base)

        # A preview of a commit no testing run passed on: refused, nothing made.
        code, answer, said = ci(root, env, tmp_path, "preview", opened, 1,
                                "--wait-for-testing", "0")  # fmt: skip
        assert code == 1 and f"no testing run of {head[:12]} passed" in said, said
        assert "## branchline preview: ❌ failure" in said, "the job summary says so too"

        code, answer, said = ci(root, env, tmp_path, "testing", opened, 2)
        assert code == 0 and answer["status"] == "success", said
        assert answer["pr"] == 8 and answer["sha"] == head

        code, answer, said = ci(root, env, tmp_path, "preview", opened, 3)
        assert code == 0 and answer["status"] == "success", said
        assert sorted(answer["urls"]) == ["api", "auth", "web"], answer
        assert "**Preview**" in said and "- web: http://" in said

        closed = {**opened, "action": "closed"}
        code, answer, said = ci(root, env, tmp_path, "cleanup", closed, 4)
        assert code == 0 and answer["status"] == "success", said
        assert asyncio.run(_leftovers(root, env, 8)) == NOTHING


async def _leftovers(root: Path, env: dict[str, str], pr: int) -> dict[str, list[str]]:
    store = Store(locate_state(root, env))
    await store.start()
    kit = Kit.build(load_config(root / "branchline.toml", env={}), store)
    try:
        return await leftovers(kit, pr)
    finally:
        await kit.aclose()


SLOW_JOB = """
[tests.slow]
command = ["python", "-u", "-c", "import time; print('started'); time.sleep(120)"]
database = true
"""


def test_github_cancelling_the_job_cancels_the_run_and_still_cleans_up(
    tmp_path: Path, state_dir: Path, state_url: str
) -> None:
    """GitHub cancels a job (a newer commit, cancel-in-progress) with SIGINT, then
    SIGTERM: the run is cancelled, its ephemeral branch deleted all the same."""
    root = make_project(tmp_path / "codex", quick_tests=True)
    config = root / "branchline.toml"
    config.write_text(config.read_text() + SLOW_JOB)
    git(root, "commit", "-qam", "a slow job")
    base = git(root, "rev-parse", "HEAD")
    head = commit_on(root, "feature", {"services/web/NOTE.md": "hi\n"}, "a change")
    env = {**cli_env(state_dir), "BRANCHLINE_DATABASE_URL": state_url}
    assert run_cli("db", "init", cwd=root, env=env).returncode == 0
    event = tmp_path / "event.json"
    event.write_text(json.dumps(pull_request_payload(8, "feature", head, base)))
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BRANCHLINE_")}
    full_env.update({
        **ANY_FREE_PORT, **env, "GITHUB_EVENT_NAME": "pull_request",
        "GITHUB_EVENT_PATH": str(event), "GITHUB_REPOSITORY": "acme/codex",
        "GITHUB_RUN_ID": "9",
    })  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "branchline", "ci", "testing"], cwd=root, env=full_env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        seen = []
        assert process.stdout is not None
        for line in process.stdout:
            seen.append(line)
            if line.startswith("slow | started"):
                break
        assert seen and seen[-1].startswith("slow | started"), "".join(seen)
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    said = "".join(seen) + rest
    assert process.returncode == 1, said
    assert "cancelling run 1: its cleanup still runs" in said
    assert "testing: cancelled (run 1)" in said and "  cleanup: success" in said, said
    assert asyncio.run(_leftovers(root, env, 8))["branches"] == []
