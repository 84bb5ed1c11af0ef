"""GitHub's real webhook deliveries (from shared/realworld), verified and recorded
once; tampered, unsigned and malformed ones refused; a burst of 1,000 recorded
exactly once through a real HTTP server."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from branchline.config import Config, load_config
from branchline.events import Push
from branchline.postgres import Cluster
from branchline.server.app import create_app
from branchline.server.webhooks import signature_of
from branchline.store import Store
from branchline.store import forge as forge_rows
from tests.conftest import REPO
from tests.integration.conftest import store_in

pytestmark = pytest.mark.integration
REALWORLD = REPO / "tests" / "fixtures" / "github-webhooks"
CAPTURED = REALWORLD / "captured-deliveries"
OCTOKIT = REALWORLD / "octokit-examples"
# The secret the captured deliveries were signed with (see shared/realworld/README.md).
CAPTURED_SECRET = b"402786017574bd28f9d8f7a18648939751c47fe09077d56e10f0444f14fbb73b"
TEST_SECRET = b"a test secret for octokit's example payloads"


def captured(name: str) -> tuple[dict[str, str], bytes]:
    data = json.loads((CAPTURED / f"{name}.delivery.json").read_text())
    return data["headers"], base64.b64decode(data["body_raw_base64"])


def config_for(tmp_path: Path, name: str, repository: str | None) -> Config:
    (tmp_path / "branchline.toml").write_text(
        f'[project]\nname = "{name}"\nzone = "{name}.localhost"\n'
        + (f'github_repository = "{repository}"\n' if repository else "")
        + '[database]\nmigrate = "true"\n'
    )
    return load_config(tmp_path / "branchline.toml", env={})


@pytest.fixture(scope="module")
def store(pg_cluster: Cluster) -> Store:
    return store_in(pg_cluster, "bl_webhooks")


def post(app: Any, headers: dict[str, str], body: bytes) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/webhooks/github", content=body, headers=headers)

    return asyncio.run(go())


def events(store: Store, project: str) -> list[forge_rows.EventRow]:
    async def go() -> list[forge_rows.EventRow]:
        async with store.connect() as conn:
            return await forge_rows.events(conn, project, limit=5000)

    return asyncio.run(go())


def signed(event: str, body: bytes, secret: bytes = TEST_SECRET) -> dict[str, str]:
    return {
        "X-GitHub-Event": event, "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": signature_of(secret, body), "Content-Type": "application/json",
    }  # fmt: skip


def test_captured_deliveries_are_verified_recorded_once_and_mirrored(
    tmp_path: Path, store: Store
) -> None:
    headers, body = captured("pull_request.opened")
    repository = json.loads(body)["repository"]["full_name"]
    project = f"wh{uuid.uuid4().hex[:6]}"
    app = create_app(config_for(tmp_path, project, repository), store, secret=CAPTURED_SECRET)
    for name in ("pull_request.opened", "pull_request.synchronize", "pull_request.closed.merged"):
        headers, body = captured(name)
        answer = post(app, headers, body)
        assert answer.status_code == 202, answer.text
        assert answer.json()["message"] == "recorded"
        replay = post(app, headers, body)
        assert replay.status_code == 200 and "recorded before" in replay.json()["message"]
    headers, body = captured("workflow_run.in_progress")
    assert post(app, headers, body).status_code == 202  # acknowledged, ignored
    recorded = events(store, project)
    assert sorted(e.action or "" for e in recorded) == ["closed", "opened", "synchronize"]
    assert all(e.source == "webhook" and e.kind == "pull_request" for e in recorded)
    number = int(json.loads(captured("pull_request.closed.merged")[1])["number"])

    async def pr() -> forge_rows.PullRequestRow | None:
        async with store.connect() as conn:
            return await forge_rows.get_pr(conn, project, number)

    mirrored = asyncio.run(pr())
    assert mirrored is not None and mirrored.state == "merged"


def test_tampered_unsigned_wrongly_signed_and_malformed_deliveries(
    tmp_path: Path, store: Store
) -> None:
    project = f"wh{uuid.uuid4().hex[:6]}"
    app = create_app(config_for(tmp_path, project, None), store, secret=CAPTURED_SECRET)
    headers, body = captured("pull_request.opened")
    tampered = body.replace(b'"opened"', b'"closed"', 1)
    assert tampered != body
    assert post(app, headers, tampered).status_code == 401
    wrong = {**headers, "x-hub-signature-256": signature_of(b"not the secret", body)}
    assert post(app, wrong, body).status_code == 401
    missing = {k: v for k, v in headers.items() if k != "x-hub-signature-256"}
    assert post(app, missing, body).status_code == 401
    sha1_only = {**missing, "x-hub-signature": "sha1=" + "0" * 40}
    assert post(app, sha1_only, body).status_code == 401
    for bad in (b"{not json", b"[1, 2]", b"\xff\xfe"):
        answer = post(app, signed("push", bad, CAPTURED_SECRET), bad)
        assert answer.status_code == 400, answer.text
    no_head = json.dumps({"action": "opened", "number": 1, "pull_request": {"state": "open"}})
    answer = post(app, signed("pull_request", no_head.encode(), CAPTURED_SECRET), no_head.encode())
    assert answer.status_code == 400 and "lacks pull_request.head" in answer.json()["message"]
    assert events(store, project) == []
    unconfigured = create_app(config_for(tmp_path, project, None), store, secret=None)
    assert post(unconfigured, headers, body).status_code == 401


def test_octokit_examples_ping_push_and_other_repositories(tmp_path: Path, store: Store) -> None:
    project = f"wh{uuid.uuid4().hex[:6]}"
    push = (OCTOKIT / "push.new-branch-master.payload.json").read_bytes()
    repository = json.loads(push)["repository"]["full_name"]
    app = create_app(config_for(tmp_path, project, repository), store, secret=TEST_SECRET)
    ping = (OCTOKIT / "ping.payload.json").read_bytes()
    answer = post(app, signed("ping", ping), ping)
    assert answer.status_code == 200 and answer.json()["message"] == "pong"
    assert post(app, signed("push", push), push).status_code == 202
    other = create_app(config_for(tmp_path, project, "someone/else"), store, secret=TEST_SECRET)
    ignored = post(other, signed("push", push), push)
    assert ignored.status_code == 202 and "no project here" in ignored.json()["message"]
    assert [(e.kind, e.event) for e in events(store, project)] == [
        ("push", Push("master", json.loads(push)["after"]))
    ]


@pytest.fixture
def server(tmp_path: Path, store: Store) -> Iterator[tuple[str, str]]:
    """The app behind a real uvicorn server on a free port, in a thread."""
    project = f"wh{uuid.uuid4().hex[:6]}"
    app = create_app(config_for(tmp_path, project, None), store, secret=TEST_SECRET)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    running = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not running.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", project
    finally:
        running.should_exit = True
        thread.join(timeout=10)


def test_a_burst_of_1000_deliveries_is_recorded_exactly_once(
    server: tuple[str, str], store: Store
) -> None:
    url, project = server
    push = (OCTOKIT / "push.new-branch-master.payload.json").read_bytes()
    deliveries = [signed("push", push) for _ in range(1000)]
    latencies: list[float] = []

    async def burst() -> list[int]:
        limits = httpx.Limits(max_connections=50)
        at_once = asyncio.Semaphore(50)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

            async def one(headers: dict[str, str]) -> int:
                async with at_once:  # latency of a delivery, not of a queue in this client
                    began = time.perf_counter()
                    answer = await client.post("/webhooks/github", content=push, headers=headers)
                    latencies.append(time.perf_counter() - began)
                return answer.status_code

            # Every delivery twice, concurrently: replays must not record twice.
            return await asyncio.gather(*(one(h) for h in deliveries + deliveries))

    async def one_at_a_time() -> list[float]:
        taken = []
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            for _ in range(200):
                headers = signed("push", push)
                began = time.perf_counter()
                answer = await client.post("/webhooks/github", content=push, headers=headers)
                taken.append(time.perf_counter() - began)
                assert answer.status_code == 202
        return taken

    alone = statistics.quantiles(asyncio.run(one_at_a_time()), n=100)
    codes = asyncio.run(burst())
    assert set(codes) <= {200, 202} and codes.count(202) == 1000
    recorded = events(store, project)
    assert len(recorded) == 1200
    assert {f"github-{h['X-GitHub-Delivery']}" for h in deliveries} <= {
        e.delivery_id for e in recorded
    }
    cut = statistics.quantiles(latencies, n=100)
    alone_ms, burst_ms = (alone[49] * 1000, alone[98] * 1000), (cut[49] * 1000, cut[98] * 1000)
    print(f"\nwebhook acceptance, one at a time (200): p50 {alone_ms[0]:.1f} ms, p99 "
          f"{alone_ms[1]:.1f} ms; a burst of 2,000 posts (1,000 deliveries, each replayed), "
          f"50 at once: p50 {burst_ms[0]:.1f} ms, p99 {burst_ms[1]:.1f} ms")  # fmt: skip
