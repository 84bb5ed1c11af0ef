"""While the state database is gone: the API and the webhook endpoint answer a
retryable 503 that says so (never a 500, never a request left hanging), and
`Store.keep_alive` marks it unavailable, waits for an external one (saying so in
the log) and clears the mark once it answers again. A real cluster, really stopped."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from pathlib import Path

import httpx
import pytest

from branchline.config import load_config
from branchline.postgres import Cluster
from branchline.server.app import create_app
from branchline.store import Store, locate_state
from branchline.store import forge as forge_rows
from branchline.store import tokens as token_rows
from tests.integration.test_webhooks import CAPTURED_SECRET, captured

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(cluster_root: Path) -> Cluster:
    cluster = Cluster(cluster_root / f"gone-{uuid.uuid4().hex[:8]}")
    cluster.init(durable=False)
    cluster.start()
    yield cluster
    cluster.destroy()


def test_api_and_webhooks_answer_503_while_the_state_database_is_down(
    tmp_path: Path, cluster: Cluster
) -> None:
    store = Store(locate_state(Path("/"), {"BRANCHLINE_DATABASE_URL": cluster.uri()}))
    asyncio.run(store.start())
    headers, body = captured("pull_request.opened")
    repository = json.loads(body)["repository"]["full_name"]
    (tmp_path / "branchline.toml").write_text(
        f'[project]\nname = "gone"\nzone = "gone.localhost"\ngithub_repository = '
        f'"{repository}"\n[database]\nmigrate = "true"\n'
    )
    config = load_config(tmp_path / "branchline.toml", env={})

    async def token() -> str:
        async with store.connect() as conn:
            return (await token_rows.create(conn, "gone", "ci", "write"))[1]

    bearer = {"Authorization": f"Bearer {asyncio.run(token())}"}
    app = create_app(config, store, secret=CAPTURED_SECRET)

    async def ask() -> list[tuple[int, float, httpx.Response]]:
        transport = httpx.ASGITransport(app=app)
        answers = []
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for method, path, kwargs in (
                ("GET", "/api/runs", {"headers": bearer}),
                ("GET", "/api/environments", {"headers": bearer}),
                ("POST", "/webhooks/github", {"headers": headers, "content": body}),
                ("GET", "/healthz", {}),
            ):
                began = time.monotonic()
                answer = await client.request(method, path, **kwargs)
                answers.append((answer.status_code, time.monotonic() - began, answer))
        return answers

    assert [status for status, _t, _a in asyncio.run(ask())] == [200, 200, 202, 200]
    # A new delivery id: the same one would be a replay.
    headers = {k: v for k, v in headers.items() if k.lower() != "x-github-delivery"}
    headers["X-GitHub-Delivery"] = str(uuid.uuid4())
    cluster.stop()
    for status, took, answer in asyncio.run(ask()):
        assert status == 503, answer.text
        assert took < 15, f"{answer.request.url.path} hung {took:.1f} s"
        assert "state database is unavailable" in answer.json()["detail"]
        assert answer.headers["Retry-After"].isdigit()
        assert cluster.meta().password not in answer.text
    store.unavailable = "stopped for the test"  # as keep_alive marks it: refused at once
    for status, took, _answer in asyncio.run(ask()):
        assert status == 503 and took < 1
    store.unavailable = None
    cluster.start()
    again = asyncio.run(ask())
    assert [status for status, _t, _a in again] == [200, 200, 202, 200], again[2][2].text

    async def recorded() -> int:
        async with store.connect() as conn:
            return len(await forge_rows.events(conn, "gone", limit=100))

    assert asyncio.run(recorded()) == 2  # the refused delivery was not recorded


def test_keep_alive_waits_for_an_external_state_database(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(locate_state(Path("/"), {"BRANCHLINE_DATABASE_URL": cluster.uri()}))

    async def scenario() -> tuple[str | None, str | None, float]:
        watch = asyncio.create_task(store.keep_alive(every=0.1))
        try:
            await asyncio.sleep(0.3)
            before = store.unavailable
            await asyncio.to_thread(cluster.stop)
            deadline = time.monotonic() + 10
            while store.unavailable is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            during = store.unavailable
            await asyncio.to_thread(cluster.start)
            began = time.monotonic()
            await asyncio.wait_for(store.wait_available(every=0.1), timeout=30)
            while store.unavailable is not None and time.monotonic() - began < 30:
                await asyncio.sleep(0.05)
            return before, during, time.monotonic() - began
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch

    with caplog.at_level(logging.WARNING, logger="branchline.store.state"):
        before, during, back_after = asyncio.run(scenario())
    assert before is None
    assert during is not None, "keep_alive did not notice the database was gone"
    assert store.unavailable is None, "keep_alive did not notice it came back"
    said = caplog.text
    assert "does not answer" in said and "waiting for the external state database" in said
    assert "answers again" in said
    assert cluster.meta().password not in said
    assert back_after < 30
