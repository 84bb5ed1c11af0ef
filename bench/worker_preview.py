"""How fast a preview's three Workers are live locally, against the raw work.

The example app of Workers (examples/workers: api, auth, web, on Postgres), made a git
repository with its own embedded state database and an edge in this process. Setup,
untimed: the three releases built (npm ci, wrangler's bundle, sandboxed), a database
migrated with the example's own `node migrate.js`. Then, interleaved, each round:

- branchline: the three deploys of a new preview environment at once, as the preview
  pipeline makes them (local compute: each Worker in workerd in the sandbox under its
  keeper, health-checked, routed), until each answers /health through the edge with
  the commit; then the preview is deleted (untimed);
- the raw work: the same three bundles, each with a workerd config written for it and
  the same bindings, three `workerd serve` started at once, until each answers /health
  on its port; then stopped.

Target: branchline's time at most 2.0x the raw work's (what it adds: the sandbox, the
keeper, the health check's schedule, the route, the records). Medians of the rounds;
the load average is printed.

    .venv/bin/python bench/worker_preview.py [--rounds N]
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

import httpx
import psycopg

from branchline.config import load_config
from branchline.edge import EdgeProxy
from branchline.environment import Environment
from branchline.postgres.cluster import free_port
from branchline.providers.compute import DeploymentEnv, Release, runtimes, workerd, workertools
from branchline.providers.compute.local import LocalComputeProvider
from branchline.sandbox import Sandbox
from branchline.store import Store, locate_state

TARGET_RATIO = 2.0
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "workers"
SECRET = "bench-auth-secret-0123456789"  # noqa: S105 - a bench's own
SERVICES = ("api", "auth", "web")


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=b", "-c", "user.email=b@b", *args],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def make_repo(repo: Path) -> str:
    shutil.copytree(EXAMPLE, repo, ignore=shutil.ignore_patterns("node_modules", ".branchline"))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "workers")
    return git(repo, "rev-parse", "HEAD")


def migrate(repo: Path, url: str) -> None:
    env = {**os.environ, "DATABASE_URL": url}
    for argv in (["npm", "ci", "--no-audit", "--no-fund", "--silent"], ["node", "migrate.js"]):
        subprocess.run(argv, cwd=repo, env=env, check=True, capture_output=True)


def bindings(environment: Environment, zone: str, port: int, url: str) -> DeploymentEnv:
    siblings = {}
    for service in SERVICES:
        host = environment.host_name(service, zone)
        siblings[f"{service.upper()}_URL"] = f"http://{host}:{port}/"
        siblings[f"{service.upper()}_HOST"] = host
    return DeploymentEnv(vars={"DATABASE_URL": url, **siblings}, secrets={"AUTH_SECRET": SECRET})


async def healthy(client: httpx.AsyncClient, url: str, sha: str, host: str | None = None) -> None:
    """Poll `url` until it answers 200 with the commit."""
    headers = {"Host": host} if host else {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            answer = await client.get(url, headers=headers)
            if answer.status_code == 200 and answer.json().get("commit") == sha:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.01)
    raise RuntimeError(f"{url} never answered healthy")


async def with_branchline(
    provider: LocalComputeProvider, built: dict[str, Release], edge_port: int, n: int,
    url: str, sha: str, client: httpx.AsyncClient,
) -> float:  # fmt: skip
    environment = Environment.preview(n)
    env = bindings(environment, provider.config.project.zone, edge_port, url)
    began = time.monotonic()
    await asyncio.gather(*(
        provider.deploy(service, environment, built[service], env, position=position)
        for position, service in enumerate(SERVICES)
    ))  # fmt: skip
    await asyncio.gather(*(
        healthy(client, f"http://127.0.0.1:{edge_port}/health", sha,
                environment.host_name(s, provider.config.project.zone))
        for s in SERVICES
    ))  # fmt: skip
    took = time.monotonic() - began
    for service in SERVICES:
        await provider.delete(service, environment)
    return took


async def raw(
    provider: LocalComputeProvider, built: dict[str, Release], work: Path, url: str,
    sha: str, client: httpx.AsyncClient,
) -> float:  # fmt: skip
    tools = workertools.find()
    environment = Environment.preview(9999)
    env = bindings(environment, provider.config.project.zone, 1, url)
    starts = []
    for service in SERVICES:
        location = Path(built[service].location)
        declared = runtimes.wrangler_config(location / "tree" / "services" / service)
        bundle = workerd.bundle_from_dir(location / runtimes.BUNDLE, declared)
        given = {**env.vars, **env.secrets, "BRANCHLINE_COMMIT": sha}
        port = free_port()
        config = workerd.write_config(
            bundle, port=port, bindings_from_env=sorted(given),
            vars=workerd.vars_of(declared), directory=work / f"raw-{service}",
        )  # fmt: skip
        starts.append((workerd.serve_command(config, tools), given, port))
    began = time.monotonic()
    processes = [
        subprocess.Popen(argv, env={"PATH": os.environ["PATH"], **given},
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for argv, given, _port in starts
    ]  # fmt: skip
    try:
        await asyncio.gather(*(healthy(client, f"http://127.0.0.1:{port}/health", sha)
                               for _argv, _given, port in starts))  # fmt: skip
        return time.monotonic() - began
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)


async def measure(root: Path, store: Store, rounds: int) -> tuple[list[float], list[float]]:
    repo = root / "repo"
    sha = make_repo(repo)
    config = load_config(repo / "branchline.toml", env={})
    await store.start()
    cluster = store.location.cluster
    with psycopg.connect(cluster.uri(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE bench_app")
    url = cluster.uri("bench_app")
    await asyncio.to_thread(migrate, repo, url)
    edge = EdgeProxy(store)
    await edge.start()
    state = root / "state"
    provider = LocalComputeProvider(
        config=config, store=store, state_dir=state, repo=repo, edge_port=edge.port,
        drain=0.0, sandbox=Sandbox.for_project(config, state),
    )  # fmt: skip
    ours: list[float] = []
    floors: list[float] = []
    try:
        built = {s: await provider.build(s, sha) for s in SERVICES}
        async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
            await raw(provider, built, root, url, sha, client)  # warm: the page cache
            await with_branchline(provider, built, edge.port, 1, url, sha, client)
            for n in range(2, rounds + 2):  # interleaved: both see the same machine
                ours.append(await with_branchline(provider, built, edge.port, n, url, sha,
                                                  client))  # fmt: skip
                floors.append(await raw(provider, built, root, url, sha, client))
    finally:
        await provider.aclose()
        await edge.stop()
    return ours, floors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    workertools.find()  # missing tools: said now
    root = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    root.chmod(0o755)
    store = Store(locate_state(root, {"BRANCHLINE_STATE_DIR": str(root / "state")}))
    try:
        ours, floors = asyncio.run(measure(root, store, rounds))
    finally:
        store.location.cluster.destroy()
        shutil.rmtree(root, ignore_errors=True)
    for n, (took, floor) in enumerate(zip(ours, floors, strict=True), 1):
        print(f"round {n}: three Workers live through the edge in {took * 1000:.0f} ms; "
              f"three raw workerd starts {floor * 1000:.0f} ms")  # fmt: skip
    took, floor = statistics.median(ours), statistics.median(floors)
    ratio = took / floor
    ok = ratio <= TARGET_RATIO
    print(f"summary: preview_ms={took * 1000:.0f} raw_ms={floor * 1000:.0f} ratio={ratio:.2f} "
          f"load={os.getloadavg()[0]:.2f} target_ratio={TARGET_RATIO} ok={ok}")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
