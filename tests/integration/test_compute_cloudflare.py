"""Cloudflare compute against the fake Cloudflare (its deployed versions run in workerd,
its edge routes a host's requests to the script its route names): a Worker built
here, uploaded as a version with its bindings, deployed at 100%, routed, health-checked
through its host; a new commit takes over; a rollback is a deployment of the old
version (no upload); an unhealthy release sends the traffic back; delete leaves nothing
in the account; the secret shows in no answer and no file."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from branchline.config import load_config
from branchline.environment import Environment
from branchline.fakes.cloudflare import FakeCloudflare
from branchline.providers.compute import DeploymentEnv, UnhealthyError
from branchline.providers.compute.cloudflare import CloudflareComputeProvider
from branchline.providers.compute.cloudflare_api import CloudflareWorkersClient
from branchline.providers.compute.local import LocalComputeProvider
from branchline.providers.database.local import LocalDatabaseProvider
from branchline.sandbox import Sandbox
from branchline.store import Store
from tests import workers_tools
from tests.conftest import leftover_processes, new_state_dir, remove_state_dir
from tests.integration.test_compute_local import git
from tests.integration.test_database_local import _provider
from tests.integration.test_database_local import run as run_db

pytestmark = pytest.mark.integration
PREVIEW = Environment.preview(8)
ZONE = "notes.example"
TOKEN = "cf-compute-token-0123456789abcdef"
SECRET = "s3cr3t-of-preview-8"
T = TypeVar("T")

CONFIG = """\
[project]
name = "{name}"
zone = "{zone}"

[database]
migrate = "true"

[compute]
provider = "cloudflare"

[compute.cloudflare]
account_id = "{account}"
zone_id = "{zone_id}"
api_url = "{api}"
edge_url = "{edge}"

[health]
first_wait = "0s"
later_wait = "0s"
retries = 4

[services.notes]
path = "services/notes"
runtime = "worker"
build = ["npm", "ci", "--no-audit", "--no-fund"]

[services.notes.env]
GREETING = "hello from {{{{ environment }}}}"
"""


@pytest.fixture(scope="module")
def fake(cluster_root: Path) -> Iterator[FakeCloudflare]:
    workers_tools.required()
    state = new_state_dir(cluster_root)
    cf = FakeCloudflare.start(state, token=TOKEN, zones=(ZONE,), runner="workerd")
    try:
        yield cf
        assert cf.calls()["invalid"] == []  # every exchange as Cloudflare's documents say
    finally:
        cf.stop()
        assert leftover_processes(state) == []
        remove_state_dir(state)


@pytest.fixture
def db(shared_store: Store, cluster_root: Path) -> Iterator[LocalDatabaseProvider]:
    yield from _provider(shared_store, cluster_root)


@pytest.fixture
def project(tmp_path: Path, fake: FakeCloudflare) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(workers_tools.NOTES_WORKER, repo / "services" / "notes")
    (repo / "branchline.toml").write_text(CONFIG.format(
        name=f"notes{os.urandom(3).hex()}", zone=ZONE, account=fake.account_id,
        zone_id=fake.zones[ZONE], api=fake.url, edge=fake.base,
    ))  # fmt: skip
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "notes worker")
    return repo


@pytest.fixture
def compute(
    project: Path, shared_store: Store, state_dir: Path, fake: FakeCloudflare
) -> Iterator[CloudflareComputeProvider]:
    config = load_config(project / "branchline.toml", env={})
    assert config.compute.cloudflare is not None
    builder = LocalComputeProvider(
        config=config, store=shared_store, state_dir=state_dir, repo=project,
        sandbox=Sandbox.for_project(config, state_dir),
    )  # fmt: skip
    client = CloudflareWorkersClient(
        account_id=fake.account_id, zone_id=fake.zones[ZONE], api_token=TOKEN,
        base_url=fake.url,
    )  # fmt: skip
    provider = CloudflareComputeProvider(
        config=config, store=shared_store, client=client, builder=builder,
        edge_url=config.compute.cloudflare.edge_url,
    )  # fmt: skip
    try:
        yield provider
    finally:
        run(provider, provider.delete("notes", PREVIEW))
        run(provider, provider.aclose())


def run(provider: CloudflareComputeProvider, work: Coroutine[Any, Any, T]) -> T:
    async def main() -> T:
        try:
            return await work
        finally:
            await provider.aclose()

    return asyncio.run(main())


def at_host(fake: FakeCloudflare, path: str, body: bytes | None = None) -> Any:
    """What the host's Worker answers, asked at the fake's edge."""
    host = PREVIEW.host_name("notes", ZONE)
    with httpx.Client(base_url=fake.base, headers={"Host": host}, timeout=30) as client:
        answer = client.post(path, content=body) if body is not None else client.get(path)
    assert answer.status_code in (200, 201), answer.text
    return answer.json()


def commit(project: Path, message: str, change: dict[str, str]) -> str:
    for name, text in change.items():
        (project / "services" / "notes" / name).write_text(text)
    git(project, "add", ".")
    git(project, "commit", "-qm", message)
    return git(project, "rev-parse", "HEAD")


def test_a_worker_is_uploaded_deployed_routed_rolled_back_and_deleted(
    compute: CloudflareComputeProvider, db: LocalDatabaseProvider, fake: FakeCloudflare,
    project: Path,
) -> None:  # fmt: skip
    run_db(db, db.create_branch("pr-8"))
    given = DeploymentEnv(vars={"DATABASE_URL": run_db(db, db.connection_uri("pr-8"))},
                          secrets={"API_SECRET": SECRET})  # fmt: skip

    async def environment(_environment: Environment) -> DeploymentEnv:
        return given

    compute.environment_of = environment
    first = git(project, "rev-parse", "HEAD")
    script = compute.script_name("notes", PREVIEW)
    assert script == f"{compute.project}-notes-preview-8"

    async def build_and_deploy(sha: str) -> Any:
        release = await compute.build("notes", sha)
        return await compute.deploy("notes", PREVIEW, release, given)

    fake.reset_counters()
    deployment = run(compute, build_and_deploy(first))
    assert deployment.status == "live"
    # The upload that makes the script, its deployments (the version's id), the routes,
    # the new route.
    assert sum(fake.calls()["by_route"].values()) == 4, fake.calls()["by_route"]
    assert deployment.url == f"https://{PREVIEW.host_name('notes', ZONE)}/"
    assert deployment.detail["script"] == script
    assert at_host(fake, "/health") == {"status": "ok", "commit": first}
    assert at_host(fake, "/var/GREETING") == {"GREETING": "hello from preview-8"}
    assert at_host(fake, "/var/SOURCE") == {"SOURCE": "wrangler.toml"}
    assert at_host(fake, "/secret")["sha256"] == hashlib.sha256(SECRET.encode()).hexdigest()
    # Its branch database, from the Worker Cloudflare (here: workerd) runs.
    assert at_host(fake, "/notes", b"first note") == {"id": 1}
    assert [n["body"] for n in at_host(fake, "/notes")] == ["first note"]
    kept = fake.state()
    version = kept["scripts"][script]["versions"][-1]
    bindings = {b["name"]: b for b in version["bindings"]}
    assert bindings["API_SECRET"] == {"type": "secret_text", "name": "API_SECRET"}
    assert bindings["DATABASE_URL"]["type"] == "secret_text"  # it holds a password
    assert bindings["GREETING"]["type"] == "plain_text"
    assert [r["pattern"] for r in kept["routes"]] == [f"{PREVIEW.host_name('notes', ZONE)}/*"]

    # A new commit takes over: a version uploaded, then deployed.
    second = commit(project, "v2", {"CHANGES": "v2\n"})
    fake.reset_counters()
    run(compute, build_and_deploy(second))
    assert at_host(fake, "/health")["commit"] == second
    routes = fake.calls()["by_route"]
    assert routes.get("POST /accounts/{account_id}/workers/scripts/{script_name}/versions") == 1
    assert routes.get("POST /accounts/{account_id}/workers/scripts/{script_name}/deployments") == 1

    # A rollback is a deployment of the version that served before: nothing uploaded.
    fake.reset_counters()
    back = run(compute, compute.rollback("notes", PREVIEW))
    assert back.release.commit == first
    assert at_host(fake, "/health")["commit"] == first
    routes = fake.calls()["by_route"]
    assert "POST /accounts/{account_id}/workers/scripts/{script_name}/versions" not in routes
    assert routes["POST /accounts/{account_id}/workers/scripts/{script_name}/deployments"] == 1
    assert sum(routes.values()) == 2  # the deployment, a look at the routes

    # An unhealthy release: deployed, checked, and the traffic goes back at once.
    index = project / "services" / "notes" / "src" / "index.js"
    healthy = 'return Response.json({ status: "ok", commit: env.BRANCHLINE_COMMIT ?? null });'
    assert healthy in index.read_text()
    sick = index.read_text().replace(healthy, 'return new Response("broken", { status: 500 });')
    broken = commit(project, "broken health", {"src/index.js": sick})
    with pytest.raises(UnhealthyError) as failed:
        run(compute, build_and_deploy(broken))
    assert "serves again" in failed.value.hint
    assert at_host(fake, "/health")["commit"] == first
    listed = run(compute, compute.list_deployments(PREVIEW))
    assert [d.status for d in listed][:2] == ["failed", "live"]

    # The secret: in no answer of the API (it never shows it back) and no file here.
    assert SECRET not in json.dumps(fake.state())
    for path in [*compute.builder.state_dir.rglob("*"), *fake.state_dir.rglob("*")]:
        if path.is_file() and not path.is_symlink():
            assert SECRET.encode() not in path.read_bytes(), path

    # Reconcile: a script of this project's that no deployment explains (a crash
    # between Cloudflare's answer and the row) goes with its route; others' stay.
    stray = compute.script_name("notes", Environment.preview(99))
    live_bundle, uploaded = compute._upload_parts(
        compute.config.services["notes"], PREVIEW,
        run(compute, compute.releases("notes"))[0], given, "x.notes.example",
    )  # fmt: skip

    async def strays() -> None:
        for name in (stray, "someone-elses-worker", f"{compute.project}-notes-staging"):
            await compute.client.upload(name, live_bundle, uploaded, deploy=True)
        await compute.client.ensure_route("notes-preview-99.notes.example/*", stray)

    run(compute, strays())
    would = run(compute, compute.reconcile(dry_run=True))
    assert [(f.kind, f.target, f.done) for f in would] == [("script", stray, False)]
    done = run(compute, compute.reconcile())
    assert [(f.target, f.done) for f in done] == [(stray, True)]
    kept = fake.state()
    assert stray not in kept["scripts"] and "someone-elses-worker" in kept["scripts"]
    assert f"{compute.project}-notes-staging" in kept["scripts"]  # not an environment's name
    assert [r["script"] for r in kept["routes"]] == [script]
    assert run(compute, compute.reconcile()) == []
    for name in ("someone-elses-worker", f"{compute.project}-notes-staging"):
        run(compute, compute.client.delete_script(name))

    # Deleted: the route and the script (and its versions) go; nothing left.
    assert run(compute, compute.delete("notes", PREVIEW)) is True
    kept = fake.state()
    assert script not in kept["scripts"] and kept["routes"] == []
    assert run(compute, compute.delete("notes", PREVIEW)) is False  # idempotent
