"""The fake Neon API: held to Neon's OpenAPI document (every request and response
validated), backed by real clusters (its URIs work), with Neon's refusals (401, 404,
409, 422 branch limit, 423 while an operation runs), injected faults, point-in-time
and schema-only branches, expiry, and a stop that leaves nothing running."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from branchline.fakes.neon import FakeNeon
from branchline.fakes.neon.spec import SPEC_PATH
from branchline.postgres import Cluster, ClusterState
from tests.conftest import REPO, leftover_processes, new_state_dir, remove_state_dir

pytestmark = pytest.mark.integration

# Neon's document as published (the shared original, fetched once): byte for byte.
SPEC_SHA256 = "881cb0d5241b695a051c1f457095cdeb7dbf207bffc483c12a573929c2e90504"
SHARED_SPEC = REPO.parent / "shared" / "realworld" / "neon" / "neon-api-v2.openapi.json"
API_KEY = "neon-test-key-0123456789"
DB = "neondb"


@pytest.fixture(scope="module")
def neon(cluster_root: Path) -> Iterator[FakeNeon]:
    state = new_state_dir(cluster_root)
    fake = FakeNeon.start(state, api_key=API_KEY, operation_delay=0.2)
    try:
        yield fake
    finally:
        fake.stop()
        remove_state_dir(state)


@pytest.fixture
def api(neon: FakeNeon) -> Iterator[httpx.Client]:
    neon.settings(operation_delay=0.2, branch_limit=10)
    with httpx.Client(
        base_url=f"{neon.url}/projects/{neon.project_id}",
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=120,
    ) as client:
        yield client


def finish(api: httpx.Client, body: dict[str, Any], timeout: float = 120) -> None:
    """Poll each operation of an answer until it is over; all must have finished."""
    deadline = time.monotonic() + timeout
    for op in body["operations"]:
        while True:
            got = api.get(f"/operations/{op['id']}")
            assert got.status_code == 200, got.text
            status = got.json()["operation"]["status"]
            if status != "running":
                assert status == "finished", got.json()
                break
            assert time.monotonic() < deadline, f"operation {op['action']} still running"
            time.sleep(0.1)


def create(api: httpx.Client, wait: bool = True, **branch: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"branch": branch, "endpoints": [{"type": "read_write"}]}
    response = api.post("/branches", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    if wait:
        finish(api, created)
    return created


def uri_of(api: httpx.Client, branch_id: str) -> str:
    got = api.get(
        "/connection_uri",
        params={"branch_id": branch_id, "database_name": DB, "role_name": "neondb_owner"},
    )
    assert got.status_code == 200, got.text
    uri: str = got.json()["uri"]
    return uri


def sql(uri: str, statement: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(uri, autocommit=True, connect_timeout=10) as conn:
        cursor = conn.execute(statement)
        return cursor.fetchall() if cursor.description else []


def default_id(api: httpx.Client) -> str:
    branches = api.get("/branches").json()["branches"]
    return next(b["id"] for b in branches if b["default"])


def no_validation_failures(neon: FakeNeon) -> None:
    calls = neon.calls()
    assert calls["validation_failures"] == {"request": 0, "response": 0}, calls["failures"]


def test_the_document_is_neons_byte_for_byte() -> None:
    data = SPEC_PATH.read_bytes()
    assert hashlib.sha256(data).hexdigest() == SPEC_SHA256
    if SHARED_SPEC.exists():
        assert data == SHARED_SPEC.read_bytes()


def test_a_whole_branch_life_passes_validation(neon: FakeNeon, api: httpx.Client) -> None:
    neon.reset_counters()
    project = api.get(f"{neon.url}/projects/{neon.project_id}")
    assert project.status_code == 200, project.text
    assert project.json()["project"]["id"] == neon.project_id
    root = default_id(api)
    assert api.get(f"/branches/{root}").json()["branch"]["name"] == "production"

    response = api.post(
        "/branches",
        json={
            "branch": {"name": "pr-1", "parent_id": root},
            "endpoints": [{"type": "read_write"}],
            "annotation_value": {"github-pr": "1"},
        },
    )
    assert response.status_code == 201, response.text
    created = response.json()
    branch = created["branch"]
    assert (branch["current_state"], branch["pending_state"]) == ("init", "ready")
    assert branch["id"].startswith("br-") and branch["parent_id"] == root
    assert {op["action"] for op in created["operations"]} == {"create_branch", "start_compute"}
    assert {op["status"] for op in created["operations"]} == {"running"}
    assert created["endpoints"][0]["id"].startswith("ep-")
    finish(api, created)
    got = api.get(f"/branches/{branch['id']}").json()
    assert got["branch"]["current_state"] == "ready"
    assert got["annotation"]["value"] == {"github-pr": "1"}
    listed = api.get("/branches", params={"search": "pr-1"}).json()
    assert [b["id"] for b in listed["branches"]] == [branch["id"]]
    assert listed["annotations"][branch["id"]]["value"] == {"github-pr": "1"}

    uri = uri_of(api, branch["id"])
    assert uri.startswith("postgresql://") and "@127.0.0.1:" in uri and uri.endswith(f"/{DB}")
    sql(uri, "CREATE TABLE notes (id int PRIMARY KEY, body text)")
    sql(uri, "INSERT INTO notes VALUES (1, 'one'), (2, 'two')")
    assert sql(uri, "SELECT count(*) FROM notes") == [(2,)]
    sql(uri, "CREATE DATABASE scratch")  # the role may create databases, as Neon's owner may
    pooled = api.get(
        "/connection_uri",
        params={"branch_id": branch["id"], "database_name": DB, "role_name": "x", "pooled": "true"},
    )
    assert pooled.json()["uri"] == uri

    schema = api.get(f"/branches/{branch['id']}/schema", params={"db_name": DB})
    assert schema.status_code == 200, schema.text
    assert "CREATE TABLE public.notes" in schema.json()["sql"]
    diff = api.get(
        f"/branches/{branch['id']}/compare_schema", params={"base_branch_id": root, "db_name": DB}
    )
    assert diff.status_code == 200, diff.text
    assert "+CREATE TABLE public.notes" in diff.json()["diff"]

    for what in ("endpoints", "databases", "roles"):
        listed_parts = api.get(f"/branches/{branch['id']}/{what}")
        assert listed_parts.status_code == 200, listed_parts.text
        assert len(listed_parts.json()[what]) == 1

    restored = api.post(f"/branches/{branch['id']}/restore", json={"source_branch_id": root})
    assert restored.status_code == 200, restored.text
    finish(api, restored.json())
    assert uri_of(api, branch["id"]) == uri  # a reset keeps the URI
    assert sql(uri, "SELECT to_regclass('public.notes') IS NULL") == [(True,)]
    assert api.get(f"/branches/{branch['id']}").json()["branch"]["last_reset_at"]

    renamed = api.patch(f"/branches/{branch['id']}", json={"branch": {"name": "pr-1-renamed"}})
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["branch"]["name"] == "pr-1-renamed"

    deleted = api.delete(f"/branches/{branch['id']}")
    assert deleted.status_code == 200, deleted.text
    finish(api, deleted.json())
    assert api.get(f"/branches/{branch['id']}").status_code == 404
    assert api.delete(f"/branches/{branch['id']}").status_code == 404
    no_validation_failures(neon)
    assert neon.calls()["calls"]["POST /projects/{project_id}/branches"] == 1


def test_refusals_in_neons_shape(neon: FakeNeon, api: httpx.Client) -> None:
    neon.reset_counters()
    invalid = api.post("/branches", json={"branch": {"name": 5}})
    assert invalid.status_code == 400
    assert "name" in invalid.json()["message"] and invalid.json()["code"] == ""
    assert neon.calls()["validation_failures"]["request"] == 1
    neon.reset_counters()

    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": "Basic x"}):
        bare = httpx.get(f"{neon.url}/projects/{neon.project_id}", headers=headers)
        assert bare.status_code == 401
        assert set(bare.json()) == {"code", "message"}
        assert API_KEY not in bare.text
    assert httpx.get(
        f"{neon.url}/projects/no-such-project", headers=dict(api.headers)
    ).status_code == 404  # fmt: skip

    root = default_id(api)
    assert api.delete(f"/branches/{root}").status_code == 400  # the default branch stays
    assert api.get("/branches/br-no-such-branch-000000").status_code == 404
    lsn = api.post("/branches", json={"branch": {"parent_lsn": "0/1A2B3C"}})
    assert lsn.status_code == 400 and "parent_timestamp" in lsn.json()["message"]
    no_validation_failures(neon)


def test_names_children_and_the_branch_limit(neon: FakeNeon, api: httpx.Client) -> None:
    parent = create(api, name="limits-parent")["branch"]
    taken = api.post("/branches", json={"branch": {"name": "limits-parent"}})
    assert taken.status_code == 409 and "already exists" in taken.json()["message"]
    child = create(api, name="limits-child", parent_id=parent["id"])["branch"]
    refused = api.delete(f"/branches/{parent['id']}")
    assert refused.status_code == 400 and "child" in refused.json()["message"]

    count = len(api.get("/branches").json()["branches"])  # the default branch counts
    neon.settings(branch_limit=count)
    over = api.post("/branches", json={"branch": {"name": "one-too-many"}})
    assert over.status_code == 422, over.text
    assert over.json()["code"] == "BRANCHES_LIMIT_EXCEEDED"
    assert "limit" in over.json()["message"]
    neon.settings(branch_limit=10)

    for branch in (child, parent):
        deleted = api.delete(f"/branches/{branch['id']}")
        assert deleted.status_code == 200, deleted.text
        finish(api, deleted.json())
    no_validation_failures(neon)


def test_locked_while_an_operation_runs(neon: FakeNeon, api: httpx.Client) -> None:
    neon.settings(operation_delay=3)
    created = create(api, wait=False, name="slow")
    branch = created["branch"]
    for response in (
        api.delete(f"/branches/{branch['id']}"),
        api.post("/branches", json={"branch": {"name": "slow-child", "parent_id": branch["id"]}}),
        api.patch(f"/branches/{branch['id']}", json={"branch": {"name": "slow-2"}}),
        api.get(
            "/connection_uri",
            params={"branch_id": branch["id"], "database_name": DB, "role_name": "r"},
        ),
    ):
        assert response.status_code == 423, response.text
    finish(api, created)
    neon.settings(operation_delay=0.2)
    deleted = api.delete(f"/branches/{branch['id']}")
    assert deleted.status_code == 200, deleted.text
    finish(api, deleted.json())
    assert neon.calls()["simulated_delay_seconds"] >= 3
    no_validation_failures(neon)


def test_injected_faults(neon: FakeNeon, api: httpx.Client) -> None:
    neon.inject(429, times=2, method="GET", path="/branches$", retry_after=7)
    neon.inject(503, path="^/projects/[^/]+$")
    for _ in range(2):
        limited = api.get("/branches")
        assert limited.status_code == 429
        assert limited.headers["Retry-After"] == "7"
    assert api.get("/branches").status_code == 200
    assert api.get(f"{neon.url}/projects/{neon.project_id}").status_code == 503
    assert api.get(f"{neon.url}/projects/{neon.project_id}").status_code == 200
    no_validation_failures(neon)


def test_schema_only_and_point_in_time_branches(neon: FakeNeon, api: httpx.Client) -> None:
    root = default_id(api)
    root_uri = uri_of(api, root)
    sql(root_uri, "CREATE TABLE events (id int)")
    sql(root_uri, "INSERT INTO events SELECT generate_series(1, 3)")
    time.sleep(1.1)
    moment = datetime.now(UTC)
    time.sleep(1.1)
    sql(root_uri, "INSERT INTO events SELECT generate_series(4, 10)")

    schema_only = create(api, name="schema-only", parent_id=root, init_source="schema-only")
    assert schema_only["branch"]["init_source"] == "schema-only"
    uri = uri_of(api, schema_only["branch"]["id"])
    assert sql(uri, "SELECT count(*) FROM events") == [(0,)]

    past = create(api, name="as-of", parent_id=root, parent_timestamp=moment.isoformat())
    assert past["branch"]["parent_timestamp"]
    assert sql(uri_of(api, past["branch"]["id"]), "SELECT count(*) FROM events") == [(3,)]

    # Restore to a moment of the default branch, keeping the old state under a name.
    head = create(api, name="to-restore", parent_id=root)["branch"]
    assert sql(uri_of(api, head["id"]), "SELECT count(*) FROM events") == [(10,)]
    restored = api.post(
        f"/branches/{head['id']}/restore",
        json={
            "source_branch_id": root,
            "source_timestamp": moment.isoformat(),
            "preserve_under_name": "to-restore-old",
        },
    )
    assert restored.status_code == 200, restored.text
    finish(api, restored.json())
    assert sql(uri_of(api, head["id"]), "SELECT count(*) FROM events") == [(3,)]
    kept = api.get("/branches", params={"search": "to-restore-old"}).json()["branches"]
    assert len(kept) == 1
    assert sql(uri_of(api, kept[0]["id"]), "SELECT count(*) FROM events") == [(10,)]

    for branch_id in (schema_only["branch"]["id"], past["branch"]["id"], head["id"], kept[0]["id"]):
        finish(api, api.delete(f"/branches/{branch_id}").json())
    no_validation_failures(neon)


def test_expired_branches_disappear(neon: FakeNeon, api: httpx.Client) -> None:
    expires = (datetime.now(UTC) + timedelta(seconds=3)).isoformat(timespec="seconds")
    created = create(api, name="short-lived", expires_at=expires)
    branch_id = created["branch"]["id"]
    assert api.get(f"/branches/{branch_id}").json()["branch"]["expires_at"]
    deadline = time.monotonic() + 30
    while api.get(f"/branches/{branch_id}").status_code != 404:
        assert time.monotonic() < deadline, "the expired branch is still there"
        time.sleep(0.5)
    assert branch_id not in {b["id"] for b in api.get("/branches").json()["branches"]}
    no_validation_failures(neon)


def test_stop_leaves_nothing_running(cluster_root: Path) -> None:
    state = new_state_dir(cluster_root)
    try:
        fake = FakeNeon.start(state, api_key=API_KEY, operation_delay=0)
        with (
            fake,
            httpx.Client(
                base_url=f"{fake.url}/projects/{fake.project_id}",
                headers={"Authorization": f"Bearer {API_KEY}"},
                timeout=120,
            ) as api,
        ):
            create(api, name="left-behind")
            assert leftover_processes(state)  # its clusters carry BRANCHLINE_STATE_DIR
        assert fake.process.returncode == 0
        assert not leftover_processes(state)
        homes = [*state.glob("projects/*/branches/*"), state / "postgres"]
        assert len(homes) >= 3
        assert all(Cluster(home).state() is not ClusterState.RUNNING for home in homes)
    finally:
        remove_state_dir(state)


def test_an_invalid_response_is_a_loud_500(tmp_path: Path) -> None:
    """In process, no cluster: a response the document forbids never reaches the client."""
    from branchline.fakes.neon.app import FakeNeonApp
    from branchline.fakes.neon.world import NeonWorld

    world = NeonWorld(tmp_path, project_id="shiny-wind-028834")
    app = FakeNeonApp(world, API_KEY)
    project = "/api/v2/projects/shiny-wind-028834"

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://127.0.0.1",
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as client:
            good = await client.get(project)
            assert good.status_code == 200, good.text
            world.project_json = lambda: {"id": "shiny-wind-028834"}  # type: ignore[method-assign]
            bad = await client.get(project)
            assert bad.status_code == 500
            assert "required property" in bad.json()["message"]
            assert app.calls()["validation_failures"] == {"request": 0, "response": 1}
            assert (await client.get("/api/v2/projects/other-project")).status_code == 404

    asyncio.run(scenario())
