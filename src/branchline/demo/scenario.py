"""The demo's story, phase by phase, on a temporary copy of the example app.

A push tested on an ephemeral branch; a pull request with its preview (URLs printed
and checked through the edge); a new commit updating it; the merge rolled out to
production; a deliberately broken release rolled back automatically, with its
incident issue; the preview cleaned up. Each phase is told as it happens and timed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from branchline import naming
from branchline.config import Config, load_config
from branchline.demo.example import CODEX, Example
from branchline.edge import daemon
from branchline.environment import Environment
from branchline.errors import BranchlineError
from branchline.fakes.neon import FakeNeon
from branchline.kit import Kit
from branchline.operations.runtime import Pipelines, open_pipelines
from branchline.postgres import reflink
from branchline.providers.database import RootInitializer, pool
from branchline.providers.forge import LocalPullRequests
from branchline.secrets import generate_value
from branchline.store import Store, locate_state
from branchline.store import forge as forge_rows
from branchline.store import runs as run_rows

PRODUCTION = Environment.production()
PREVIEW = Environment.preview(1)
DEMO_POOL = "2G"  # sparse: the demo's branches take a few MB of it


@dataclass
class Phase:
    name: str
    seconds: float = 0.0
    outcome: str = ""


@dataclass
class Demo:
    console: Console
    keep: bool = False
    command: str = "branchline"  # how a shell runs this very branchline
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="branchline-demo-")))
    phases: list[Phase] = field(default_factory=list)
    serving: bool = False  # --keep: the story is over, everything serves until stopped
    database: str = "local"  # the example's database provider: "local" or "neon"
    neon: FakeNeon | None = None  # with "neon": the fake Neon the demo started
    example: Example = CODEX  # the example app it plays the story with

    @property
    def neon_dir(self) -> Path:
        """The fake Neon's own directory (its state database and branch clusters)."""
        return self.root / "neon"

    @property
    def project(self) -> Path:
        return self.root / self.example.name

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def current_phase(self) -> str | None:
        """The phase under way (begun, not finished), if any."""
        last = self.phases[-1] if self.phases else None
        return last.name if last is not None and not last.outcome else None

    def say(self, text: str, *, whole: bool = False) -> None:
        """Print `text`; `whole`: never wrapped (a command, a URL, a token to copy)."""
        self.console.print(text, highlight=False, soft_wrap=whole)

    def git(self, *args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(self.project), "-c", "user.name=branchline demo",
             "-c", "user.email=demo@branchline.invalid", *args],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip

    def commit(self, branch: str, change: Callable[[Path], None], message: str) -> str:
        self.git("checkout", "-q", branch)
        change(self.project)
        self.git("add", ".")
        self.git("commit", "-qm", message)
        sha = self.git("rev-parse", "HEAD")
        self.git("checkout", "-q", "main")
        return sha


@dataclass(frozen=True)
class Played:
    """What the story leaves running, for `--keep` to serve and point at."""

    config: Config
    store: Store
    edge_port: int
    dns_port: int
    hosts: dict[str, str]  # production's: service -> its host name
    urls: dict[str, str]  # ... and its URL through the edge


def config_env(example: Example) -> dict[str, str]:
    """The variables `example`'s branchline.toml refers to, as the demo set them (with
    Neon, its API key too: branchline reads it from NEON_API_KEY, never from the file
    or a command line)."""
    env = {name: os.environ.get(name, "") for name in example.variables()}
    if NEON_API_KEY in os.environ:
        env[NEON_API_KEY] = os.environ[NEON_API_KEY]
    return env


NEON_API_KEY = "NEON_API_KEY"


def use_neon(toml: str, neon: FakeNeon) -> str:
    """The example's branchline.toml with its database on `neon`: `provider = "neon"`
    and a `[database.neon]` table (no key: it comes from NEON_API_KEY)."""
    section = re.search(r"^\[database\]\n", toml, re.MULTILINE)
    provider = re.compile(r'^provider = "local"[^\n]*$', re.MULTILINE)
    after = re.search(r"^\[compute\]\n", toml, re.MULTILINE)
    found = provider.search(toml, section.end()) if section else None
    if section is None or found is None or after is None or found.start() > after.start():
        raise BranchlineError(
            "the example's branchline.toml has no `[database]` provider line to switch to Neon"
        )
    table = (
        "[database.neon]  # the fake Neon the demo started; the key is in NEON_API_KEY\n"
        f'project_id = "{neon.project_id}"\n'
        f'api_url = "{neon.url}"\n\n'
    )
    switched = toml[: found.start()] + 'provider = "neon"' + toml[found.end() : after.start()]
    return switched + table + toml[after.start() :]


def _copy_example(demo: Demo) -> None:
    # .branchline/: the state of anyone who ran the example in place stays there.
    # node_modules/: what an `npm ci` in place installed; the builds install their own.
    shutil.copytree(demo.example.find(), demo.project, ignore=shutil.ignore_patterns(
        "__pycache__", ".branchline", "node_modules"))  # fmt: skip
    if demo.neon is not None:
        toml = demo.project / "branchline.toml"
        toml.write_text(use_neon(toml.read_text(), demo.neon))
    demo.git("init", "-q", "-b", "main")
    demo.git("add", ".")
    demo.git("commit", "-qm", f"{demo.example.name}: web, auth and api")


async def play(demo: Demo) -> Played:
    """Set up, play every phase, show the table; raises when a phase goes wrong."""
    began = time.monotonic()
    await asyncio.to_thread(_copy_example, demo)
    config = load_config(demo.project / "branchline.toml", env=config_env(demo.example))
    store = Store(locate_state(demo.project, os.environ))
    await _phase(
        demo, "setup: state, production database, edge", lambda: _setup(demo, config, store)
    )
    info = daemon.read_info(demo.state_dir)
    assert info is not None
    async with open_pipelines(
        config, store, edge_port=info.edge_port, dns_port=info.dns_port
    ) as pipelines:
        await _scenario(demo, pipelines, config)
        hosts = pipelines.kit.hosts(PRODUCTION)
        urls = {service: pipelines.kit.url(host) for service, host in hosts.items()}
    _summary(demo, time.monotonic() - began)
    if demo.neon is not None:
        await asyncio.to_thread(_neon_summary, demo, demo.neon)
    return Played(config, store, info.edge_port, info.dns_port, hosts, urls)


async def _phase(demo: Demo, name: str, work: Callable[[], Awaitable[str]]) -> None:
    demo.say(f"\n[bold]{escape(name)}[/bold]")
    began = time.monotonic()
    phase = Phase(name)
    demo.phases.append(phase)
    phase.outcome = await work()
    phase.seconds = time.monotonic() - began
    demo.say(f"  [green]✓[/green] {escape(phase.outcome)} ({phase.seconds:.1f} s)")


async def _setup(demo: Demo, config: Config, store: Store) -> str:
    await store.start()
    kit = Kit.build(config, store)
    kit.sandbox.check()  # code from the example's branches runs boxed, or not at all
    demo.say(f"  {escape(kit.sandbox.describe())}")
    if isinstance(kit.database, RootInitializer):
        if demo.database == "local":
            demo.say(f"  {escape(await asyncio.to_thread(_clones_for, demo, config, store))}")
        await kit.database.init_root()
    await kit.aclose()
    for name in config.secrets.production.names:
        await kit.secrets.set(PRODUCTION.name, name, generate_value())
    info, _ = await asyncio.to_thread(
        daemon.ensure_running, demo.state_dir, config.path, workers=False
    )  # the demo runs its pipelines here, to tell each step as it happens
    return f"production branch ready; edge on port {info.edge_port}, DNS on {info.dns_port}"


def _clones_for(demo: Demo, config: Config, store: Store) -> str:
    """Branches as copy-on-write clones where the machine can: on the demo's own disk
    if it clones, else in a small pool (a loop-mounted XFS) the teardown removes."""
    state = store.location.project_dir(config.project.name)
    if reflink.can_clone(state / "branches"):
        return "database branches: copy-on-write clones (this disk can clone files)"
    why = pool.why_not_here()
    if why is not None:
        return f"database branches: pg_basebackup copies ({why} for clones)"
    pool.create(state, DEMO_POOL, stop_clusters=lambda: None)
    return (f"database branches: copy-on-write clones, in a {DEMO_POOL} pool made for the "
            "demo (a loop-mounted XFS; `db pool create` does it for a project)")  # fmt: skip


def _forge(kit: Kit) -> LocalPullRequests:
    """The demo records its pushes and pull requests on the local code host."""
    assert isinstance(kit.forge, LocalPullRequests), "the demo runs on the local code host"
    return kit.forge


async def _settle(demo: Demo, p: Pipelines) -> list[run_rows.RunRow]:
    """Run what is pending; the runs it started, each told as it ends."""
    async with p.kit.store.connect() as conn:
        before = {r.id for r in await run_rows.list_runs(conn, p.kit.project, 200)}
    told: set[int] = set()

    async def tick() -> None:
        async with p.kit.store.connect() as conn:
            for run in await run_rows.list_runs(conn, p.kit.project, 50):
                if run.id in before or run.id in told:
                    continue
                if run.status in ("success", "failure", "cancelled"):
                    told.add(run.id)
                    style = "green" if run.status == "success" else "red"
                    took = (run.finished_at - run.created_at).total_seconds() if (
                        run.finished_at) else 0.0  # fmt: skip
                    demo.say(f"  run {run.id} {run.workflow}: [{style}]{run.status}[/] "
                             f"in {took:.1f} s")  # fmt: skip

    await p.run_until_settled(on_tick=tick)
    async with p.kit.store.connect() as conn:
        runs = await run_rows.list_runs(conn, p.kit.project, 200)
    return sorted((r for r in runs if r.id not in before), key=lambda r: r.id)


def _health(port: int, host: str, path: str = "/health") -> dict[str, Any]:
    """The service's health (its `health_path`) through the edge; a new route reaches
    the edge by NOTIFY moments after a deploy, so a 404 or 502 is asked again for a few
    seconds."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": host})
    deadline = time.monotonic() + 5
    while True:
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - loopback
                data: dict[str, Any] = json.loads(answer.read())
            return data
        except urllib.error.HTTPError as exc:
            if exc.code not in (404, 502) or time.monotonic() > deadline:
                raise
        time.sleep(0.05)


async def _expect(kit: Kit, runs: list[run_rows.RunRow], wanted: dict[str, str]) -> None:
    got = {r.workflow: r for r in runs}
    for workflow, status in wanted.items():
        run = got.get(workflow)
        if run is None or run.status != status:
            said = await _failed_jobs(kit, run) if run is not None else ""
            raise BranchlineError(
                f"the demo expected the {workflow} run to end in {status}, it ended in "
                f"{run.status if run else 'nothing'}{said}",
                hint="Run `branchline demo --keep`: after a failure it keeps everything "
                "up, with the commands to look around, until Ctrl-C.",
            )


async def _failed_jobs(kit: Kit, run: run_rows.RunRow) -> str:
    """Which jobs of `run` failed, with the last lines each logged (already masked)."""
    async with kit.store.connect() as conn:
        failed = [j for j in await run_rows.jobs_of(conn, run.id) if j.status == "failure"]
        told = []
        for job in failed:
            lines = await run_rows.logs_after(conn, run.id, 0, job.id, limit=100_000)
            tail = "\n    ".join(line.content for line in lines[-15:]) or "(nothing)"
            why = f" ({job.error})" if job.error else ""
            told.append(
                f"\n  job {job.name} of run {run.id} failed{why}; its log ends:\n    {tail}"
            )
    return "".join(told)


async def _scenario(demo: Demo, p: Pipelines, config: Config) -> None:
    kit = p.kit
    port = kit.edge_port or 0
    hosts = {env: kit.hosts(env) for env in (PREVIEW, PRODUCTION)}
    example = demo.example

    async def commit_of(env: Environment, service: str) -> str:
        """What `service` of `env` reports as its commit, asked at its health path."""
        path = config.services[service].health_path
        return str((await asyncio.to_thread(_health, port, hosts[env][service], path))["commit"])

    def note(path: str, text: str) -> Callable[[Path], None]:
        def write(root: Path) -> None:
            (root / path).write_text(text + "\n")

        return write

    # git runs in a thread: the pipelines' workers share this event loop.
    await asyncio.to_thread(demo.git, "checkout", "-qb", "feature")
    await asyncio.to_thread(demo.git, "checkout", "-q", "main")
    first = await asyncio.to_thread(
        demo.commit, "feature", note("services/web/BANNER", "Spring sale"), "web: a banner"
    )

    async def push() -> str:
        await _forge(kit).push("feature")
        runs = await _settle(demo, p)
        await _expect(kit, runs, {"testing": "success"})
        branch = naming.branch_for_push("feature", first)
        left = [b.name for b in await kit.database.list_branches()]
        gone = "deleted afterwards" if branch not in left else "STILL THERE"
        return f"tested on the ephemeral branch {branch}, {gone}"

    async def open_pr() -> str:
        await _forge(kit).open_pr("feature", "A spring sale banner")
        await _expect(kit, await _settle(demo, p), {"testing": "success", "preview": "success"})
        for service, host in hosts[PREVIEW].items():
            commit = await commit_of(PREVIEW, service)
            demo.say(f"  {service}: {kit.url(host)} answers commit {commit[:8]}")
        return "preview-1 live: three services on branch pr-1, URLs above"

    async def sync() -> str:
        second = await asyncio.to_thread(
            demo.commit, "feature", example.sync.apply, example.sync.message
        )
        await _forge(kit).sync_pr(1)
        await _expect(kit, await _settle(demo, p), {"testing": "success", "preview": "success"})
        deadline = time.monotonic() + 5  # the edge switches routes on NOTIFY: moments later
        while True:
            answers = {await commit_of(PREVIEW, s) for s in hosts[PREVIEW]}
            if answers == {second} or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        if answers != {second}:
            raise BranchlineError(f"the preview answers {sorted(answers)}, not {second[:8]}")
        migration = Path(example.sync.path).stem.split("_", 1)[0]
        return (f"preview-1 now serves {second[:8]} (migration {migration} applied to pr-1), "
                "same URLs")  # fmt: skip

    async def merge() -> str:
        await _forge(kit).close_pr(1, merge=True)
        runs = await _settle(demo, p)
        await _expect(
            kit, runs, {"cleanup": "success", "testing": "success", "production": "success"}
        )
        for service, host in hosts[PRODUCTION].items():
            commit = await commit_of(PRODUCTION, service)
            demo.say(f"  {service}: {kit.url(host)} answers commit {commit[:8]}")
        left = [b.name for b in await kit.database.list_branches() if b.name.startswith("pr-1")]
        return f"rolled out to production; preview-1 cleaned up ({len(left)} branches left)"

    async def broken() -> str:
        good = await commit_of(PRODUCTION, "web")
        await asyncio.to_thread(example.broken.apply, demo.project)
        await asyncio.to_thread(demo.git, "commit", "-qam", example.broken.message)
        await _forge(kit).push("main")
        await _expect(kit, await _settle(demo, p), {"testing": "success", "production": "failure"})
        still = {await commit_of(PRODUCTION, s) for s in hosts[PRODUCTION]}
        async with kit.store.connect() as conn:
            issue = (await forge_rows.issues(conn, kit.project))[0]
        demo.say(f"  [yellow]incident issue #{issue.number}: {escape(issue.title)}[/yellow]")
        for line in issue.body.splitlines():
            demo.say(f"  │ {escape(line)}")
        serving = "the previous release" if still == {good} else f"{still}"
        return f"rolled back automatically; production still serves {serving}"

    await _phase(demo, "1. a push, tested on an ephemeral database branch", push)
    await _phase(demo, "2. a pull request opens: its preview environment", open_pr)
    await _phase(demo, "3. a new commit with a migration updates the preview", sync)
    await _phase(demo, "4. the merge: preview cleaned up, gated production rollout", merge)
    await _phase(demo, "5. a broken release: health check fails, automatic rollback", broken)


def _summary(demo: Demo, total: float) -> None:
    table = Table("phase", "seconds", "outcome", title="branchline demo")
    for phase in demo.phases:
        table.add_row(phase.name, f"{phase.seconds:.1f}", phase.outcome)
    table.add_row("total", f"{total:.1f}", "")
    demo.console.print()
    demo.console.print(table)


def _neon_summary(demo: Demo, neon: FakeNeon) -> None:
    """How much of Neon's API the story used, and that every exchange was valid
    against Neon's OpenAPI document (the demo fails otherwise)."""
    calls = neon.calls()
    failures = calls["validation_failures"]
    invalid = int(failures["request"]) + int(failures["response"])
    demo.say(f"Neon (fake): {calls['total']} API calls, {invalid} invalid exchanges, "
             f"{calls['simulated_delay_seconds']:.1f} s of simulated operation time")  # fmt: skip
    if invalid:
        raise BranchlineError(
            f"the fake Neon saw {invalid} exchanges that break Neon's OpenAPI document "
            f"({failures['request']} requests, {failures['response']} responses)",
            hint=f"The last ones: {json.dumps(calls.get('failures', []))[:2000]}",
        )
