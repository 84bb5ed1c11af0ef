"""The testing.yml users commit, run: exported from a small project, its job's steps
executed in order as a runner would (`tests/actions_runner.py`: `run:` steps in
`bash -e`; the `uses:` steps of checkout and setup-python simulated, since the
temporary checkout is already there and python is on PATH), for a real
pull_request payload adjusted to the checkout, with the state in a Postgres URL
(a database of the test session's own cluster), the local database, compute and DNS,
and the GitHub code host against a started fake GitHub (which receives the commit
statuses)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets as random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from branchline.config import load_config
from branchline.fakes.github.process import FakeGitHub
from branchline.postgres import Cluster
from branchline.secrets import Secrets
from branchline.store import Store, locate_state
from tests import actions_runner
from tests.codex_project import commit_on, git, make_project
from tests.conftest import ANY_FREE_PORT, REPO, run_cli

PAYLOADS = REPO / "tests" / "fixtures" / "github-webhooks" / "octokit-examples"
# A job on the run's ephemeral branch that prints what it must never show: the
# branch's URL and a generated secret (the engine masks them in its lines).
LEAKY_JOB = """
[tests.leaky]
command = ["python", "-c", "import os; print('url', os.environ['DATABASE_URL']); \
print('secret', os.environ['AUTH_SECRET'])"]
database = true
"""


@pytest.fixture
def state_url(pg_cluster: Cluster) -> Iterator[str]:
    """A fresh database of the session's cluster: the shared state the workflow's
    BRANCHLINE_DATABASE_URL secret names (a URL with a password)."""
    name = f"bl_gha_{random.token_hex(4)}"
    with psycopg.connect(pg_cluster.uri(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield pg_cluster.uri(name)
    with psycopg.connect(pg_cluster.uri(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def pull_request_payload(number: int, head: str, sha: str, base_sha: str) -> dict[str, Any]:
    """GitHub's own `opened` example, pointed at the checkout's commits."""
    payload = json.loads((PAYLOADS / "pull_request.opened.payload.json").read_text())
    payload["number"] = payload["pull_request"]["number"] = number
    pull = payload["pull_request"]
    pull["head"].update(ref=head, sha=sha)
    pull["base"].update(ref="main", sha=base_sha)
    for side in (pull["head"], pull["base"]):
        side["repo"]["full_name"] = "acme/codex"
    payload["repository"]["full_name"] = "acme/codex"
    return payload


@pytest.fixture
def github(tmp_path: Path) -> Iterator[FakeGitHub]:
    fake = FakeGitHub.start(tmp_path / "fake-github", repository="acme/codex",
                            token="ghp_" + random.token_hex(18))  # fmt: skip
    try:
        yield fake
    finally:
        fake.stop()


def on_github(config: Path, fake: FakeGitHub) -> None:
    """The project's code host: GitHub (the fake), its token GITHUB_TOKEN's."""
    text = config.read_text().replace(
        '[forge]\nprovider = "local" ', '[forge]\nprovider = "github"', 1
    )
    assert 'provider = "github"' in text
    config.write_text(
        text + f'\n[forge.github]\nrepository = "{fake.repository}"\napi_url = "{fake.url}"\n'
        'write_interval = "0s"\n'
    )


def test_exported_testing_workflow_runs_a_pull_request(
    tmp_path: Path, state_dir: Path, state_url: str, github: FakeGitHub
) -> None:
    root = make_project(tmp_path / "codex", quick_tests=True)
    config = root / "branchline.toml"
    config.write_text(config.read_text() + LEAKY_JOB)
    on_github(config, github)
    git(root, "commit", "-qam", "a job that prints its secrets; the code host is GitHub")
    base_sha = git(root, "rev-parse", "HEAD")
    head_sha = commit_on(root, "feature", {"services/api/NOTE.md": "hi\n"}, "a change")
    exported = run_cli(
        "export", "github-actions", cwd=root, env={"BRANCHLINE_STATE_DIR": str(state_dir)}
    )
    assert exported.returncode == 0, exported.stderr
    workflow_path = root / ".github" / "workflows" / "testing.yml"
    workflow = actions_runner.load_workflow(workflow_path)
    assert set(workflow["on"]) == {"push", "pull_request"}

    payload = pull_request_payload(8, "feature", head_sha, base_sha)
    github.add_pull(head="feature", sha=head_sha, base="main", base_sha=base_sha, number=8,
                    files=["services/api/NOTE.md"])  # fmt: skip
    event_path = tmp_path / "event.json"
    event_path.write_text(json.dumps(payload))
    summary = tmp_path / "summary.md"
    summary.touch()
    key = base64.b64encode(os.urandom(32)).decode()
    contexts = actions_runner.Contexts(
        secrets={"BRANCHLINE_DATABASE_URL": state_url, "BRANCHLINE_SECRET_KEY": key,
                 "GITHUB_TOKEN": github.token},
        github={"event": payload, "sha": head_sha, "ref": "refs/pull/8/merge",
                "event_name": "pull_request", "repository": "acme/codex"},
    )  # fmt: skip
    # The simulated checkout: the `ref` the workflow asks for, detached.
    checkout_step = workflow["jobs"]["testing"]["steps"][0]
    git(root, "checkout", "-q", actions_runner.substitute(checkout_step["with"]["ref"], contexts))
    runner_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("BRANCHLINE_", "GITHUB_"))},
        **ANY_FREE_PORT,
        # python and branchline on PATH (setup-python simulated); this checkout's code.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PIP_NO_INDEX": "1",  # the install step finds branchline installed, offline
        "BRANCHLINE_STATE_DIR": str(state_dir),  # the runner's disk: local branches
        "CI": "true", "GITHUB_ACTIONS": "true", "GITHUB_EVENT_NAME": "pull_request",
        "GITHUB_EVENT_PATH": str(event_path), "GITHUB_SHA": head_sha,
        "GITHUB_REF": "refs/pull/8/merge", "GITHUB_REPOSITORY": "acme/codex",
        "GITHUB_RUN_ID": "4242", "GITHUB_RUN_ATTEMPT": "1",
        "GITHUB_SERVER_URL": "https://github.com", "GITHUB_STEP_SUMMARY": str(summary),
        "GITHUB_WORKSPACE": str(root),
    }  # fmt: skip
    # Production exists before any pipeline runs (made once, from a workstation).
    made = run_cli("db", "init", cwd=root, env={"BRANCHLINE_STATE_DIR": str(state_dir),
                                                 "BRANCHLINE_DATABASE_URL": state_url,
                                                 "GITHUB_TOKEN": github.token})  # fmt: skip
    assert made.returncode == 0, made.stderr
    # Every job of the workflow, one after the other (GitHub runs them side by side).
    assert list(workflow["jobs"]) == ["testing", "workflows"]
    checked = actions_runner.run_job(
        workflow, "workflows", checkout=root, contexts=contexts, base_env=runner_env
    )
    assert [r.returncode for r in checked] == [0, 0], checked[-1].output
    assert "unchanged" in checked[-1].output
    results = actions_runner.run_job(
        workflow, "testing", checkout=root, contexts=contexts, base_env=runner_env
    )
    output = "\n".join(f"--- {r.name} ({r.returncode})\n{r.output}" for r in results)
    assert [r.returncode for r in results] == [0, 0], output
    assert "testing: success" in output, output
    assert "leaky | url" in output and "leaky | secret ***" in output, output

    written = summary.read_text()
    assert written.startswith("## branchline testing: ✅ success"), written
    assert f"commit `{head_sha[:12]}`, pull request #8" in written
    for job in ("database", "quick", "leaky", "cleanup", "report"):
        assert f"| {job} | ✅ success |" in written, written

    # GitHub got the commit's statuses: pending, then the result.
    statuses = [(x["context"], x["state"]) for x in github.state()["statuses"]
                if x["sha"] == head_sha]  # fmt: skip
    assert ("branchline/testing", "pending") in statuses, statuses
    assert statuses[-1] == ("branchline/testing", "success"), statuses
    assert github.calls()["invalid"] == [], "every call fits GitHub's API document"

    # No secret anywhere but on the lines that tell GitHub to hide it.
    generated = _test_secrets(root, state_dir, state_url, key)
    masked = [line.removeprefix("::add-mask::") for line in output.splitlines()
              if line.startswith("::add-mask::")]  # fmt: skip
    password = psycopg.conninfo.conninfo_to_dict(state_url)["password"]
    assert password in masked and generated["AUTH_SECRET"] in masked, masked
    assert any(m.startswith("postgresql://") for m in masked), "the branch's URL is masked"
    shown = [line for line in output.splitlines() if not line.startswith("::add-mask::")]
    for value in {*masked, key, contexts.secrets["GITHUB_TOKEN"]}:
        leaks = [line for line in shown if value in line]
        assert not leaks, f"a secret is shown: {leaks}"

    # Run again in the same attempt (a step retried): recorded once, the same run.
    again = actions_runner.run_job(
        workflow, "testing", checkout=root, contexts=contexts, base_env=runner_env
    )
    assert [r.returncode for r in again] == [0, 0], again[-1].output
    runs = json.loads(run_cli("--json", "runs", "list", cwd=root,
                              env={k: runner_env[k] for k in ("BRANCHLINE_STATE_DIR",)}
                              | {"BRANCHLINE_DATABASE_URL": state_url,
                                 "GITHUB_TOKEN": github.token}).stdout)  # fmt: skip
    assert [r["workflow"] for r in runs] == ["testing"], runs
    assert runs[0]["status"] == "success"


def _test_secrets(root: Path, state_dir: Path, url: str, key: str) -> dict[str, str]:
    env = {"BRANCHLINE_DATABASE_URL": url, "BRANCHLINE_STATE_DIR": str(state_dir),
           "BRANCHLINE_SECRET_KEY": key}  # fmt: skip
    store = Store(locate_state(root, env))
    config = load_config(root / "branchline.toml")

    async def read() -> dict[str, str]:
        await store.start()
        return await Secrets.for_project(store, config, env).get_all("test")

    return asyncio.run(read())
