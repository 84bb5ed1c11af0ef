"""How fast a pull request's preview is live, and branchline's overhead over the raw work.

Target (DESIGN.md, performance targets): PR opened -> every preview service
healthy through the edge, example app: under 5 s, and branchline's own overhead
under 20% of the raw work (branch copy + migrate + process starts until the first
healthy answer) timed separately. One run, on a copy of examples/codex made into
a fresh git repository with its own state directory:

- setup (untimed for the target): the project copy, the state database, `db
  init` (production, its base backup and its spare standby), the edge in the
  background, a commit on a feature branch (a string in api's app.py; `--change
  web` edits web's page title instead, which also runs the example's e2e job and
  adds ~4 s of testing to each round);
- the testing run `pr open` starts (the example's lint and pytest suites) is
  timed on its own: it is not part of the preview target (every preview deploys
  all three services at the PR's commit, whichever service changed);
- the preview: from the moment the preview run is submitted (its created_at) to
  the first moment every service answers its /health through the edge (polled
  with a Host header, `commit` = the PR's head) - the target figure. The steps
  run one after another, so their wall-clock spans and the engine's gaps add up
  to it; the work inside prepare and deploy runs at once, so its parts are spans
  from the step's start, never summed: prepare's migrate (until its "migrated
  in" line, which gives the command's own time), builds (until the "built"
  lines) and DNS (until the last record verified); deploy's services, each from
  its deployment row: process started (/proc), accepting connections, health
  check attempts, live, and the edge's first answer from it;
- the raw work, by hand, in the same run: copy production with the mechanism the
  preview's branch step used (promoting a ready streaming standby when it adopted
  the spare, else `pg_basebackup` + start; both are timed), run `python
  migrate.py` against the copy, start the three services at once from a plain
  export of the tree with the env compute gives them, and poll each /health
  directly until it answers; raw total = copy + migrate + starts;
- overhead = (preview - raw) / raw, and a table of each step's wall clock next to
  its raw counterpart (branch vs copy, prepare vs migrate, deploy vs starts). The
  spare standby the provider rebuilds in the background after the branch step
  adopted it is shown too: it competes with prepare for the machine;
- a sync: a second commit, `pr sync`, its testing run, then the preview update
  timed the same way (the new commit answered by all three services through the
  edge), against a raw update (migrate with nothing to apply + starts).

Each figure is one measurement (a testing run takes ~10 s, so repeating the
whole would not fit in a minute): run it a few times on a quiet machine (the
summary gives the load average). Exits 1 when the preview takes 5 s or more, or
the overhead is 0.20 or more. `--logs` prints the preview runs' logs.

    .venv/bin/python bench/preview.py [--poll 0.02] [--change api|web] [--no-sync] [--logs]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import io
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from branchline import naming, processes
from branchline.config import Config, load_config
from branchline.edge import daemon
from branchline.engine.engine import EngineOptions
from branchline.environment import Environment
from branchline.operations.runtime import open_pipelines
from branchline.postgres import Cluster, ClusterState
from branchline.postgres.cluster import free_port
from branchline.postgres.copy import clone, make_standby, promote_standby, standby_is_streaming
from branchline.providers.compute import envtemplate
from branchline.providers.database.local import (
    EPHEMERAL_SETTINGS,
    LIGHT_SETTINGS,
    LocalDatabaseProvider,
)
from branchline.providers.forge.local import LocalForge, Recorded
from branchline.providers.registry import database_provider
from branchline.store import Store, locate_state
from branchline.store import compute as compute_rows
from branchline.store import runs as run_rows

TARGET_S = 5.0
TARGET_OVERHEAD = 0.20
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "codex"
FEATURE = "feature/bench"
# The string each commit changes (the first line of the service's docstring, the web
# page's title): (as in the example, as after change n).
CHANGES = {
    "api": ("codex api:", "codex api {n}:"),
    "web": (" · codex</title>", " · codex {n}</title>"),
}
BOOKKEEPING = ("require tests", "still open", "reserve", "secrets")
IGNORED = shutil.ignore_patterns(
    "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache", ".branchline"
)
# The prepare step's part -> its log lines, the last of which ends it (src/branchline/
# pipelines/actions.py migrate_branch, pipelines/preview.py prepare and ensure_dns).
MIGRATED = re.compile(r" migrated in ([0-9.]+) s")
PREPARE_PARTS: dict[str, Callable[[str], bool]] = {
    "migrate": lambda line: MIGRATED.search(line) is not None,
    "builds": lambda line: line.startswith("built "),
    "dns": lambda line: line.startswith("dns "),
}
RAW_TIMEOUT = 30.0
WATCH_TIMEOUT = 120.0


# -- the records -------------------------------------------------------------------------


@dataclass
class Span:
    name: str
    start: float  # epoch seconds
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def within(self, start: float, end: float) -> float:
        """How much of this span lies in [start, end]."""
        return max(0.0, min(self.end, end) - max(self.start, start))


@dataclass
class ServiceTimes:
    service: str
    row: float  # epoch: the deployment row was inserted (after the deploy lock)
    spawned: float | None  # epoch: the process started (from /proc, 10 ms ticks)
    health_s: float  # the health check alone, as compute recorded it
    attempts: list[tuple[float, int]]  # (at s, HTTP status) of each attempt
    live: float  # epoch: compute marked it live (after the route switch)
    edge: float  # epoch: the edge first answered from it (this bench's poller)


@dataclass
class PreviewTimes:
    label: str
    sha: str
    pr: int
    opened: float  # epoch: the event was recorded (pr open / sync)
    testing: Span
    testing_status: str
    run_id: int
    created: float
    healthy: float  # epoch: every service answered through the edge
    finished: float
    steps: list[Span]
    services: list[ServiceTimes]
    logs: list[tuple[float, str, str]]  # (epoch, step, line)
    edge_cpu_s: float = 0.0  # CPU the edge process spent while the bench polled it
    own_cpu_s: float = 0.0  # CPU this process (engine, worker, poller) spent meanwhile
    polled_s: float = 0.0  # how long the poller polled the edge
    refill: Span | None = None  # the spare standby rebuilt in the background meanwhile
    copy_mechanism: str = "none"  # spare, cold, or existing (the branch was there)

    @property
    def total(self) -> float:
        return self.healthy - self.created

    def step(self, name: str) -> Span | None:
        return next((s for s in self.steps if s.name == name), None)

    def part(self, name: str) -> float:
        """The seconds of step `name` inside [created, healthy]."""
        span = self.step(name)
        return span.within(self.created, self.healthy) if span else 0.0

    @property
    def bookkeeping(self) -> float:
        return sum(self.part(name) for name in BOOKKEEPING)

    @property
    def pickup(self) -> float:
        return min((s.start for s in self.steps), default=self.created) - self.created

    @property
    def after_deploy(self) -> float:
        """From the end of the deploy step until the edge answered from every service."""
        deploy = self.step("deploy")
        return max(0.0, self.healthy - deploy.end) if deploy else 0.0

    @property
    def gaps(self) -> float:
        """The engine's time outside the steps (pickup, between steps) in the window."""
        counted = sum(self.part(s.name) for s in self.steps if s.name != "finish")
        return self.total - counted - self.after_deploy

    def prepared(self, what: str) -> Span | None:
        """The prepare step's part `what` (migrate, builds, dns): from the step's start
        to its last log line of that part (the three run at once)."""
        prepare = self.step("prepare")
        ends = [
            at for at, step, line in self.logs if step == "prepare" and PREPARE_PARTS[what](line)
        ]
        return Span(what, prepare.start, max(ends)) if prepare and ends else None

    @property
    def migrate_command_s(self) -> float | None:
        """The migrate command's own time, from the "<branch> migrated in X s" line."""
        for _at, step, line in self.logs:
            found = MIGRATED.search(line)
            if step == "prepare" and found:
                return float(found.group(1))
        return None

    @property
    def starts(self) -> Span | None:
        """The deploy step's concurrent work: first deployment row -> last live."""
        if not self.services:
            return None
        return Span("starts", min(s.row for s in self.services), max(s.live for s in self.services))


@dataclass
class RawTimes:
    export_s: float = 0.0
    cold_copy_s: float = 0.0  # pg_basebackup + start
    promote_s: float = 0.0  # a ready streaming standby promoted
    mechanism: str = "cold"  # which of the two the raw total uses
    migrate_s: float = 0.0
    migrate_noop_s: float = 0.0
    starts_s: float = 0.0  # all three started at once, until each answered
    starts_each: dict[str, float] = field(default_factory=dict)

    @property
    def copy_s(self) -> float:
        return self.promote_s if self.mechanism == "spare" else self.cold_copy_s

    @property
    def total(self) -> float:
        return self.copy_s + self.migrate_s + self.starts_s

    @property
    def update_total(self) -> float:
        return self.migrate_noop_s + self.starts_s


@dataclass
class Setup:
    copy_s: float = 0.0
    store_s: float = 0.0
    db_init_s: float = 0.0
    edge_s: float = 0.0


@dataclass
class Results:
    setup: Setup = field(default_factory=Setup)
    previews: list[PreviewTimes] = field(default_factory=list)
    raw: RawTimes = field(default_factory=RawTimes)


# -- the project -------------------------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=bench", "-c", "user.email=bench@bench", *args],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


def make_project(repo: Path) -> None:
    shutil.copytree(EXAMPLE, repo, ignore=IGNORED)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "codex")


def feature_commit(repo: Path, service: str, n: int) -> str:
    """Commit change `n` (1, 2, ...) of a string in `service`'s app.py on the feature
    branch; its sha. The checkout stays on main (the forge reads branch heads)."""
    if n == 1:
        git(repo, "branch", FEATURE, "main")
    git(repo, "switch", "-q", FEATURE)
    try:
        app = repo / "services" / service / "app.py"
        text = app.read_text()
        base, changed = CHANGES[service]
        marker = base if n == 1 else changed.format(n=n - 1)
        assert marker in text, f"{app.name} of {service} changed; update the bench's CHANGES"
        app.write_text(text.replace(marker, changed.format(n=n), 1))
        git(repo, "commit", "-qam", f"{service}: change {n}")
        return git(repo, "rev-parse", "HEAD")
    finally:
        git(repo, "switch", "-q", "main")


def export_tree(repo: Path, sha: str, dest: Path) -> None:
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", "--format=tar", sha], capture_output=True, check=True
    )
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")


# -- polling health ------------------------------------------------------------------------


def _healthy(status: int, body: dict[str, Any], sha: str) -> bool:
    return status == 200 and body.get("status") == "ok" and body.get("commit") == sha


def _parse(raw: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head[9:12]) if head.startswith(b"HTTP/1.") and head[9:12].isdigit() else 0
    try:
        data = json.loads(body)
    except ValueError:
        return status, {}
    return status, data if isinstance(data, dict) else {}


async def edge_health(port: int, host: str, path: str) -> tuple[int, dict[str, Any]]:
    """One GET through the edge with `host` as the Host header: (status, JSON body)."""
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
    except (OSError, TimeoutError):
        return 0, {}
    try:
        writer.write(request)
        raw = await asyncio.wait_for(reader.read(), 5)
    except (OSError, TimeoutError):
        return 0, {}
    finally:
        writer.close()
    return _parse(raw)


def direct_health(port: int, path: str) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        status, raw = answer.status, answer.read()
    except OSError:
        return 0, {}
    finally:
        conn.close()
    try:
        data = json.loads(raw)
    except ValueError:
        return status, {}
    return status, data if isinstance(data, dict) else {}


@dataclass
class Watched:
    run_id: int
    seen: dict[str, float]  # service -> epoch of its first healthy answer through the edge
    edge_cpu_s: float = 0.0
    own_cpu_s: float = 0.0
    polled_s: float = 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process `pid` so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def boot_epoch() -> float:
    """When the machine booted, as an epoch (process start times count from it)."""
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return time.time() - uptime


def spawned_at(detail: dict[str, Any], boot: float) -> float | None:
    ticks = detail.get("start_time")
    if not isinstance(ticks, int) or ticks < 0:
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


async def watch_preview(
    store: Store,
    config: Config,
    pr: int,
    sha: str,
    after_run: int,
    edge_port: int,
    edge_pid: int,
    poll: float,
) -> Watched:
    """Wait for the preview run of `sha`, then poll every service through the edge
    until each has answered healthy from `sha`."""
    project = config.project.name
    run_id: int | None = None
    deadline = time.monotonic() + WATCH_TIMEOUT
    while run_id is None:
        async with store.connect() as conn:
            for run in await run_rows.list_runs(conn, project, limit=20):
                if run.workflow == "preview" and run.sha == sha and run.id > after_run:
                    run_id = run.id
        if run_id is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no preview run of {sha[:8]} within {WATCH_TIMEOUT:.0f} s")
            await asyncio.sleep(0.05)
    environment = Environment.preview(pr)
    specs = config.services_in_deploy_order()
    hosts = {s.name: naming.host_name(s.subdomain, environment, config.project.zone) for s in specs}
    paths = {s.name: s.health_path for s in specs}
    seen: dict[str, float] = {}
    edge0, own0, began = cpu_seconds(edge_pid), sum(os.times()[:2]), time.monotonic()
    while len(seen) < len(hosts):
        pending = [name for name in hosts if name not in seen]
        answers = await asyncio.gather(
            *(edge_health(edge_port, hosts[name], paths[name]) for name in pending)
        )
        now = time.time()
        for name, (status, body) in zip(pending, answers, strict=True):
            if _healthy(status, body, sha):
                seen[name] = now
        if len(seen) < len(hosts):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the preview of {sha[:8]} never answered through the edge")
            await asyncio.sleep(poll)
    return Watched(
        run_id, seen, edge_cpu_s=cpu_seconds(edge_pid) - edge0,
        own_cpu_s=sum(os.times()[:2]) - own0, polled_s=time.monotonic() - began,
    )  # fmt: skip


# -- the preview, through branchline ----------------------------------------------------------


async def last_run_id(store: Store, project: str) -> int:
    async with store.connect() as conn:
        runs = await run_rows.list_runs(conn, project, limit=1)
    return runs[0].id if runs else 0


async def run_preview(
    label: str,
    store: Store,
    config: Config,
    info: daemon.EdgeInfo,
    record: Callable[[LocalForge], Awaitable[Recorded]],
    sha: str,
    poll: float,
) -> PreviewTimes:
    """Record the event, run every pipeline it starts here (as `pr open` does) while
    a poller watches the edge; then read the timings back from the store."""
    project = config.project.name
    after = await last_run_id(store, project)
    options = EngineOptions(pool_size=20, poll=0.5)  # as the CLI's `pr open` runs them
    async with open_pipelines(
        config, store, edge_port=info.edge_port, dns_port=info.dns_port, options=options
    ) as pipelines:
        opened = time.time()
        recorded = await record(pipelines.kit.forge)
        assert recorded.pr is not None and recorded.event is not None, "nothing was recorded"
        pr = recorded.pr.number
        watcher = asyncio.create_task(
            watch_preview(store, config, pr, sha, after, info.edge_port, info.pid, poll)
        )
        try:
            await pipelines.run_until_settled()
            watched = await asyncio.wait_for(watcher, 5)
        except BaseException:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher
            await explain_failure(store, project, after)
            raise
    return await read_back(store, config, label, pr, sha, opened, after, watched)


async def explain_failure(store: Store, project: str, after: int) -> None:
    """Print the failed steps' log lines of the runs this attempt started."""
    async with store.connect() as conn:
        for run in reversed(await run_rows.list_runs(conn, project, limit=10)):
            if run.id <= after:
                continue
            print(f"run {run.id} {run.workflow}: {run.status}", file=sys.stderr)
            if run.status == "success":
                continue
            for row in await run_rows.logs_after(conn, run.id, 0, limit=400):
                print(f"  {row.content}", file=sys.stderr)


def _epoch(moment: datetime | None) -> float:
    assert moment is not None, "a timestamp the bench needs is missing"
    return moment.timestamp()


async def read_back(
    store: Store,
    config: Config,
    label: str,
    pr: int,
    sha: str,
    opened: float,
    after: int,
    watched: Watched,
) -> PreviewTimes:
    project = config.project.name
    boot = boot_epoch()
    environment = Environment.preview(pr)
    specs = config.services_in_deploy_order()
    async with store.connect() as conn:
        runs = [r for r in await run_rows.list_runs(conn, project, limit=20) if r.id > after]
        testing = next(r for r in runs if r.workflow == "testing" and r.sha == sha)
        run = await run_rows.get_run(conn, watched.run_id)
        assert run is not None
        (job,) = [j for j in await run_rows.jobs_of(conn, run.id) if j.name == "preview"]
        step_rows = await run_rows.steps_of(conn, job.id)
        steps = [
            Span(s.name, _epoch(s.started_at), _epoch(s.finished_at))
            for s in step_rows
            if s.started_at is not None and s.finished_at is not None
        ]
        names = {s.id: s.name for s in step_rows}
        logs = [
            (_epoch(line.at), names.get(line.step_id or 0, "-"), line.content)
            for line in await run_rows.logs_after(conn, run.id, 0, job_id=job.id)
        ]
        deploy = next(s for s in steps if s.name == "deploy")
        services = []
        for spec in specs:
            rows = await compute_rows.deployments(
                conn, project, environment=environment.name, service=spec.name
            )
            ours = [d for d in rows if deploy.start <= _epoch(d.created_at) <= deploy.end]
            assert len(ours) == 1, f"{spec.name}: {len(ours)} deployments in the deploy step"
            row = ours[0]
            health = row.detail.get("health", {})
            services.append(
                ServiceTimes(
                    service=spec.name,
                    row=_epoch(row.created_at),
                    spawned=spawned_at(row.detail, boot),
                    health_s=float(health.get("elapsed", 0.0)),
                    attempts=[
                        (float(a["at"]), int(a["status"])) for a in health.get("attempts", [])
                    ],
                    live=_epoch(datetime.fromisoformat(row.detail["live_at"])),
                    edge=watched.seen[spec.name],
                )
            )
    return PreviewTimes(
        label=label, sha=sha, pr=pr, opened=opened,
        testing=Span("testing", _epoch(testing.created_at), _epoch(testing.finished_at)),
        testing_status=testing.status, run_id=run.id, created=_epoch(run.created_at),
        healthy=max(watched.seen.values()), finished=_epoch(run.finished_at), steps=steps,
        services=services, logs=logs, edge_cpu_s=watched.edge_cpu_s,
        own_cpu_s=watched.own_cpu_s, polled_s=watched.polled_s,
    )  # fmt: skip


# -- the raw work, by hand --------------------------------------------------------------------


@dataclass
class Started:
    service: str
    port: int
    process: subprocess.Popen[bytes]


def _base_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BRANCHLINE_", "PG")) and k != "DATABASE_URL"
    }


def _database_env(uri: str) -> dict[str, str]:
    db = envtemplate.database_facts(uri)
    return {
        "DATABASE_URL": db["db.uri"], "PGHOST": db["db.host"], "PGPORT": db["db.port"],
        "PGUSER": db["db.user"], "PGPASSWORD": db["db.password"], "PGDATABASE": db["db.name"],
    }  # fmt: skip


def start_services(
    config: Config, tree: Path, uri: str, sha: str, logs: Path, started: list[Started]
) -> dict[str, int]:
    """Start every service at once with the environment compute gives it (the others
    reached directly instead of through the edge). Returns service -> port."""
    specs = config.services_in_deploy_order()
    ports = {spec.name: free_port() for spec in specs}
    links: dict[str, str] = {}
    for spec in specs:
        links[f"{naming.sql_identifier(spec.name).upper()}_URL"] = (
            f"http://127.0.0.1:{ports[spec.name]}"
        )
    secret_env = {"AUTH_SECRET": secrets.token_urlsafe(32)}
    for spec in specs:
        start_one(config, spec.name, tree, uri, sha, ports[spec.name], links, secret_env, logs,
                  started)  # fmt: skip
    return ports


def start_one(
    config: Config,
    service: str,
    tree: Path,
    uri: str,
    sha: str,
    port: int,
    links: dict[str, str],
    secret_env: dict[str, str],
    logs: Path,
    started: list[Started],
) -> None:
    spec = config.services[service]
    facts = {
        **envtemplate.database_facts(uri), "port": str(port), "release": "raw",
        "commit": sha, "environment": "raw", "service": service,
        "url": f"http://127.0.0.1:{port}/",
    }  # fmt: skip
    env = _base_env()
    env.update(envtemplate.render(spec.env, facts, service=service))
    env.update(links)
    env.update(secret_env)
    env.update(_database_env(uri))
    env.update(PORT=str(port), BRANCHLINE_COMMIT=sha, BRANCHLINE_RELEASE="raw")
    with (logs / f"{service}-{port}.log").open("ab") as log:
        process = subprocess.Popen(
            list(spec.run), cwd=tree / spec.path, env=env, stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    started.append(Started(service, port, process))


def wait_healthy(
    config: Config, ports: dict[str, int], sha: str, poll: float, began: float
) -> dict[str, float]:
    """Poll each service's /health directly until it answers from `sha`; service ->
    seconds since `began` (perf_counter) of its first healthy answer."""
    seen: dict[str, float] = {}
    deadline = time.perf_counter() + RAW_TIMEOUT
    while len(seen) < len(ports):
        for name, port in ports.items():
            if name in seen:
                continue
            status, body = direct_health(port, config.services[name].health_path)
            if _healthy(status, body, sha):
                seen[name] = time.perf_counter() - began
        if len(seen) < len(ports):
            if time.perf_counter() > deadline:
                missing = ", ".join(sorted(set(ports) - set(seen)))
                raise RuntimeError(f"raw services never healthy: {missing}")
            time.sleep(poll)
    return seen


def stop_services(started: list[Started]) -> None:
    for item in started:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(item.process.pid, signal.SIGTERM)
    for item in started:
        try:
            item.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(item.process.pid, signal.SIGKILL)
            item.process.wait()
    started.clear()


def run_migrate(config: Config, tree: Path, uri: str) -> float:
    env = {**_base_env(), **_database_env(uri)}
    began = time.perf_counter()
    done = subprocess.run(
        list(config.database.migrate), cwd=tree, env=env, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    took = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"raw migrate failed: {(done.stdout + done.stderr)[-800:]}")
    return took


def raw_work(
    config: Config,
    production: Cluster,
    repo: Path,
    sha: str,
    root: Path,
    mechanism: str,
    poll: float,
    clusters: list[Cluster],
    started: list[Started],
) -> RawTimes:
    """Copy production, migrate the copy, start the services, first healthy answers:
    what a preview does, with none of branchline's bookkeeping."""
    raw = RawTimes(mechanism="spare" if mechanism == "spare" else "cold")
    settings = {**LIGHT_SETTINGS, **EPHEMERAL_SETTINGS}  # what the provider gives a branch
    tree = root / "raw-tree"
    logs = root / "raw-logs"
    logs.mkdir()
    began = time.perf_counter()
    export_tree(repo, sha, tree)
    raw.export_s = time.perf_counter() - began

    # The copy, both ways: an online pg_basebackup + start (a cold branch) ...
    cold = Cluster(root / "raw-db" / "cold")
    clusters.append(cold)
    began = time.perf_counter()
    clone(production, cold, settings=settings)
    cold.start()
    raw.cold_copy_s = time.perf_counter() - began
    # ... and promoting a streaming standby made beforehand (the provider's spare).
    spare = Cluster(root / "raw-db" / "spare")
    clusters.append(spare)
    make_standby(production, spare, settings=settings)
    deadline = time.monotonic() + RAW_TIMEOUT
    while not standby_is_streaming(spare):
        if time.monotonic() > deadline:
            raise RuntimeError("the raw standby never streamed")
        time.sleep(0.02)
    began = time.perf_counter()
    promote_standby(production, spare, settings=settings)
    raw.promote_s = time.perf_counter() - began
    database = spare if raw.mechanism == "spare" else cold
    for other in (cold, spare):
        if other is not database:
            other.destroy()
    uri = database.uri(config.database.local.database)
    with psycopg.connect(uri) as conn:
        conn.execute("SELECT 1")  # the copy is writable and answers

    raw.migrate_s = run_migrate(config, tree, uri)
    raw.migrate_noop_s = run_migrate(config, tree, uri)  # what an update's migrate costs

    began = time.perf_counter()
    ports = start_services(config, tree, uri, sha, logs, started)
    raw.starts_each = wait_healthy(config, ports, sha, poll, began)
    raw.starts_s = max(raw.starts_each.values())
    stop_services(started)
    database.destroy()
    return raw


# -- the run ------------------------------------------------------------------------------------


async def measure(
    root: Path,
    store: Store,
    repo: Path,
    args: argparse.Namespace,
    results: Results,
    clusters: list[Cluster],
    started: list[Started],
) -> None:
    state = store.location.state_dir
    began = time.perf_counter()
    make_project(repo)
    results.setup.copy_s = time.perf_counter() - began
    config = load_config(repo / "branchline.toml")

    began = time.perf_counter()
    await store.start()
    results.setup.store_s = time.perf_counter() - began

    began = time.perf_counter()
    provider = database_provider(config, store)
    assert isinstance(provider, LocalDatabaseProvider)
    await provider.init_root()  # production, a base backup, and a ready spare
    await provider.aclose()
    results.setup.db_init_s = time.perf_counter() - began

    began = time.perf_counter()
    info, _ = await asyncio.to_thread(daemon.ensure_running, state, config.path, workers=False)
    results.setup.edge_s = time.perf_counter() - began

    sha = feature_commit(repo, args.change, 1)
    opened = await run_preview(
        "PR opened", store, config, info, lambda forge: forge.open_pr(FEATURE), sha, args.poll
    )
    branch_home = provider.cluster(naming.branch_for_pr(opened.pr)).home
    opened.copy_mechanism = "spare" if branch_home.is_symlink() else "cold"
    opened.refill = spare_refill(provider)
    results.previews.append(opened)

    if not args.no_sync:
        sha2 = feature_commit(repo, args.change, 2)
        pr = opened.pr
        synced = await run_preview(
            "PR synced", store, config, info, lambda forge: forge.sync_pr(pr), sha2, args.poll
        )
        synced.copy_mechanism = "existing"
        results.previews.append(synced)

    results.raw = await asyncio.to_thread(
        raw_work, config, provider.cluster(provider.root), repo, sha, root,
        opened.copy_mechanism, args.poll, clusters, started,
    )  # fmt: skip


def spare_refill(provider: LocalDatabaseProvider) -> Span | None:
    """When the current spare was copied and came up (file times of its data
    directory): after a branch adopts the spare, the provider rebuilds one."""
    spare = provider.spare
    if spare is None:
        return None
    data = spare.data_dir
    labels = [data / "backup_label.old", data / "backup_label"]
    try:
        start = min(p.stat().st_mtime for p in labels if p.exists())
        end = (data / "postmaster.pid").stat().st_mtime
    except (ValueError, OSError):
        return None
    return Span("spare refill", start, end)


async def stop_deployments(store: Store, project: str) -> None:
    """Every service process the previews started (the edge is stopped first, so that
    its supervisor does not restart them)."""
    async with store.connect() as conn:
        found = await compute_rows.deployments(conn, project)
    for row in found:
        if "pid" in row.detail:
            pid = processes.ProcessId(int(row.detail["pid"]), int(row.detail.get("start_time", -1)))
            await asyncio.to_thread(processes.stop, pid, grace=2.0)


def cleanup(store: Store, repo: Path, clusters: list[Cluster], started: list[Started]) -> None:
    state = store.location.state_dir
    with contextlib.suppress(Exception):
        daemon.stop(state)
    stop_services(started)
    if store.location.cluster.state() is ClusterState.RUNNING:
        with contextlib.suppress(Exception):
            asyncio.run(stop_deployments(store, load_config(repo / "branchline.toml").project.name))
    projects = state / "projects"
    homes = [*projects.glob("*/branches/*"), *projects.glob("*/spares/*-*")]
    for cluster in [*clusters, *(Cluster(home) for home in homes), store.location.cluster]:
        try:
            cluster.destroy()
        except Exception as exc:  # go on with the others, but say what is left
            print(f"cleanup: could not remove {cluster.home}: {exc}", file=sys.stderr)


# -- the report ---------------------------------------------------------------------------------


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.3f}"


Row = tuple[str, str, str]  # what, at s (from the run's creation), took s


def report_preview(p: PreviewTimes, rows: list[Row]) -> None:
    def at(epoch: float) -> str:
        return f"{epoch - p.created:+.3f}"

    rows += [
        (f"{p.label}: testing run ({p.testing_status}; not in the target)",
         at(p.testing.start), _s(p.testing.seconds)),
        ("  event recorded -> testing run created", "", _s(p.testing.start - p.opened)),
        ("  testing finished -> preview run created", "", _s(p.created - p.testing.end)),
        (f"{p.label}: preview run {p.run_id} of {p.sha[:8]} (branch: {p.copy_mechanism})",
         "+0.000", ""),
        ("  run created -> first step started", "", _s(p.pickup)),
    ]  # fmt: skip
    for span in p.steps:
        rows.append((f"  step {span.name}", at(span.start), _s(span.seconds)))
        if span.name == "prepare":
            rows += prepare_rows(p, span, at)
        elif span.name == "deploy":
            rows += deploy_rows(p, span, at)
    rows += [
        ("  engine gaps (pickup, between steps; up to deploy end)", "", _s(p.gaps)),
        ("  deploy step end -> edge answered from all", "", _s(p.after_deploy)),
        ("  PREVIEW: run created -> all healthy via edge", at(p.healthy), _s(p.total)),
        ("  run created -> run finished (finish step done)", at(p.finished),
         _s(p.finished - p.created)),
        ("  event recorded -> all healthy via edge (with testing)", "",
         _s(p.healthy - p.opened)),
        (f"  CPU s while polling ({p.polled_s:.2f} s): edge / this process", "",
         f"{p.edge_cpu_s:.2f}/{p.own_cpu_s:.2f}"),
    ]  # fmt: skip
    if p.refill is not None:
        rows.append(("  spare rebuilt in the background (pg_basebackup, start)",
                     at(p.refill.start), _s(p.refill.seconds)))  # fmt: skip


def prepare_rows(p: PreviewTimes, step: Span, at: Callable[[float], str]) -> list[Row]:
    """The three parts, each from the step's start (they run at once)."""
    rows: list[Row] = []
    migrate, builds, dns = (p.prepared(what) for what in ("migrate", "builds", "dns"))
    if migrate is not None:
        rows.append(("    migrate: until its 'migrated in' line", at(migrate.start),
                     _s(migrate.seconds)))  # fmt: skip
        command = p.migrate_command_s
        if command is not None:
            rows += [
                ("      the migrate command (as logged)", "", _s(command)),
                ("      around it (worktree, journal, pg_dump fingerprint)", "",
                 _s(migrate.seconds - command)),
            ]  # fmt: skip
    if builds is not None:
        rows.append(("    builds, all at once (archive, compileall): until the 'built' lines",
                     at(builds.start), _s(builds.seconds)))  # fmt: skip
    if dns is not None:
        rows.append(("    dns records, created and verified: until the last one", at(dns.start),
                     _s(dns.seconds)))  # fmt: skip
    ends = [part.end for part in (migrate, builds, dns) if part is not None]
    if ends:
        rows.append(("    slowest part's end -> step end", at(max(ends)),
                     _s(step.end - max(ends))))  # fmt: skip
    return rows


def deploy_rows(p: PreviewTimes, step: Span, at: Callable[[float], str]) -> list[Row]:
    """Every service from its deployment row (they start at once)."""
    starts = p.starts
    if starts is None:
        return []
    rows: list[Row] = [
        ("    step start -> first deployment row (uri, secrets, builds found, locks)", "",
         _s(starts.start - step.start)),
    ]  # fmt: skip
    for svc in p.services:
        name = svc.service
        tries = " ".join(f"{status:03d}@{t:.2f}" for t, status in svc.attempts)
        rows.append((f"    {name}: deployment row -> live", at(svc.row), _s(svc.live - svc.row)))
        if svc.spawned is not None:
            rows += [
                (f"    {name}:   row -> process started (/proc, +-10 ms)", at(svc.spawned),
                 _s(svc.spawned - svc.row)),
                (f"    {name}:   started -> accepting connections (+ route switch)", "",
                 _s(svc.live - svc.health_s - svc.spawned)),
            ]  # fmt: skip
        rows += [
            (f"    {name}:   health check: {tries}", "", _s(svc.health_s)),
            (f"    {name}: live -> the edge answered from it", at(svc.edge),
             _s(svc.edge - svc.live)),
        ]  # fmt: skip
    rows += [
        ("    all services: first row -> last live", at(starts.start), _s(starts.seconds)),
        ("    last live -> step end", at(starts.end), _s(step.end - starts.end)),
    ]
    return rows


def print_where_it_goes(p: PreviewTimes, raw: RawTimes, update: bool) -> None:
    """The preview's wall clock inside the target window, step by step (they run one
    after another, so the rows add up to the total), each next to its raw counterpart
    (adding up to the raw total); then, not added, the concurrent work inside a step."""
    migrate = raw.migrate_noop_s if update else raw.migrate_s
    table = [
        ("run pickup + engine gaps between steps", p.gaps, 0.0),
        ("bookkeeping steps (" + ", ".join(BOOKKEEPING) + ")", p.bookkeeping, 0.0),
        (f"branch step vs raw copy ({'none' if update else raw.mechanism})",
         p.part("branch"), 0.0 if update else raw.copy_s),
        ("prepare step (migrate, builds, dns at once) vs raw migrate",
         p.part("prepare"), migrate),
        ("deploy step (3 services at once) vs raw starts (3 at once)",
         p.part("deploy"), raw.starts_s),
        ("deploy step end -> edge answered from all", p.after_deploy, 0.0),
    ]  # fmt: skip
    inside = [
        ("  inside prepare: its migrate part", _seconds(p.prepared("migrate")), migrate),
        ("  inside prepare: the migrate command alone", p.migrate_command_s, migrate),
        ("  inside deploy: first row -> last live", _seconds(p.starts), raw.starts_s),
    ]
    width = max(len(name) for name, _, _ in [*table, *inside]) + 2
    print(f"  {p.label:<{width}}{'preview':>9}{'raw':>9}{'extra':>9}")
    total = ("total", sum(t[1] for t in table), sum(t[2] for t in table))
    for name, ours, theirs in [*table, total, *inside]:
        if ours is not None:
            print(f"  {name:<{width}}{ours:>9.3f}{theirs:>9.3f}{ours - theirs:>9.3f}")


def _seconds(span: Span | None) -> float | None:
    return None if span is None else span.seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--poll", type=float, default=0.02, help="seconds between health polls (edge and raw)"
    )
    parser.add_argument(
        "--change", choices=sorted(CHANGES), default="api",
        help="the service whose code the commits change (web also runs the e2e tests)",
    )  # fmt: skip
    parser.add_argument("--no-sync", action="store_true", help="skip the second commit")
    parser.add_argument("--logs", action="store_true", help="print the preview runs' logs")
    args = parser.parse_args()
    # Services, tests and migrate run `python`, which must have psycopg: this venv's.
    bin_dir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    root = Path(tempfile.mkdtemp(prefix="branchline-bench-"))
    root.chmod(0o755)
    repo = root / "codex"
    store = Store(locate_state(repo, {"BRANCHLINE_STATE_DIR": str(root / "state")}))
    results = Results()
    clusters: list[Cluster] = []
    started: list[Started] = []
    load_before = os.getloadavg()[0]
    began = time.perf_counter()
    try:
        asyncio.run(measure(root, store, repo, args, results, clusters, started))
    finally:
        cleanup(store, repo, clusters, started)
        shutil.rmtree(root, ignore_errors=True)
    wall = time.perf_counter() - began
    load_after = os.getloadavg()[0]

    setup, raw = results.setup, results.raw
    rows: list[Row] = [
        ("setup: project copy + git init + commit", "", _s(setup.copy_s)),
        ("setup: state database (initdb, migrations)", "", _s(setup.store_s)),
        ("setup: db init (production, base backup, spare)", "", _s(setup.db_init_s)),
        ("setup: edge started in the background", "", _s(setup.edge_s)),
    ]
    for preview in results.previews:
        report_preview(preview, rows)
    rows += [
        ("raw: git archive of the tree (not in the raw total)", "", _s(raw.export_s)),
        ("raw: copy, pg_basebackup + start (cold branch)", "", _s(raw.cold_copy_s)),
        ("raw: copy, promote a streaming standby (spare)", "", _s(raw.promote_s)),
        (f"raw: copy used in the raw total: {raw.mechanism}", "", _s(raw.copy_s)),
        ("raw: python migrate.py", "", _s(raw.migrate_s)),
        ("raw: python migrate.py again (nothing to apply)", "", _s(raw.migrate_noop_s)),
        *((f"raw: start all, {name} healthy", "", _s(s)) for name, s in raw.starts_each.items()),
        ("raw: start all 3 at once -> all healthy", "", _s(raw.starts_s)),
        ("RAW TOTAL: copy + migrate + starts", "", _s(raw.total)),
        ("raw update: migrate (nothing to apply) + starts", "", _s(raw.update_total)),
    ]
    width = max(len(label) for label, _, _ in rows) + 2
    print(f"{'what':<{width}}{'at s':>9}{'took s':>9}")
    for label, offset, took in rows:
        print(f"{label:<{width}}{offset:>9}{took:>9}")

    first = results.previews[0]
    overhead = (first.total - raw.total) / raw.total
    ok = first.total < TARGET_S and overhead < TARGET_OVERHEAD
    raw_cold = raw.total - raw.copy_s + raw.cold_copy_s
    print()
    met = "met" if first.total < TARGET_S else "MISSED"
    print(f"preview (run created -> all healthy via edge): {first.total:.3f} s "
          f"(target < {TARGET_S:g} s: {met})")  # fmt: skip
    print(f"raw work: {raw.total:.3f} s; overhead (preview - raw) / raw = {overhead:.2f} "
          f"(target < {TARGET_OVERHEAD:.2f}: "
          f"{'met' if overhead < TARGET_OVERHEAD else 'MISSED'})")  # fmt: skip
    summary: dict[str, str] = {
        "preview_s": f"{first.total:.3f}",
        "preview_run_s": f"{first.finished - first.created:.3f}",
        "raw_s": f"{raw.total:.3f}",
        "overhead": f"{overhead:.2f}",
        "overhead_vs_cold_copy": f"{(first.total - raw_cold) / raw_cold:.2f}",
        "copy_mechanism": first.copy_mechanism,
        "testing_s": f"{first.testing.seconds:.3f}",
        "pickup_s": f"{first.pickup:.3f}",
        "bookkeeping_s": f"{first.bookkeeping:.3f}",
        "branch_s": f"{first.part('branch'):.3f}",
        "prepare_s": f"{first.part('prepare'):.3f}",
        "prepare_migrate_s": _s(_seconds(first.prepared("migrate"))),
        "migrate_command_s": _s(first.migrate_command_s),
        "prepare_builds_s": _s(_seconds(first.prepared("builds"))),
        "prepare_dns_s": _s(_seconds(first.prepared("dns"))),
        "deploy_s": f"{first.part('deploy'):.3f}",
        "deploy_starts_s": _s(_seconds(first.starts)),
        "after_deploy_s": f"{first.after_deploy:.3f}",
        "gaps_s": f"{first.gaps:.3f}",
        "raw_copy_s": f"{raw.copy_s:.3f}",
        "raw_cold_copy_s": f"{raw.cold_copy_s:.3f}",
        "raw_migrate_s": f"{raw.migrate_s:.3f}",
        "raw_starts_s": f"{raw.starts_s:.3f}",
    }
    parts = [(first, False)]
    if len(results.previews) > 1:
        synced = results.previews[1]
        sync_overhead = (synced.total - raw.update_total) / raw.update_total
        print(f"sync (run created -> new commit healthy via edge): {synced.total:.3f} s; "
              f"raw update {raw.update_total:.3f} s; overhead {sync_overhead:.2f} "
              "(no target)")  # fmt: skip
        summary.update(
            sync_s=f"{synced.total:.3f}",
            sync_run_s=f"{synced.finished - synced.created:.3f}",
            sync_testing_s=f"{synced.testing.seconds:.3f}",
            sync_prepare_s=f"{synced.part('prepare'):.3f}",
            sync_deploy_s=f"{synced.part('deploy'):.3f}",
            sync_raw_s=f"{raw.update_total:.3f}",
            sync_overhead=f"{sync_overhead:.2f}",
        )
        parts.append((synced, True))
    print()
    print("where the time goes (wall clock inside the target window; the steps run one")
    print("after another, so the rows add up to the totals):")
    for preview, update in parts:
        print_where_it_goes(preview, raw, update)
    if args.logs:
        for preview in results.previews:
            print(f"\nlog of {preview.label}'s preview run {preview.run_id}:")
            for at, step, line in preview.logs:
                print(f"  {at - preview.created:+8.3f}  {step:<14} {line}")
    print(
        "summary: "
        + " ".join(f"{k}={v}" for k, v in summary.items())
        + f" wall_s={wall:.1f} cpu_count={os.cpu_count()}"
        + f" load_1m_before={load_before:.2f} load_1m_after={load_after:.2f}"
        + f" target_s={TARGET_S} target_overhead={TARGET_OVERHEAD} ok={str(ok).lower()}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
