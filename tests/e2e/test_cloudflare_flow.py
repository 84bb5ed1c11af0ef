"""The whole pipeline with the services as Workers on Cloudflare, through the CLI alone:
the example of Workers (examples/workers) with `[compute]` and `[dns]` on the fake
Cloudflare (each deployed version runs in workerd; its edge routes a host's requests
to the script its route names; a real DNS server answers its zone), database branches
local. A push tested and rolled out to production; a pull request's preview on scripts
and routes of its own, updated by a new commit, merged and rolled out; a broken
release rolled back; the preview's scripts, routes and records gone once the pull
request closed, and nothing in the account but production's."""

from __future__ import annotations

import base64
import json
import os
import secrets as random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from branchline.fakes.cloudflare import FakeCloudflare
from branchline.fakes.github.process import FakeGitHub
from branchline.providers.compute.workertools import tools_dir as workers_tools_dir
from tests import actions_runner, workers_tools
from tests.cloudflare_zone import FakeZoneServer
from tests.codex_project import commit_on, git
from tests.conftest import ANY_FREE_PORT, REPO, new_state_dir, remove_state_dir, run_cli
from tests.e2e.test_github_actions_workflow import PAYLOADS, pull_request_payload, state_url

pytestmark = pytest.mark.integration
__all__ = ["state_url"]  # the fixture, by name
REPOSITORY = "acme/workers"

TOKEN = "cf-flow-token-0123456789abcdef"
ZONE = "workers.example"
EXAMPLE = REPO / "examples" / "workers"
SERVICES = ("api", "auth", "web")
CLOUD = """
[compute.cloudflare]
account_id = "{account}"
api_url = "{api}"
edge_url = "{edge}"

[dns.cloudflare]
zone_id = "{zone_id}"
api_url = "{api}"
resolvers = ["{resolver}"]
verify_timeout = "20s"
"""


@pytest.fixture
def cloud(cluster_root: Path) -> Iterator[tuple[FakeCloudflare, FakeZoneServer]]:
    workers_tools.required()
    state = new_state_dir(cluster_root)
    fake = FakeCloudflare.start(state, token=TOKEN, zones=(ZONE,), runner="workerd")
    try:
        with FakeZoneServer(fake, ZONE) as zone_server:
            yield fake, zone_server
        assert fake.calls()["invalid"] == []  # every exchange as Cloudflare's documents say
    finally:
        fake.stop()
        remove_state_dir(state)


@pytest.fixture
def project(
    tmp_path: Path, state_dir: Path, cloud: tuple[FakeCloudflare, FakeZoneServer]
) -> Iterator[tuple[Path, dict[str, str]]]:
    fake, zone_server = cloud
    root = tmp_path / "workers"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("node_modules", ".branchline"))
    config = root / "branchline.toml"
    text = config.read_text().replace('zone = "workers.localhost"', f'zone = "{ZONE}"', 1)
    for table in ("compute", "dns"):
        old = f'[{table}]\nprovider = "local"'
        assert old in text, table
        text = text.replace(old, f'[{table}]\nprovider = "cloudflare"', 1)
    host, port = zone_server.address
    config.write_text(text + CLOUD.format(
        account=fake.account_id, api=fake.url, edge=fake.base, zone_id=fake.zones[ZONE],
        resolver=f"{host}:{port}",
    ))  # fmt: skip
    git(root, "init", "-q", "-b", "main")
    git(root, "add", ".")
    git(root, "commit", "-qm", "workers")
    env = {"BRANCHLINE_STATE_DIR": str(state_dir), "CLOUDFLARE_API_TOKEN": TOKEN}
    try:
        yield root, env
    finally:
        run_cli("stop", "--all", cwd=root, env=env)


def cli(project: tuple[Path, dict[str, str]], *args: str) -> Any:
    root, env = project
    began = time.monotonic()
    done = run_cli("--json", *args, cwd=root, env=env)
    print(f"{' '.join(args)}: {time.monotonic() - began:.1f} s")
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout) if done.stdout.strip() else None


def health(fake: FakeCloudflare, host: str) -> dict[str, Any]:
    """What the host's Worker answers at /health, asked at the fake's edge."""
    answer = httpx.get(fake.base + "/health", headers={"Host": host}, timeout=30)
    assert answer.status_code == 200, (host, answer.status_code, answer.text)
    data: dict[str, Any] = answer.json()
    return data


def account(fake: FakeCloudflare) -> tuple[list[str], list[str], list[str]]:
    """The scripts, route patterns and DNS names in the fake account."""
    kept = fake.state()
    return (sorted(kept["scripts"]), sorted(r["pattern"] for r in kept["routes"]),
            sorted(r["name"] for r in kept["dns_records"]))  # fmt: skip


@pytest.mark.timeout(900)  # a push, a preview, an update, a merge, a broken release
def test_workers_on_cloudflare_from_push_to_rollback_and_cleanup(
    project: tuple[Path, dict[str, str]], cloud: tuple[FakeCloudflare, FakeZoneServer]
) -> None:
    fake, _zone = cloud
    root, env = project
    checked = json.dumps(cli(project, "config", "check"))
    assert "Cloudflare Workers: the token reaches account" in checked, checked
    assert TOKEN not in checked
    cli(project, "db", "init")
    done = run_cli("secret", "set", "AUTH_SECRET", "--env", "production", cwd=root, env=env,
                   input="auth-secret-of-production\n")  # fmt: skip
    assert done.returncode == 0, done.stderr

    # A push to main: tested on an ephemeral branch, rolled out to production's scripts.
    first = git(root, "rev-parse", "HEAD")
    pushed = cli(project, "push", "main")
    assert [(r["workflow"], r["status"]) for r in pushed["runs"]] == [
        ("testing", "success"), ("production", "success"),
    ]  # fmt: skip
    for service in SERVICES:
        assert health(fake, f"{service}.{ZONE}")["commit"] == first
    production = [f"workers-{s}-production" for s in SERVICES]
    assert account(fake)[0] == sorted(production)

    # A pull request: its preview on scripts and routes of its own.
    feature = commit_on(root, "feature", {"services/web/NOTE": "v1\n"}, "a note")
    opened = cli(project, "pr", "open", "feature", "--title", "A note")
    assert [(r["workflow"], r["status"]) for r in opened["runs"]] == [
        ("testing", "success"), ("preview", "success"),
    ]  # fmt: skip
    (preview,) = opened["previews"]
    for service in SERVICES:
        host = f"{service}-preview-1.{ZONE}"
        assert preview["urls"][service] == f"https://{host}/"
        assert health(fake, host)["commit"] == feature
    scripts, routes, names = account(fake)
    assert scripts == sorted([*production, *(f"workers-{s}-preview-1" for s in SERVICES)])
    assert {f"{s}-preview-1.{ZONE}/*" for s in SERVICES} <= set(routes)
    assert {f"{s}-preview-1.{ZONE}" for s in SERVICES} <= set(names)

    # Updated by a new commit: the same scripts, a new version each.
    second = commit_on(root, "feature", {"services/web/NOTE": "v2\n"}, "a better note")
    synced = cli(project, "pr", "sync", "1")
    assert synced["previews"][0]["urls"] == preview["urls"]
    for service in SERVICES:
        assert health(fake, f"{service}-preview-1.{ZONE}")["commit"] == second

    # Merged: the preview goes, production rolls out the merge.
    cli(project, "pr", "close", "1", "--merge")
    merged = git(root, "rev-parse", "main")
    for service in SERVICES:
        assert health(fake, f"{service}.{ZONE}")["commit"] == merged
    scripts, routes, names = account(fake)
    assert scripts == sorted(production)
    assert routes == sorted(f"{s}.{ZONE}/*" for s in SERVICES)
    assert not any("preview" in name for name in names)

    # A broken release: api's health fails in production; rolled back to the merge.
    index = root / "services" / "api" / "src" / "index.js"
    healthy = '"GET /health": (request, env) => health(env)'
    sick = '"GET /health": () => new Response("broken", { status: 500 })'
    broken = index.read_text().replace(healthy, sick)
    assert broken != index.read_text()
    git(root, "switch", "-q", "main")
    index.write_text(broken)
    git(root, "commit", "-qam", "break api's health")
    failed = run_cli("--json", "push", "main", cwd=root, env=env)
    assert failed.returncode != 0
    assert health(fake, f"api.{ZONE}")["commit"] == merged
    live = [d for d in cli(project, "deployments", "list", "--env", "production")
            if d["service"] == "api" and d["status"] == "live"]  # fmt: skip
    assert [d["release"]["commit"] for d in live] == [merged]
    assert account(fake)[0] == sorted(production)  # nothing left behind by the failure


def _push_payload(before: str, after: str) -> dict[str, Any]:
    """GitHub's own push example, made a push of `after` to main of the fake's repo."""
    payload: dict[str, Any] = json.loads(
        (PAYLOADS / "push.new-branch-master.payload.json").read_text()
    )
    payload.update(ref="refs/heads/main", before=before, after=after, created=False)
    payload["repository"]["full_name"] = REPOSITORY
    payload["head_commit"]["id"] = after
    payload["commits"] = []
    return payload


@pytest.mark.timeout(900)  # testing, preview, testing again, production: each a job
def test_exported_preview_and_production_workflows_run_on_cloudflare(
    project: tuple[Path, dict[str, str]], cloud: tuple[FakeCloudflare, FakeZoneServer],
    state_url: str, tmp_path: Path,
) -> None:  # fmt: skip
    """The preview.yml and production.yml users commit, their jobs' steps run in order
    as a runner would (tests/actions_runner.py), with the state in a Postgres URL, the
    code host the fake GitHub, Workers and DNS on the fake Cloudflare."""
    fake, _zone = cloud
    root, env = project
    github = FakeGitHub.start(tmp_path / "fake-github", repository=REPOSITORY,
                              token="ghp_" + random.token_hex(18))  # fmt: skip
    try:
        config = root / "branchline.toml"
        local = '[forge]\nprovider = "local"'
        assert local in config.read_text()
        config.write_text(config.read_text().replace(local, '[forge]\nprovider = "github"', 1)
                          + f'\n[forge.github]\nrepository = "{REPOSITORY}"\n'
                          f'api_url = "{github.url}"\nwrite_interval = "0s"\n')  # fmt: skip
        git(root, "commit", "-qam", "the code host is GitHub")
        key = base64.b64encode(os.urandom(32)).decode()
        shared = {"BRANCHLINE_STATE_DIR": env["BRANCHLINE_STATE_DIR"],
                  "BRANCHLINE_DATABASE_URL": state_url, "BRANCHLINE_SECRET_KEY": key,
                  "GITHUB_TOKEN": github.token, "CLOUDFLARE_API_TOKEN": TOKEN}  # fmt: skip
        for argv, given in ((("export", "github-actions"), None), (("db", "init"), None),
                            (("secret", "set", "AUTH_SECRET", "--env", "production"),
                             "auth-secret-of-production\n")):  # fmt: skip
            done = run_cli(*argv, cwd=root, env=shared, input=given)
            assert done.returncode == 0, done.stdout + done.stderr
        git(root, "add", ".github")
        git(root, "commit", "-qm", "the exported workflows")
        workflows = root / ".github" / "workflows"
        base_sha = git(root, "rev-parse", "HEAD")
        head_sha = commit_on(root, "feature", {"services/web/NOTE": "hi\n"}, "a change")
        github.add_pull(head="feature", sha=head_sha, base="main", base_sha=base_sha,
                        number=8, files=["services/web/NOTE"])  # fmt: skip
        summary, github_env = tmp_path / "summary.md", tmp_path / "github-env"
        summary.touch()
        github_env.touch()
        secrets = {"BRANCHLINE_DATABASE_URL": state_url, "BRANCHLINE_SECRET_KEY": key,
                   "GITHUB_TOKEN": github.token, "CLOUDFLARE_API_TOKEN": TOKEN}  # fmt: skip

        ran: list[str] = []

        def run_workflow(name: str, job: str, event: str, payload: dict[str, Any], sha: str,
                         ref: str) -> str:  # fmt: skip
            ran.append(name)
            event_path = tmp_path / f"{name}-{event}.json"
            event_path.write_text(json.dumps(payload))
            contexts = actions_runner.Contexts(
                secrets=secrets,
                github={"event": payload, "sha": sha, "ref": ref, "event_name": event,
                        "repository": REPOSITORY},
            )  # fmt: skip
            workflow = actions_runner.load_workflow(workflows / name)
            git(root, "checkout", "-q", sha)  # the simulated checkout
            runner_env = {
                **{k: v for k, v in os.environ.items()
                   if not k.startswith(("BRANCHLINE_", "GITHUB_", "CLOUDFLARE_"))},
                **ANY_FREE_PORT,
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                "PIP_NO_INDEX": "1", "BRANCHLINE_STATE_DIR": env["BRANCHLINE_STATE_DIR"],
                # The runner's tools: installed already, the step finds them.
                "BRANCHLINE_WORKERS_TOOLS": str(workers_tools_dir()),
                "RUNNER_TEMP": str(tmp_path), "GITHUB_ENV": str(github_env),
                "CI": "true", "GITHUB_ACTIONS": "true", "GITHUB_EVENT_NAME": event,
                "GITHUB_EVENT_PATH": str(event_path), "GITHUB_SHA": sha, "GITHUB_REF": ref,
                # Each workflow run its own id (a job's retry in one run is recorded once).
                "GITHUB_REPOSITORY": REPOSITORY, "GITHUB_RUN_ID": str(4242 + len(ran)),
                "GITHUB_RUN_ATTEMPT": "1", "GITHUB_SERVER_URL": "https://github.com",
                "GITHUB_STEP_SUMMARY": str(summary), "GITHUB_WORKSPACE": str(root),
            }  # fmt: skip
            try:
                results = actions_runner.run_job(workflow, job, checkout=root,
                                                 contexts=contexts, base_env=runner_env,
                                                 timeout=240)  # fmt: skip
            except subprocess.TimeoutExpired as exc:
                raise AssertionError(f"{name} timed out: {exc.stdout!r} {exc.stderr!r}") from None
            finally:
                git(root, "checkout", "-q", "main")
            output = "\n".join(f"--- {r.name} ({r.returncode})\n{r.output}" for r in results)
            assert [r.returncode for r in results] == [0] * len(results), output
            assert len(results) == len([s for s in workflow["jobs"][job]["steps"]
                                        if "run" in s]), output  # fmt: skip
            return output

        opened = pull_request_payload(8, "feature", head_sha, base_sha)
        opened["repository"]["full_name"] = REPOSITORY
        for side in (opened["pull_request"]["head"], opened["pull_request"]["base"]):
            side["repo"]["full_name"] = REPOSITORY
        pr_ref = "refs/pull/8/merge"
        run_workflow("testing.yml", "testing", "pull_request", opened, head_sha, pr_ref)
        previewed = run_workflow("preview.yml", "preview", "pull_request", opened, head_sha,
                                 pr_ref)  # fmt: skip
        assert "already there: the Workers tools" in previewed
        assert f"BRANCHLINE_WORKERS_TOOLS={workers_tools_dir()}" in github_env.read_text()
        for service in SERVICES:
            assert health(fake, f"{service}-preview-8.{ZONE}")["commit"] == head_sha
        assert {f"workers-{s}-preview-8" for s in SERVICES} <= set(account(fake)[0])
        kinds = {d["environment"] for d in github.state()["deployments"]}
        assert "preview-8" in kinds, kinds

        first = git(root, "rev-list", "--max-parents=0", "HEAD")
        pushed = _push_payload(first, base_sha)
        main_ref = "refs/heads/main"
        tested = run_workflow("testing.yml", "testing", "push", pushed, base_sha, main_ref)
        assert "testing: success" in tested, tested
        run_workflow("production.yml", "production", "push", pushed, base_sha, main_ref)
        for service in SERVICES:
            assert health(fake, f"{service}.{ZONE}")["commit"] == base_sha
        assert {f"workers-{s}-production" for s in SERVICES} <= set(account(fake)[0])
        assert github.calls()["invalid"] == [], "every call fits GitHub's API document"
    finally:
        github.stop()
