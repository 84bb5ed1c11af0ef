"""The whole pipeline with the services as Workers on Cloudflare, through the CLI alone:
the example of Workers (examples/workers) with `[compute]` and `[dns]` on the fake
Cloudflare (each deployed version runs in workerd; its edge routes a host's requests
to the script its route names; a real DNS server answers its zone), database branches
local. A push tested and rolled out to production; a pull request's preview on scripts
and routes of its own, updated by a new commit, merged and rolled out; a broken
release rolled back; the preview's scripts, routes and records gone once the pull
request closed, and nothing in the account but production's."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from branchline.fakes.cloudflare import FakeCloudflare
from tests import workers_tools
from tests.cloudflare_zone import FakeZoneServer
from tests.codex_project import commit_on, git
from tests.conftest import REPO, new_state_dir, remove_state_dir, run_cli

pytestmark = pytest.mark.integration

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
    checked = cli(project, "config", "check")
    assert any("Cloudflare Workers: the token reaches account" in line
               for line in json.dumps(checked).split('"'))  # fmt: skip
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
    assert os.environ.get("CLOUDFLARE_API_TOKEN", "") != TOKEN
