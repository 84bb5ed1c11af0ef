"""The REST API: bearer tokens (none or unknown 401, read-only on an action 403),
reads that never carry a secret, the OpenAPI document, and /metrics."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from branchline.config import load_config
from branchline.postgres import Cluster
from branchline.secrets import Secrets
from branchline.server.app import create_app
from branchline.store import Store
from branchline.store import forge as forge_rows
from branchline.store import tokens as token_rows
from tests.integration.conftest import store_in

pytestmark = pytest.mark.integration
SECRET_VALUE = "a-production-secret-value-never-shown"
Called = list[tuple[str, dict[str, Any]]]


@pytest.fixture(scope="module")
def store(pg_cluster: Cluster) -> Store:
    return store_in(pg_cluster, "bl_api")


def setup(
    tmp_path: Path, store: Store
) -> tuple[Any, dict[str, str], list[tuple[str, dict[str, Any]]]]:
    project = f"api{uuid.uuid4().hex[:6]}"
    (tmp_path / "branchline.toml").write_text(
        f'[project]\nname = "{project}"\nzone = "{project}.localhost"\n'
        '[database]\nmigrate = "true"\n[secrets.production]\nnames = ["AUTH_SECRET"]\n'
    )
    config = load_config(tmp_path / "branchline.toml", env={})
    called: Called = []

    def recording(name: str) -> Any:
        async def action(**params: Any) -> dict[str, Any]:
            called.append((name, params))
            return {"message": f"{name} done"}

        return action

    actions = {n: recording(n) for n in ("cancel", "rerun", "rollback", "close_preview", "push")}

    async def prepare() -> dict[str, str]:
        secrets = Secrets(store, project, config.secrets, b"k" * 32)
        await secrets.set("production", "AUTH_SECRET", SECRET_VALUE)
        async with store.connect() as conn:
            await forge_rows.open_pr(conn, project, title="t", head="f", base="main", sha="a" * 40)
            _r, read = await token_rows.create(conn, project, "reader", "read")
            _w, write = await token_rows.create(conn, project, "ci", "write")
        return {"read": read, "write": write}

    tokens = asyncio.run(prepare())
    return create_app(config, store, secret=b"x", actions=actions), tokens, called


def call(app: Any, method: str, path: str, token: str | None = None) -> httpx.Response:
    async def go() -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path, headers=headers)

    return asyncio.run(go())


READS = [
    "/api/runs", "/api/runs/1", "/api/runs/1/logs", "/api/environments",
    "/api/deployments/history", "/api/branches", "/api/dns", "/api/secrets", "/api/prs",
]  # fmt: skip
ACTIONS = [
    "/api/runs/1/cancel", "/api/runs/1/rerun", "/api/services/api/rollback",
    "/api/previews/3/close", "/api/pipelines/testing?branch=main",
]  # fmt: skip


def test_tokens_guard_every_endpoint(tmp_path: Path, store: Store) -> None:
    app, tokens, called = setup(tmp_path, store)
    for path in READS:
        assert call(app, "GET", path).status_code == 401, path
        assert call(app, "GET", path, "blt_forged").status_code == 401, path
        assert call(app, "GET", path, tokens["read"]).status_code in (200, 404), path
    for path in ACTIONS:
        assert call(app, "POST", path).status_code == 401, path
        assert call(app, "POST", path, "blt_forged").status_code == 401, path
        assert call(app, "POST", path, tokens["read"]).status_code == 403, path
        answer = call(app, "POST", path, tokens["write"])
        assert answer.status_code == 200, (path, answer.text)
    assert [name for name, _ in called] == ["cancel", "rerun", "rollback", "close_preview", "push"]
    assert called[3][1] == {"pr": 3} and called[4][1] == {"branch": "main"}


def test_reads_carry_no_secret_and_the_openapi_document_is_served(
    tmp_path: Path, store: Store
) -> None:
    app, tokens, _ = setup(tmp_path, store)
    secrets = call(app, "GET", "/api/secrets", tokens["read"])
    assert secrets.json()[0]["name"] == "AUTH_SECRET"
    for path in READS:
        assert SECRET_VALUE not in call(app, "GET", path, tokens["read"]).text
    prs = call(app, "GET", "/api/prs", tokens["read"]).json()
    assert prs[0]["number"] == 1 and prs[0]["state"] == "open"
    environments = call(app, "GET", "/api/environments", tokens["read"]).json()
    assert environments[0]["name"] == "production"
    document = call(app, "GET", "/openapi.json").json()
    for path in ("/api/runs/{run_id}", "/api/environments", "/webhooks/github", "/metrics"):
        assert path in document["paths"]
    metrics = call(app, "GET", "/metrics")
    assert metrics.status_code == 200 and "# TYPE branchline_runs gauge" in metrics.text


def test_run_logs_follow_as_server_sent_events(tmp_path: Path, store: Store) -> None:
    app, tokens, _ = setup(tmp_path, store)

    async def make_run() -> int:
        from datetime import UTC, datetime

        from branchline.store import runs as run_rows

        async with store.connect() as conn:
            prs = await forge_rows.list_prs(conn, _project_of(app))
            assert prs
            run_id = await run_rows.insert_run(
                conn, project=_project_of(app), workflow="testing", definition={}, jobs=[],
                triggered_by="t", ref=None, sha=None, base_sha=None, pr=None, repo=None,
                concurrency_group=None, cancel_in_progress=False, secret_scope=None,
            )  # fmt: skip
            now = datetime.now(UTC)
            await run_rows.insert_logs(
                conn, [(run_id, None, None, "stdout", f"line {i}", now) for i in range(3)]
            )
            await run_rows.set_run(conn, run_id, status="success", finished_at=now)
        return run_id

    run_id = asyncio.run(make_run())
    answer = call(app, "GET", f"/api/runs/{run_id}/logs?follow=1", tokens["read"])
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    events = [block for block in answer.text.split("\n\n") if block]
    assert [e.splitlines()[1] for e in events] == ["event: line"] * 3 + ["data: {}"]
    assert '"line":"line 2"' in events[2]


def _project_of(app: Any) -> str:
    return str(app.state.project)


def test_dashboard_refuses_forged_cookies_and_missing_csrf(tmp_path: Path, store: Store) -> None:
    app, tokens, called = setup(tmp_path, store)

    async def go() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            # No session: every page sends the visitor to the log-in page.
            for path in ("/dashboard/", "/dashboard/runs", "/dashboard/deployments"):
                answer = await client.get(path)
                assert answer.status_code == 303
                assert answer.headers["location"] == "/dashboard/login"
            refused = await client.post("/dashboard/login", data={"token": "blt_forged"})
            assert "unknown token" in refused.text and "branchline_session" not in refused.cookies
            forged = "7b7d." + "0" * 64  # '{}' signed with the wrong key
            client.cookies.set("branchline_session", forged, path="/dashboard")
            assert (await client.get("/dashboard/")).status_code == 303
            form = {"service": "api", "environment": "production", "csrf": "x"}
            assert (await client.post("/dashboard/rollback", data=form)).status_code == 303
            client.cookies.clear()
            # A real session, read-only: pages yes, the rollback button no.
            login = await client.post("/dashboard/login", data={"token": tokens["read"]})
            assert login.status_code == 303
            assert (await client.get("/dashboard/")).status_code == 200
            assert (await client.post("/dashboard/rollback", data=form)).status_code == 403
            client.cookies.clear()
            await client.post("/dashboard/login", data={"token": tokens["write"]})
            page = (await client.get("/dashboard/deployments")).text
            csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
            assert (await client.post("/dashboard/rollback", data=form)).status_code == 403
            done = await client.post("/dashboard/rollback", data={**form, "csrf": csrf})
            assert done.status_code == 303 and "rollback%20done" in done.headers["location"]
            assert called[-1] == ("rollback", {"service": "api", "environment": "production"})
            cookie = login.headers.get("set-cookie", "")
            assert "HttpOnly" in cookie and "SameSite=lax" in cookie

    asyncio.run(go())
