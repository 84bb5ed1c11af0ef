"""Chaos: SIGKILL `branchline serve` (workers, edge, DNS in one process) at a random
moment of a preview's creation, a cleanup or a production rollout; restart it with
`branchline reconcile` (which starts serve again, reconciles, and waits for what is
pending);
assert that every environment is fully up or fully gone, that production serves the
releases the store says, and that nothing runs that the store does not know.

Seeded and repeatable: BRANCHLINE_CHAOS_SEED (default 7), BRANCHLINE_CHAOS_ITERATIONS
(default 30). The longest recovery is printed at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from branchline.config import load_config
from branchline.kit import Kit
from branchline.processes import started_for
from branchline.store import Store, locate_state, routes
from branchline.store import compute as compute_rows
from branchline.store import forge as forge_rows
from branchline.store import previews as preview_rows
from tests.codex_project import cli_env, commit_on, git, make_project, stop_everything_started
from tests.conftest import run_cli

pytestmark = pytest.mark.integration
SEED = int(os.environ.get("BRANCHLINE_CHAOS_SEED", "7"))
ITERATIONS = int(os.environ.get("BRANCHLINE_CHAOS_ITERATIONS", "30"))
SERVICES = ("api", "auth", "web")
KILL_WINDOW = {"preview": (0.1, 4.0), "cleanup": (0.05, 2.0), "rollout": (0.1, 6.0)}


@pytest.fixture
def project(tmp_path: Path, state_dir: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    root = make_project(tmp_path / "codex", quick_tests=True)
    config = root / "branchline.toml"
    config.write_text(config.read_text().replace("max_live = 10", "max_live = 100"))
    git(root, "commit", "-qam", "room for every preview")
    env = cli_env(state_dir)
    try:
        yield root, env
    finally:
        stop_everything_started(root, env, state_dir)


def cli(project: tuple[Path, dict[str, str]], *args: str) -> subprocess.CompletedProcess[str]:
    root, env = project
    try:
        done = run_cli(*args, cwd=root, env=env)
    except subprocess.TimeoutExpired:
        runs = run_cli("runs", "list", cwd=root, env=env)
        log = Path(env["BRANCHLINE_STATE_DIR"]) / "edge.log"
        tail = log.read_text(errors="replace").splitlines()[-60:] if log.exists() else []
        raise AssertionError(
            f"{args} timed out; runs:\n{runs.stdout}\nserve's log:\n" + "\n".join(tail)
        ) from None
    assert done.returncode == 0, f"{args}: {done.stdout}{done.stderr}"
    return done


def kill_serve_after(project: tuple[Path, dict[str, str]], delay: float) -> None:
    """SIGKILL `branchline serve` (the process doing the work: workers, edge, DNS)."""
    _root, env = project
    info = json.loads((Path(env["BRANCHLINE_STATE_DIR"]) / "edge.json").read_text())
    time.sleep(delay)
    os.kill(int(info["pid"]), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{info['pid']}").exists() and time.monotonic() < deadline:
        time.sleep(0.02)  # gone, or a zombie nobody reaps (it is not our child)
        if "Z" in _state(int(info["pid"])):
            break


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


@pytest.mark.timeout(1500)
def test_kill_at_random_moments_then_reconcile(project: tuple[Path, dict[str, str]]) -> None:
    root, env = project
    rng = random.Random(SEED)
    cli(project, "db", "init")
    for name in ("AUTH_SECRET", "PAYMENT_WEBHOOK_SECRET"):
        done = run_cli("secret", "set", name, "--env", "production", cwd=root, env=env,
                       input=f"{name.lower()}-chaos-production\n")  # fmt: skip
        assert done.returncode == 0, done.stderr
    cli(project, "push", "main")  # production is live before the chaos starts (serve runs)
    check_invariants(project, "after the first rollout")

    recoveries: list[tuple[float, str]] = []
    open_prs: list[int] = []
    for i in range(ITERATIONS):
        op = rng.choice(["preview", "preview", "cleanup", "rollout"])
        if op == "cleanup" and not open_prs:
            op = "preview"
        if op == "preview":
            commit_on(root, f"f{i}", {f"services/web/NOTE{i}": f"{i}\n"}, f"change {i}")
            cli(project, "pr", "open", f"f{i}", "--no-wait")
        elif op == "cleanup":
            number = open_prs.pop(rng.randrange(len(open_prs)))
            cli(project, "pr", "close", str(number), "--no-wait")
        else:
            (root / "services" / "api" / "VERSION").write_text(f"{i}\n")
            git(root, "add", ".")
            git(root, "commit", "-qm", f"release {i}")
            cli(project, "push", "main", "--no-wait")
        delay = rng.uniform(*KILL_WINDOW[op])
        kill_serve_after(project, delay)
        began = time.monotonic()
        cli(project, "reconcile")
        recoveries.append((time.monotonic() - began, f"#{i} {op} killed at {delay:.2f} s"))
        check_invariants(project, f"iteration {i} ({op}, killed at {delay:.2f} s)")
        open_prs = _open_prs(project)
    longest = max(recoveries)
    print(f"\nchaos: {ITERATIONS} iterations (seed {SEED}); longest recovery "
          f"{longest[0]:.2f} s ({longest[1]})")  # fmt: skip


def _open_prs(project: tuple[Path, dict[str, str]]) -> list[int]:
    listed = json.loads(cli(project, "--json", "pr", "list", "--state", "open").stdout)
    return sorted(pr["number"] for pr in listed)


# -- the invariant ---------------------------------------------------------------------


def check_invariants(project: tuple[Path, dict[str, str]], when: str) -> None:
    problems = asyncio.run(_problems(project))
    assert problems == [], f"{when}: " + "; ".join(problems)


async def _problems(project: tuple[Path, dict[str, str]]) -> list[str]:
    root, env = project
    config = load_config(root / "branchline.toml", env={})
    store = Store(locate_state(root, env))
    await store.start()
    info = json.loads((Path(env["BRANCHLINE_STATE_DIR"]) / "edge.json").read_text())
    kit = Kit.build(config, store, edge_port=info["edge_port"], dns_port=info["dns_port"])
    problems: list[str] = []
    try:
        async with store.connect() as conn:
            prs = await forge_rows.list_prs(conn, kit.project)
            live = await compute_rows.deployments(conn, kit.project, statuses=("live",))
            known = await compute_rows.deployments(
                conn, kit.project, statuses=("starting", "live", "draining")
            )
            all_routes = await routes.list_routes(conn, kit.project)
            rows = {r.pr: r for r in await preview_rows.list_previews(conn, kit.project)}
        branches = {b.name for b in await kit.database.list_branches()}
        records = await kit.dns.list_records()
        for pr in prs:
            environment = f"preview-{pr.number}"
            services = [d for d in live if d.environment == environment]
            alive = [d for d in services if _alive(d.detail)]
            hosts = [r for r in all_routes if r.environment == environment]
            dns = [r for r in records if r.environment == environment]
            has_branch = f"pr-{pr.number}" in branches
            row = rows.get(pr.number)
            up = (
                len(alive) == len(SERVICES) and len(hosts) == len(SERVICES)
                and len(dns) == len(SERVICES) and has_branch
                and row is not None and row.status == "live"
            )  # fmt: skip
            gone = not services and not hosts and not dns and not has_branch
            if not (up or gone):
                problems.append(
                    f"{environment} is half there: {len(alive)}/{len(services)} services "
                    f"running, {len(hosts)} routes, {len(dns)} records, branch "
                    f"{has_branch}, record {row.status if row else None}"
                )
        # Production serves what the store says, service by service.
        for d in [d for d in live if d.environment == "production"]:
            route = next((r for r in all_routes if r.host.startswith(f"{d.service}.")), None)
            if route is None or route.deployment_id != d.id:
                problems.append(f"production {d.service}: the route is not the live deployment")
                continue
            answer = _health(info["edge_port"], route.host)
            release = await _release_commit(store, d.release_id)
            if answer.get("commit") != release:
                problems.append(f"production {d.service} answers {answer} not {release}")
        # Nothing runs, routes or resolves that the store does not know.
        pids = {int(d.detail["pid"]) for d in known if "pid" in d.detail}
        state = str(kit.compute.state_dir)  # this test's own, not another run's on this machine
        for pid, penv, _age in started_for(
            {"BRANCHLINE_PROJECT": kit.project, "BRANCHLINE_STATE": state}
        ):
            if pid not in pids and penv.get("BRANCHLINE_TRIAL") != "1":
                problems.append(
                    f"an unknown service process {pid} ({penv.get('BRANCHLINE_SERVICE')})"
                )
        for r in all_routes:
            if r.deployment_id not in {d.id for d in live}:
                problems.append(f"route {r.host} points at a deployment that is not live")
        home = store.location.project_dir(kit.project) / "branches"
        on_disk = {p.name for p in home.iterdir()} if home.exists() else set()
        if on_disk - branches:
            problems.append(f"clusters without a record: {sorted(on_disk - branches)}")
    finally:
        await kit.aclose()
    return problems


def _alive(detail: dict[str, Any]) -> bool:
    from branchline.processes import ProcessId

    return "pid" in detail and ProcessId(int(detail["pid"]), int(detail["start_time"])).alive()


async def _release_commit(store: Store, release_id: int) -> str | None:
    async with store.connect() as conn:
        release = await compute_rows.get_release(conn, release_id)
    return release.commit_sha if release else None


def _health(port: int, host: str) -> dict[str, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/health", headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            data: dict[str, Any] = json.loads(answer.read())
            return data
    except (urllib.error.URLError, OSError) as exc:
        return {"error": str(exc)}
