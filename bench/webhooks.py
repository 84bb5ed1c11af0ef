"""Webhook acceptance latency: GitHub deliveries to branchline's HTTP server.

Target (server issue): answer within a few milliseconds (record the event, let the
engine work). Measures, with 1,000 signed `push` deliveries of a real payload (the
octokit example vendored in tests/fixtures) against the app under a real uvicorn
server on an embedded state database:

- acceptance latency p50/p99, one delivery at a time (POST to answer);
- the raw work it wraps: the same 1,000 events recorded straight into the store
  (one transaction each), and branchline's overhead as the ratio of the two p50s;
- the same 1,000 deliveries again, 50 at a time, each sent twice: p50/p99, and
  that every delivery was recorded exactly once.

    .venv/bin/python bench/webhooks.py [--deliveries 1000] [--concurrency 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from branchline.config import load_config
from branchline.postgres.cluster import free_port
from branchline.server.app import create_app
from branchline.server.webhooks import signature_of
from branchline.store import Store, locate_state
from branchline.store import forge as forge_rows

TARGET_P50_MS = 10.0
SECRET = b"a benchmark secret"
PAYLOAD = (
    Path(__file__).resolve().parent.parent
    / "tests/fixtures/github-webhooks/octokit-examples/push.new-branch-master.payload.json"
)


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
    for _ in range(n):
        began = time.perf_counter()
        async with store.connect() as conn, conn.transaction():
            await forge_rows.record_event(
                conn, project, delivery_id=f"raw-{uuid.uuid4()}", kind="push", action=None,
                source="bench", payload=payload,
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


async def burst(url: str, body: bytes, n: int, concurrency: int) -> tuple[list[float], list[int]]:
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

        codes = await asyncio.gather(*(one(h) for h in deliveries + deliveries))
    return taken, list(codes)


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
        app = create_app(load_config(root / "branchline.toml", env={}), store, secret=SECRET)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        url = f"http://127.0.0.1:{port}"
        try:
            raw = asyncio.run(raw_inserts(store, "bench-raw", payload, n))
            alone = asyncio.run(one_at_a_time(url, body, n))
            crowd, codes = asyncio.run(burst(url, body, n, args.concurrency))
        finally:
            server.should_exit = True
            thread.join(timeout=10)

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
        ("every delivery recorded exactly once", "yes" if exactly_once else "NO"),
    ]  # fmt: skip
    print(f"{'measure':<56}{'value':>20}")
    for label, value in table:
        print(f"{label:<56}{value:>20}")
    ok = alone_p50 < TARGET_P50_MS and exactly_once
    print(
        f"summary: raw_p50_ms={raw_p50:.2f} accept_p50_ms={alone_p50:.2f} "
        f"accept_p99_ms={alone_p99:.2f} overhead_ratio={alone_p50 / raw_p50:.2f} "
        f"burst_p50_ms={crowd_p50:.1f} burst_p99_ms={crowd_p99:.1f} recorded={recorded} "
        f"cpu_count={os.cpu_count()} target_p50_ms={TARGET_P50_MS} ok={str(ok).lower()}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
