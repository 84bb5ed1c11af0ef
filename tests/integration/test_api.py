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
from branchline.operations.previews import Started
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
    actions = Recording(called)

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


class Recording:
    """Actions that only say they were called, with what (the server's side is
    under test here, not the operations)."""

    def __init__(self, called: Called) -> None:
        self.called = called

    def __getattr__(self, name: str) -> Any:
        if name not in ACTION_NAMES:
            raise AttributeError(name)

        async def action(*args: Any) -> Started:
            params = dict(zip(PARAMS[name], args, strict=True))
            self.called.append((name, params))
            return Started(f"{name} done")

        return action


PARAMS = {
    "cancel": ("run_id", "by"), "rerun": ("run_id",), "rollback": ("service", "environment"),
    "close_preview": ("pr",), "push": ("branch",), "approve": ("pr", "by"),
    "create_branch": ("name", "parent", "expires"), "delete_branch": ("name",),
    "reset_branch": ("name",),
}  # fmt: skip


def call(
    app: Any, method: str, path: str, token: str | None = None, body: Any = None
) -> httpx.Response:
    async def go() -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path, headers=headers, json=body)

    return asyncio.run(go())


READS = [
    "/api/projects", "/api/runs", "/api/runs/1", "/api/runs/1/logs", "/api/environments",
    "/api/deployments/history", "/api/branches", "/api/dns", "/api/secrets", "/api/prs",
]  # fmt: skip
ACTIONS: list[tuple[str, str, Any]] = [
    ("POST", "/api/runs/1/cancel", None), ("POST", "/api/runs/1/rerun", None),
    ("POST", "/api/services/api/rollback", None), ("POST", "/api/previews/3/close", None),
    ("POST", "/api/pipelines/testing?branch=main", None),
    ("POST", "/api/branches", {"name": "dev-ann", "expires": "2h"}),
    ("DELETE", "/api/branches/dev-ann", None), ("POST", "/api/branches/dev-ann/reset", None),
]  # fmt: skip
ACTION_NAMES = (
    "cancel", "rerun", "rollback", "close_preview", "push", "create_branch", "delete_branch",
    "reset_branch",
)  # fmt: skip


def test_tokens_guard_every_endpoint(tmp_path: Path, store: Store) -> None:
    app, tokens, called = setup(tmp_path, store)
    for path in READS:
        assert call(app, "GET", path).status_code == 401, path
        assert call(app, "GET", path, "blt_forged").status_code == 401, path
        assert call(app, "GET", path, tokens["read"]).status_code in (200, 404), path
    for done, (method, path, body) in enumerate(ACTIONS):
        assert call(app, method, path, body=body).status_code == 401, path
        assert call(app, method, path, "blt_forged", body).status_code == 401, path
        assert call(app, method, path, tokens["read"], body).status_code == 403, path
        assert len(called) == done, "a refused request must not act"
        answer = call(app, method, path, tokens["write"], body)
        assert answer.status_code == 200, (path, answer.text)
    assert [name for name, _ in called] == list(ACTION_NAMES)
    assert called[3][1] == {"pr": 3} and called[4][1] == {"branch": "main"}
    assert called[5][1] == {"name": "dev-ann", "parent": None, "expires": "2h"}
    assert called[6][1] == called[7][1] == {"name": "dev-ann"}


def test_reads_carry_no_secret_and_the_openapi_document_is_served(
    tmp_path: Path, store: Store
) -> None:
    app, tokens, _ = setup(tmp_path, store)
    secrets = call(app, "GET", "/api/secrets", tokens["read"])
    assert secrets.json()[0]["name"] == "AUTH_SECRET"
    for path in READS:
        assert SECRET_VALUE not in call(app, "GET", path, tokens["read"]).text
    (project,) = call(app, "GET", "/api/projects", tokens["read"]).json()
    assert project["name"] == _project_of(app) and project["providers"]["database"] == "local"
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
    # `after` holds for the stream too: a client that reconnects gets only what is new.
    second = int(events[1].splitlines()[0].removeprefix("id: "))
    resumed = call(app, "GET", f"/api/runs/{run_id}/logs?follow=1&after={second}", tokens["read"])
    blocks = [block for block in resumed.text.split("\n\n") if block]
    assert len(blocks) == 2 and '"line":"line 2"' in blocks[0]
    assert blocks[1].startswith("event: end")


def _project_of(app: Any) -> str:
    return str(app.state.project)


DASHBOARD_ACTIONS: list[tuple[str, dict[str, str], str, dict[str, Any]]] = [
    ("/dashboard/rollback", {"service": "api", "environment": "production"}, "rollback",
     {"service": "api", "environment": "production"}),
    ("/dashboard/branches/create", {"name": "dev-ann", "parent": "", "expires": "2h"},
     "create_branch", {"name": "dev-ann", "parent": None, "expires": "2h"}),
    ("/dashboard/branches/delete", {"name": "dev-ann"}, "delete_branch", {"name": "dev-ann"}),
    ("/dashboard/branches/reset", {"name": "dev-ann"}, "reset_branch", {"name": "dev-ann"}),
    ("/dashboard/previews/close", {"pr": "3"}, "close_preview", {"pr": 3}),
]  # fmt: skip


def test_dashboard_refuses_forged_cookies_and_missing_csrf(tmp_path: Path, store: Store) -> None:
    app, tokens, called = setup(tmp_path, store)

    async def go() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            # No session: every page sends the visitor to the log-in page.
            for path in ("/dashboard/", "/dashboard/runs", "/dashboard/deployments",
                         "/dashboard/branches", "/dashboard/prs"):  # fmt: skip
                answer = await client.get(path)
                assert answer.status_code == 303
                assert answer.headers["location"] == "/dashboard/login"
            refused = await client.post("/dashboard/login", data={"token": "blt_forged"})
            assert "unknown token" in refused.text and "branchline_session" not in refused.cookies
            # A write session's cookie with its signature altered, and one signed with
            # another key: both are strangers, on every page and every button.
            login = await client.post("/dashboard/login", data={"token": tokens["write"]})
            real = client.cookies["branchline_session"]
            payload, signature = real.rsplit(".", 1)
            forgeries = [f"{payload}.{'0' * len(signature)}", "7b7d." + "0" * 64]
            page = (await client.get("/dashboard/branches")).text
            csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
            client.cookies.clear()
            for forged in forgeries:
                client.cookies.set("branchline_session", forged, path="/dashboard")
                assert (await client.get("/dashboard/")).status_code == 303
                for path, form, _name, _params in DASHBOARD_ACTIONS:
                    answer = await client.post(path, data={**form, "csrf": csrf})
                    assert answer.status_code == 303, path
                    assert answer.headers["location"] == "/dashboard/login"
                client.cookies.clear()
            # A real session, read-only: pages yes, buttons no, even with its CSRF token.
            await client.post("/dashboard/login", data={"token": tokens["read"]})
            assert (await client.get("/dashboard/")).status_code == 200
            page = (await client.get("/dashboard/branches")).text
            read_csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
            for path, form, _name, _params in DASHBOARD_ACTIONS:
                answer = await client.post(path, data={**form, "csrf": read_csrf})
                assert answer.status_code == 403, path
            client.cookies.clear()
            assert called == [], "a refused form must not act"
            # Write: without the CSRF token, or with another session's, refused; with it, done.
            await client.post("/dashboard/login", data={"token": tokens["write"]})
            page = (await client.get("/dashboard/deployments")).text
            csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
            for path, form, name, params in DASHBOARD_ACTIONS:
                assert (await client.post(path, data=form)).status_code == 403, path
                wrong = await client.post(path, data={**form, "csrf": read_csrf})
                assert wrong.status_code == 403, path
                done = await client.post(path, data={**form, "csrf": csrf})
                assert done.status_code == 303, (path, done.text)
                assert f"{name}%20done" in done.headers["location"]
                assert called[-1] == (name, params)
            assert len(called) == len(DASHBOARD_ACTIONS)
            cookie = login.headers.get("set-cookie", "")
            assert "HttpOnly" in cookie and "SameSite=lax" in cookie

    asyncio.run(go())
