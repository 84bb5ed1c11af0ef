"""Job pickup latency and throughput of the workflow engine.

Target (engine issue): job pickup (enqueued -> started) p50 under 20 ms, and 100
concurrent three-job runs complete without a failure. Measures, on an embedded
state database with real worker processes:

- pickup latency p50/p99 of no-op jobs submitted one at a time (idle workers);
- throughput of 1,000 no-op single-job runs with 1 and with 4 worker processes;
- 100 concurrent three-job runs (a -> b -> c), counting failures.

    .venv/bin/python bench/engine.py [--jobs 1000] [--runs 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from branchline.engine.engine import Engine, EngineOptions
from branchline.engine.model import Call, Job, Step, Workflow
from branchline.store import Store, locate_state
from branchline.store import runs as rows

PICKUP_TARGET_MS = 20.0
WORKER = """
import asyncio, sys
from pathlib import Path
from branchline.engine.engine import Engine
from branchline.store import Store, locate_state

async def noop(ctx):
    return None

async def main(url, project, concurrency):
    store = Store(locate_state(Path("/"), {"BRANCHLINE_DATABASE_URL": url}))
    await store.start()
    engine = Engine(store, project=project, actions={"noop": noop})
    async with engine.open():
        await engine.run_worker(concurrency=concurrency)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""
NOOP = Workflow("noop", (Job("only", (Step("noop", Call("noop")),), checkout=False),))
CHAIN = Workflow(
    "chain",
    (
        Job("a", (Step("noop", Call("noop")),), checkout=False),
        Job("b", (Step("noop", Call("noop")),), needs=("a",), checkout=False),
        Job("c", (Step("noop", Call("noop")),), needs=("b",), checkout=False),
    ),
)


def start_workers(
    url: str, project: str, count: int, concurrency: int
) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, url, project, str(concurrency)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]


def stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        worker.terminate()
    for worker in workers:
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


async def wait_all(engine: Engine, run_ids: list[int], timeout: float = 600) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with engine.store.connect() as conn:
            cur = await conn.execute(
                "SELECT status, count(*) FROM branchline.runs WHERE id = ANY(%s) GROUP BY 1",
                (run_ids,),
            )
            counts = {str(status): int(n) for status, n in await cur.fetchall()}  # type: ignore[misc]
        if sum(counts.get(s, 0) for s in ("success", "failure", "cancelled")) == len(run_ids):
            return counts
        await asyncio.sleep(0.1)
    raise RuntimeError(f"runs did not finish in {timeout} s")


async def pickup_latencies(engine: Engine, samples: int) -> list[float]:
    latencies = []
    for _ in range(samples):
        run_id = await engine.submit(NOOP, triggered_by="bench")
        await wait_all(engine, [run_id])
        async with engine.store.connect() as conn:
            (job,) = await rows.jobs_of(conn, run_id)
            cur = await conn.execute(
                "SELECT enqueued_at FROM branchline.jobs WHERE id = %s", (job.id,)
            )
            row = await cur.fetchone()
        assert row is not None and job.started_at is not None
        latencies.append((job.started_at - row[0]).total_seconds() * 1000)  # type: ignore[operator]
    return latencies


async def throughput(engine: Engine, jobs: int) -> float:
    began = time.perf_counter()
    run_ids = [await engine.submit(NOOP, triggered_by="bench") for _ in range(jobs)]
    counts = await wait_all(engine, run_ids)
    if counts.get("success", 0) != jobs:
        raise RuntimeError(f"throughput runs did not all succeed: {counts}")
    return jobs / (time.perf_counter() - began)


async def concurrent_chains(engine: Engine, runs: int) -> dict[str, int]:
    run_ids = list(
        await asyncio.gather(*(engine.submit(CHAIN, triggered_by="bench") for _ in range(runs)))
    )
    return await wait_all(engine, run_ids)


async def measure(url: str, args: argparse.Namespace) -> dict[str, float]:
    results: dict[str, float] = {}
    store = Store(locate_state(Path("/"), {"BRANCHLINE_DATABASE_URL": url}))
    await store.start()
    for workers_count in (1, 4):
        project = f"bench{workers_count}"
        engine = Engine(store, project=project, options=EngineOptions())
        workers = start_workers(url, project, workers_count, concurrency=4)
        try:
            async with engine.open():
                await asyncio.sleep(2.0)  # let the workers register and LISTEN
                if workers_count == 1:
                    lat = await pickup_latencies(engine, args.samples)
                    results["pickup_p50_ms"] = statistics.median(lat)
                    results["pickup_p99_ms"] = statistics.quantiles(lat, n=100)[98]
                results[f"jobs_per_s_{workers_count}w"] = await throughput(engine, args.jobs)
                if workers_count == 4:
                    counts = await concurrent_chains(engine, args.runs)
                    results["chain_runs"] = args.runs
                    results["chain_failures"] = args.runs - counts.get("success", 0)
        finally:
            stop_workers(workers)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--samples", type=int, default=100)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="branchline-bench-"))
    root.chmod(0o755)
    state = Store(locate_state(root, {"BRANCHLINE_STATE_DIR": str(root / "state")}))
    try:
        asyncio.run(state.start())
        results = asyncio.run(measure(state.url, args))
    finally:
        state.location.cluster.destroy()
        shutil.rmtree(root, ignore_errors=True)
    table = [
        ("job pickup p50 (enqueued -> started)", f"{results['pickup_p50_ms']:.1f} ms"),
        ("job pickup p99", f"{results['pickup_p99_ms']:.1f} ms"),
        (f"throughput, {args.jobs} no-op runs, 1 worker", f"{results['jobs_per_s_1w']:.1f} /s"),
        (f"throughput, {args.jobs} no-op runs, 4 workers", f"{results['jobs_per_s_4w']:.1f} /s"),
        (f"{args.runs} concurrent three-job runs, failed", str(int(results["chain_failures"]))),
    ]
    print(f"{'measure':<46}{'value':>14}")
    for label, value in table:
        print(f"{label:<46}{value:>14}")
    ok = results["pickup_p50_ms"] < PICKUP_TARGET_MS and results["chain_failures"] == 0
    print(
        "summary: "
        + " ".join(
            f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in results.items()
        )
        + f" cpu_count={os.cpu_count()} target_pickup_ms={PICKUP_TARGET_MS} ok={str(ok).lower()}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
