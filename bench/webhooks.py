"""Webhook acceptance latency: GitHub deliveries to branchline's HTTP server.

Target (server issue): answer within a few milliseconds (record the event, let the
engine work). Measures, with 1,000 signed `push` deliveries of a real payload (the
octokit example vendored in tests/fixtures) against the app under a real uvicorn
server in a process of its own, on an embedded state database:

- acceptance latency p50/p99, one delivery at a time (POST to answer);
- the raw work it wraps: the same 1,000 events recorded straight into the store
  (one transaction each, pooled connections), alternated with the deliveries in
  blocks of 100, and the ratio of the two p50s (HTTP, signature check and JSON
  parse are the difference);
- the same 1,000 deliveries again, 50 at a time, each sent twice: p50/p99, the
  throughput, and that every delivery was recorded exactly once.

Exits 1 when the one-at-a-time p50 is 10 ms or more, or a delivery is lost or
recorded twice.

    .venv/bin/python bench/webhooks.py [--deliveries 1000] [--concurrency 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from branchline.postgres.cluster import free_port
from branchline.server.webhooks import signature_of
from branchline.store import Store, locate_state
from branchline.store import forge as forge_rows

TARGET_P50_MS = 10.0
SECRET = b"a benchmark secret"
PAYLOAD = (
    Path(__file__).resolve().parent.parent
    / "tests/fixtures/github-webhooks/octokit-examples/push.new-branch-master.payload.json"
)


SERVER = """
import sys
from pathlib import Path
import uvicorn
from branchline.config import load_config
from branchline.server.app import create_app
from branchline.store import Store, locate_state

config, url, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = Store(locate_state(Path("/"), {"BRANCHLINE_DATABASE_URL": url}))
app = create_app(load_config(Path(config), env={}), store, secret=b"a benchmark secret")
uvicorn.run(app, host="127.0.0.1", port=port, log_level="error")
"""


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def signed(body: bytes) -> dict[str, str]:
    return {
        "X-GitHub-Event": "push", "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": signature_of(SECRET, body), "Content-Type": "application/json",
    }  # fmt: skip


def quantiles_ms(samples: list[float]) -> tuple[float, float]:
    cut = statistics.quantiles(samples, n=100)
    return cut[49] * 1000, cut[98] * 1000


async def raw_inserts(store: Store, project: str, payload: dict[str, Any], n: int) -> list[float]:
    taken = []
    # A Store of its own: the server's pool belongs to the server's event loop.
    own = Store(locate_state(Path("/"), {"BRANCHLINE_DATABASE_URL": store.url}))
    async with own.pooled(max_size=10):  # as the server does: connections are reused
        for _ in range(n):
            began = time.perf_counter()
            async with own.connect() as conn, conn.transaction():
                await forge_rows.record_event(
                    conn, project, delivery_id=f"raw-{uuid.uuid4()}", kind="push", action=None,
                    source="webhook", payload=payload,
                )  # fmt: skip
            taken.append(time.perf_counter() - began)
    return taken


async def one_at_a_time(url: str, body: bytes, n: int) -> list[float]:
    taken = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for _ in range(n):
            headers = signed(body)
            began = time.perf_counter()
            answer = await client.post("/webhooks/github", content=body, headers=headers)
            taken.append(time.perf_counter() - began)
            if answer.status_code != 202:
                raise RuntimeError(f"delivery refused: {answer.status_code} {answer.text}")
    return taken


async def burst(
    url: str, body: bytes, n: int, concurrency: int
) -> tuple[list[float], list[int], float]:
    deliveries = [signed(body) for _ in range(n)]
    taken: list[float] = []
    at_once = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def one(headers: dict[str, str]) -> int:
            async with at_once:  # the latency of a delivery, not of this client's queue
                began = time.perf_counter()
                answer = await client.post("/webhooks/github", content=body, headers=headers)
                taken.append(time.perf_counter() - began)
            return answer.status_code

        began = time.perf_counter()
        codes = await asyncio.gather(*(one(h) for h in deliveries + deliveries))
        wall = time.perf_counter() - began
    return taken, list(codes), wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="branchline-bench-"))
    root.chmod(0o755)
    (root / "branchline.toml").write_text(
        '[project]\nname = "bench"\nzone = "bench.localhost"\n[database]\nmigrate = "true"\n'
    )
    store = Store(locate_state(root, {"BRANCHLINE_STATE_DIR": str(root / "state")}))
    body = PAYLOAD.read_bytes()
    payload = json.loads(body)
    n = args.deliveries
    try:
        asyncio.run(store.start())
        # The server in a process of its own, as `branchline serve` runs it: sharing
        # this process's interpreter with the client would measure the GIL.
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(root / "branchline.toml"), store.url, str(port)]
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while not _answers(f"{url}/healthz"):
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the webhook server did not start")
            time.sleep(0.05)
        try:
            # Alternated in blocks, so neither side gets the warmer database.
            raw: list[float] = []
            alone: list[float] = []
            for _ in range(10):
                raw += asyncio.run(raw_inserts(store, "bench-raw", payload, n // 10))
                alone += asyncio.run(one_at_a_time(url, body, n // 10))
            crowd, codes, wall = asyncio.run(burst(url, body, n, args.concurrency))
        finally:
            server.terminate()
            server.wait(timeout=10)

        async def count() -> int:
            async with store.connect() as conn:
                found = await conn.execute(
                    "SELECT count(*) FROM branchline.events WHERE project = 'bench'"
                )
                row = await found.fetchone()
                return int(row[0]) if row else 0

        recorded = asyncio.run(count())
    finally:
        store.location.cluster.destroy()
        shutil.rmtree(root, ignore_errors=True)

    raw_p50, raw_p99 = quantiles_ms(raw)
    alone_p50, alone_p99 = quantiles_ms(alone)
    crowd_p50, crowd_p99 = quantiles_ms(crowd)
    exactly_once = recorded == 2 * n and codes.count(202) == n and set(codes) <= {200, 202}
    table = [
        (f"raw insert of an event, p50 / p99 ({n})", f"{raw_p50:.1f} / {raw_p99:.1f} ms"),
        (f"delivery accepted, one at a time, p50 / p99 ({n})",
         f"{alone_p50:.1f} / {alone_p99:.1f} ms"),
        ("overhead: delivery p50 / raw insert p50", f"{alone_p50 / raw_p50:.1f}x"),
        (f"{n} deliveries x2, {args.concurrency} at once, p50 / p99",
         f"{crowd_p50:.1f} / {crowd_p99:.1f} ms"),
        ("  throughput of that burst", f"{2 * n / wall:.0f} posts/s"),
        ("every delivery recorded exactly once", "yes" if exactly_once else "NO"),
    ]  # fmt: skip
    print(f"{'measure':<56}{'value':>20}")
    for label, value in table:
        print(f"{label:<56}{value:>20}")
    ok = alone_p50 < TARGET_P50_MS and exactly_once
    print(
        f"summary: raw_p50_ms={raw_p50:.2f} accept_p50_ms={alone_p50:.2f} "
        f"accept_p99_ms={alone_p99:.2f} overhead_ratio={alone_p50 / raw_p50:.2f} "
        f"burst_p50_ms={crowd_p50:.1f} burst_p99_ms={crowd_p99:.1f} "
        f"burst_posts_per_s={2 * n / wall:.0f} recorded={recorded} "
        f"cpu_count={os.cpu_count()} target_p50_ms={TARGET_P50_MS} ok={str(ok).lower()}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
