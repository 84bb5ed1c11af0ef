"""What a Worker deploy costs on Cloudflare, measured on the fake Cloudflare (which runs
each deployed version in workerd): the Workers client's version upload and its
deployment at 100%, as Cloudflare compute makes them, against the raw work in the same
run: the same multipart upload and deployment sent as two plain httpx requests on one
connection (the fake starting workerd behind both).

Targets: 2 calls per deploy, and at most 1.5x the raw work's time (the difference is
the SDK's request building and the client's envelope reading).

    .venv/bin/python bench/cloudflare_deploy.py [--rounds N]
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
import time
from pathlib import Path

import httpx

from branchline.fakes.cloudflare import FakeCloudflare
from branchline.providers.compute.cloudflare_api import (
    CONTENT_TYPES,
    Binding,
    CloudflareWorkersClient,
)
from branchline.providers.compute.workerd import WorkerBundle, WorkerModule

TARGET_CALLS = 2
TARGET_RATIO = 1.5
TOKEN = "cf-bench-token-0123456789abcdef"  # noqa: S105 - the fake's, of no account
SCRIPT = "bench-api-preview-1"


def bundle(n: int) -> WorkerBundle:
    """A small Worker whose answer says which upload it is."""
    code = (
        "export default { async fetch(request, env) {\n"
        f"  return Response.json({{ round: {n}, mode: env.MODE, secret: !!env.KEY }});\n"
        "} };\n"
    ).encode()
    return WorkerBundle("index.js", {"index.js": WorkerModule("esModule", code)}, "2026-11-01")


BINDINGS = [Binding("MODE", "preview"), Binding("KEY", "bench-secret", secret=True)]


async def through_client(client: CloudflareWorkersClient, n: int) -> tuple[int, float]:
    calls = client.count.calls
    began = time.monotonic()
    version = await client.upload(SCRIPT, bundle(n), BINDINGS, deploy=False)
    await client.deploy(SCRIPT, version)
    return client.count.calls - calls, time.monotonic() - began


def raw(fake: FakeCloudflare, http: httpx.Client, n: int) -> float:
    """The same two requests, built by hand."""
    made = bundle(n)
    base = f"/accounts/{fake.account_id}/workers/scripts/{SCRIPT}"
    metadata = {
        "main_module": made.entry, "compatibility_date": made.compatibility_date,
        "compatibility_flags": [], "bindings": [b.as_metadata() for b in BINDINGS],
    }  # fmt: skip
    files: list[tuple[str, tuple[str | None, str | bytes, str]]] = [
        ("metadata", (None, json.dumps(metadata), "application/json"))
    ]
    files += [(name, (name, m.content, CONTENT_TYPES[m.kind])) for name, m in made.modules.items()]
    began = time.monotonic()
    answer = http.post(base + "/versions", files=files)
    answer.raise_for_status()
    version = answer.json()["result"]["id"]
    deployed = http.post(base + "/deployments", json={
        "strategy": "percentage", "versions": [{"version_id": version, "percentage": 100}],
    })  # fmt: skip
    deployed.raise_for_status()
    return time.monotonic() - began


def answering(fake: FakeCloudflare, n: int) -> None:
    got = httpx.get(fake.script_url(SCRIPT), timeout=30).json()
    assert got == {"round": n, "mode": "preview", "secret": True}, got


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    rounds = parser.parse_args().rounds
    work = Path(tempfile.mkdtemp(prefix="bench-cloudflare-"))
    fake = FakeCloudflare.start(work / "fake", token=TOKEN, runner="workerd")
    client = CloudflareWorkersClient(account_id=fake.account_id, zone_id=None, api_token=TOKEN,
                                     base_url=fake.url)  # fmt: skip
    headers = {"Authorization": f"Bearer {TOKEN}"}
    measured, floors = [], []
    try:
        loop = asyncio.new_event_loop()
        # Warm: the script made, the SDK imported, both connections open.
        loop.run_until_complete(client.upload(SCRIPT, bundle(0), BINDINGS, deploy=True))
        with httpx.Client(base_url=fake.url, headers=headers, timeout=60) as http:
            raw(fake, http, 0)
            for n in range(1, rounds + 1):  # interleaved: both see the same machine
                measured.append(loop.run_until_complete(through_client(client, n)))
                answering(fake, n)
                floors.append(raw(fake, http, n))
                answering(fake, n)
        loop.run_until_complete(client.aclose())
        loop.close()
        assert fake.calls()["invalid"] == [], fake.calls()["invalid"]
    finally:
        fake.stop()
        shutil.rmtree(work, ignore_errors=True)
    calls = max(c for c, _ in measured)
    took = statistics.median(t for _, t in measured)
    floor = statistics.median(floors)
    ratio = took / floor
    load = os.getloadavg()[0]
    for n, ((c, t), f) in enumerate(zip(measured, floors, strict=True), 1):
        print(f"round {n}: {c} calls in {t * 1000:.0f} ms; raw {f * 1000:.0f} ms")
    ok = calls <= TARGET_CALLS and ratio <= TARGET_RATIO
    print(f"summary: calls_per_deploy={calls} deploy_ms={took * 1000:.0f} "
          f"raw_ms={floor * 1000:.0f} ratio={ratio:.2f} load={load:.2f} "
          f"target_calls={TARGET_CALLS} target_ratio={TARGET_RATIO} ok={ok}")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
