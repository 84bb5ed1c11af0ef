"""The pipelines on real providers: database clusters, service processes, the
edge and its DNS server, the local forge. The example app is the project."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from branchline.config import load_config
from branchline.edge import daemon
from branchline.engine.engine import Engine, EngineOptions
from branchline.environment import Environment
from branchline.kit import Kit
from branchline.operations import reconcile as reconcile_module
from branchline.operations.restore import restore_production
from branchline.operations.runtime import Pipelines
from branchline.pipelines import catalog
from branchline.pipelines.dispatch import Dispatcher, secrets_for
from branchline.providers.compute.local import STRAY_AGE
from branchline.secrets import ValueSealer
from branchline.store import Store, locate_state, locks
from branchline.store import forge as forge_rows
from branchline.store import previews as preview_rows
from branchline.store import rollouts as rollout_rows
from branchline.store import runs as run_rows
from tests.codex_project import NOTHING, commit_on, git, leftovers, make_project
from tests.conftest import eventually

pytestmark = pytest.mark.integration
PRODUCTION = Environment.production()
FAST = EngineOptions(grace=1.0, heartbeat=0.5, stalled_after=5.0, recover_every=0.5, poll=0.5)
Wrap = Callable[[Kit, Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]


@pytest.fixture
def project(tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    # Services and tests run `python`: it must be one with psycopg.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("BRANCHLINE_STATE_DIR", str(state_dir))
    root = make_project(tmp_path / "codex", quick_tests=True)
    commit_on(root, "feature", {"services/web/VERSION": "feature 1\n"}, "feature")
    try:
        yield root
    finally:
        daemon.stop(state_dir)


@asynccontextmanager
async def pipelines(root: Path, wrap: dict[str, Wrap] | None = None) -> AsyncIterator[Pipelines]:
    """The project's pipelines with the edge running; `wrap` replaces actions."""
    config = load_config(root / "branchline.toml", env={})
    store = Store(locate_state(root, os.environ))
    await store.start()
    info, _ = await asyncio.to_thread(
        daemon.ensure_running, store.location.state_dir, config.path, workers=False
    )
    kit = Kit.build(config, store, edge_port=info.edge_port, dns_port=info.dns_port)
    actions = catalog.bound(kit)
    for name, wrapper in (wrap or {}).items():
        actions[name] = wrapper(kit, actions[name])
    # As serve builds it: steps boxed in the project's sandbox, artifacts sealed.
    engine = Engine(store, project=config.project.name, actions=actions,
                    secrets=secrets_for(kit), options=FAST, sandbox=kit.sandbox,
                    sealer=ValueSealer(kit.secrets))  # fmt: skip
    try:
        async with engine.open():
            await kit.database.init_root()  # type: ignore[attr-defined]
            yield Pipelines(kit, engine, Dispatcher(kit, engine))
    finally:
        # Every service process any test started: previews and production alike.
        deployed = {(d.service, d.environment) for d in await kit.compute.list_deployments()}
        for service, environment in deployed:
            await kit.compute.delete(service, environment)
        await kit.aclose()


async def runs_of(kit: Kit) -> dict[str, list[run_rows.RunRow]]:
    async with kit.store.connect() as conn:
        found = await run_rows.list_runs(conn, kit.project)
    by_workflow: dict[str, list[run_rows.RunRow]] = {}
    for run in sorted(found, key=lambda r: r.id):
        by_workflow.setdefault(run.workflow, []).append(run)
    return by_workflow


async def story(kit: Kit) -> str:
    """Events and runs, for a failure message."""
    async with kit.store.connect() as conn:
        cur = await conn.execute(
            "SELECT id, kind, action, delivery_id, processed_at IS NOT NULL, error, payload "
            "FROM branchline.events ORDER BY id"
        )
        events = await cur.fetchall()
        runs = await run_rows.list_runs(conn, kit.project)
    told = [f"run {r.id} {r.workflow} {r.status} pr={r.pr} sha={r.sha}" for r in runs]
    return "\n".join([*(str(e) for e in events), *told])


def _answers(port: int, host: str) -> str | None:
    """The commit the edge answers with for `host`; None while it has no route yet."""
    try:
        return str(through_edge(port, host).get("commit"))
    except urllib.error.HTTPError:
        return None


def _process_env(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def through_edge(port: int, host: str, path: str = "/health") -> dict[str, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": host})
    with urllib.request.urlopen(request, timeout=10) as answer:
        data: dict[str, Any] = json.loads(answer.read())
    return data


def test_open_sync_close_on_real_providers(project: Path) -> None:
    async def test() -> None:
        async with pipelines(project) as p:
            kit = p.kit
            opened = await kit.forge.open_pr("feature")
            assert opened.pr is not None and opened.pr.number == 1
            await p.run_until_settled()
            runs = await runs_of(kit)
            assert [r.status for r in runs["testing"]] == ["success"]
            assert [r.status for r in runs.get("preview", [])] == ["success"], await story(kit)
            assert kit.edge_port is not None
            head = opened.pr.head_sha
            for service in ("api", "auth", "web"):
                host, port = f"{service}-preview-1.codex.localhost", kit.edge_port
                eventually(lambda h=host, pt=port: _answers(pt, h) == head or None)
            # web reaches auth and api through the edge, by their preview host names.
            assert through_edge(kit.edge_port, "web-preview-1.codex.localhost")["status"] == "ok"
            async with kit.store.connect() as conn:
                comment = (await forge_rows.comments(conn, kit.project, 1))[0].body
                statuses = await forge_rows.statuses(conn, kit.project, opened.pr.head_sha)
            assert "Preview of #1 is live" in comment and "`pr-1`" in comment
            assert [(s.context, s.state) for s in statuses] == [("branchline/testing", "success")]
            # The ephemeral test branch is gone; the preview's branch stays.
            names = {b.name for b in await kit.database.list_branches()}
            assert names == {"production", "pr-1"}

            # A new commit with a migration: same URLs, new commit, migrated branch.
            sha = commit_on(project, "feature", {"migrations/003_note.sql":
                                                 "ALTER TABLE products ADD COLUMN note text;\n"},
                            "a note on products")  # fmt: skip
            await kit.forge.sync_pr(1)
            await p.run_until_settled()
            for service in ("api", "auth", "web"):
                # The edge applies a route switch when its NOTIFY arrives: moments later.
                host = f"{service}-preview-1.codex.localhost"
                port = kit.edge_port
                eventually(lambda h=host, pt=port: through_edge(pt, h)["commit"] == sha or None)
            branch = await kit.database.get_branch("pr-1")
            assert branch is not None and branch.detail["migrations"] == ["001", "002", "003"]
            async with kit.store.connect() as conn:
                comment = (await forge_rows.comments(conn, kit.project, 1))[0].body
            assert "note text" in comment  # the schema diff against production

            await kit.forge.close_pr(1)
            await p.run_until_settled()
            assert (await runs_of(kit))["cleanup"][-1].status == "success"
            assert await leftovers(kit, 1) == NOTHING
            async with kit.store.connect() as conn:
                row = await preview_rows.get(conn, kit.project, 1)
                comment = (await forge_rows.comments(conn, kit.project, 1))[0].body
            assert row is not None and row.status == "deleted"
            assert "Preview removed" in comment

    asyncio.run(test())


def _close_during_deploy(*, with_event: bool) -> Wrap:
    """A deploy action that closes the pull request right after deploying: with the
    event (cleanup is queued, the preview cancelled) or only in the store (as if the
    close arrived late: the preview's own last check must catch it)."""

    def wrap(kit: Kit, deploy: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def deploy_then_close(ctx: Any, **params: Any) -> None:
            await deploy(ctx, **params)
            if with_event:
                await kit.forge.close_pr(ctx.pr)
            else:
                async with kit.store.connect() as conn:
                    await forge_rows.update_pr(conn, kit.project, ctx.pr, state="closed")

        return deploy_then_close

    return wrap


@pytest.mark.parametrize("with_event", [True, False], ids=["close-event", "late-close"])
def test_a_pull_request_closed_during_its_preview_leaves_nothing(
    project: Path, with_event: bool
) -> None:
    async def test() -> None:
        wrap = {"preview.deploy": _close_during_deploy(with_event=with_event)}
        async with pipelines(project, wrap) as p:
            await p.kit.forge.open_pr("feature")
            await p.run_until_settled()
            runs = await runs_of(p.kit)
            preview = runs["preview"][-1]
            if with_event:
                assert preview.status == "cancelled"
                assert [r.status for r in runs["cleanup"]] == ["success"]
            else:
                assert preview.status == "failure" and "cleanup" not in runs
            assert await leftovers(p.kit, 1) == NOTHING
            # No route answers for the preview's hosts any more.
            assert p.kit.edge_port is not None
            with pytest.raises(urllib.error.HTTPError) as gone:
                through_edge(p.kit.edge_port, "api-preview-1.codex.localhost")
            assert gone.value.code in (404, 502)

    asyncio.run(test())


def test_testing_failure_means_no_preview_and_a_failed_status(project: Path) -> None:
    config = project / "branchline.toml"
    config.write_text(config.read_text().replace("print('quick test ok')", "raise SystemExit(3)"))
    git(project, "commit", "-qam", "a failing test")
    git(project, "checkout", "-q", "feature")
    git(project, "merge", "-q", "main")
    git(project, "checkout", "-q", "main")

    async def test() -> None:
        async with pipelines(project) as p:
            opened = await p.kit.forge.open_pr("feature")
            assert opened.pr is not None
            await p.run_until_settled()
            runs = await runs_of(p.kit)
            assert [r.status for r in runs["testing"]] == ["failure"]
            assert "preview" not in runs
            async with p.kit.store.connect() as conn:
                statuses = await forge_rows.statuses(conn, p.kit.project, opened.pr.head_sha)
            assert [(s.state, s.description) for s in statuses] == [("failure", "failed: quick")]
            names = {b.name for b in await p.kit.database.list_branches()}
            assert names == {"production"}  # deleted even though the tests failed

    asyncio.run(test())


def test_events_are_dispatched_once_even_by_racing_dispatchers(project: Path) -> None:
    async def test() -> None:
        async with pipelines(project) as p:
            for _ in range(5):
                await p.kit.forge.push("main", source="cli")
            dispatchers = [Dispatcher(p.kit, p.engine) for _ in range(4)]
            started = await asyncio.gather(*(d.dispatch_pending() for d in dispatchers))
            assert sum(len(s) for s in started) == 5
            await p.run_until_settled()
            async with p.kit.store.connect() as conn:
                runs = await run_rows.list_runs(conn, p.kit.project)
                cur = await conn.execute(
                    "SELECT count(*) FROM branchline.events WHERE processed_at IS NULL"
                )
                row = await cur.fetchone()
            testing = sorted((r for r in runs if r.workflow == "testing"), key=lambda r: r.id)
            assert len(testing) == 5
            # One group per branch: each newer run cancelled the older ones.
            assert testing[-1].status == "success"
            assert {r.status for r in testing[:-1]} <= {"cancelled", "success"}
            assert row is not None and row[0] == 0

    asyncio.run(test())


def test_max_live_refuses_with_a_comment_and_expiry_cleans_up(project: Path) -> None:
    config = project / "branchline.toml"
    config.write_text(config.read_text().replace("max_live = 10", "max_live = 1"))
    git(project, "commit", "-qam", "one preview at a time")
    git(project, "branch", "-q", "-f", "second", "main")
    commit_on(project, "second", {"services/api/NOTE": "second\n"}, "second")

    async def test() -> None:
        async with pipelines(project) as p:
            kit = p.kit
            await kit.forge.open_pr("feature")
            await p.run_until_settled()
            await kit.forge.open_pr("second")
            await p.run_until_settled()
            refused = (await runs_of(kit))["preview"][-1]
            assert refused.pr == 2 and refused.status == "failure"
            async with kit.store.connect() as conn:
                comment = (await forge_rows.comments(conn, kit.project, 2))[0].body
            assert "All 1 preview places are taken (#1)" in comment
            assert await leftovers(kit, 2) == NOTHING

            # Preview 1 outlives its TTL: the dispatcher's expiry pass removes it.
            async with kit.store.connect() as conn:
                await conn.execute(
                    "UPDATE branchline.previews SET expires_at = now() - interval '1 s' "
                    "WHERE pr = 1"
                )
            assert await p.dispatcher.expire_previews() == 1
            assert await p.dispatcher.expire_previews() == 1  # recorded once all the same
            await p.run_until_settled()
            cleanups = (await runs_of(kit))["cleanup"]
            assert [(r.pr, r.status) for r in cleanups] == [(1, "success")]
            assert await leftovers(kit, 1) == NOTHING
            assert await p.dispatcher.expire_previews() == 0

            # The place is free again: the refused preview succeeds when run again.
            again = await p.engine.rerun(refused.id)
            await p.run_until_settled()
            async with kit.store.connect() as conn:
                rerun = await run_rows.get_run(conn, again)
            assert rerun is not None and rerun.status == "success"

    asyncio.run(test())


BROKEN_WEB = """
if os.environ.get("BRANCHLINE_ENVIRONMENT") == "production":
    raise SystemExit("web: refusing to start: SHOP_CURRENCY is not configured")
"""


class SteadyLoad:
    """GETs through the edge to every production host, round-robin, from a thread,
    until stopped; counts every answer by (host, status, commit) and every failure."""

    def __init__(self, port: int, hosts: list[str]) -> None:
        self.port, self.hosts = port, hosts
        self.answers: dict[tuple[str, int, str], int] = {}
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SteadyLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            host = self.hosts[n % len(self.hosts)]
            n += 1
            try:
                data = through_edge(self.port, host)
                key = (host, 200, str(data.get("commit")))
                self.answers[key] = self.answers.get(key, 0) + 1
            except Exception as exc:  # any failed request is what this counts
                self.failures.append(f"{host}: {exc}")
            time.sleep(0.005)

    @property
    def total(self) -> int:
        return sum(self.answers.values()) + len(self.failures)


def test_production_rollout_and_automatic_rollback_under_load(project: Path) -> None:
    async def test() -> None:
        async with pipelines(project) as p:
            kit = p.kit
            for name in ("AUTH_SECRET", "PAYMENT_WEBHOOK_SECRET"):
                await kit.secrets.set("production", name, f"production-{name}-0123456789")
            good = git(project, "rev-parse", "HEAD")
            await kit.forge.push("main")
            await p.run_until_settled()
            runs = await runs_of(kit)
            done = [(r.workflow, r.status) for r in runs["testing"] + runs.get("production", [])]
            assert done == [("testing", "success"), ("production", "success")]
            hosts = [f"{s}.codex.localhost" for s in ("api", "auth", "web")]
            assert kit.edge_port is not None
            for host in hosts:
                edge = kit.edge_port
                eventually(lambda h=host, pt=edge: _answers(pt, h) == good or None)

            app = project / "services" / "web" / "app.py"
            text = app.read_text()
            app.write_text(text.replace("\nfrom common", BROKEN_WEB + "\nfrom common"))
            git(project, "commit", "-qam", "web needs a currency")
            bad = git(project, "rev-parse", "HEAD")
            with SteadyLoad(kit.edge_port, hosts) as load:
                await kit.forge.push("main")
                await p.run_until_settled()
            print(f"\nfailed rollout under load: {load.total} requests through the edge, "
                  f"{len(load.failures)} failed")  # fmt: skip
            assert load.failures == [] and load.total > 100
            # The broken web never answered; api and auth are back on the good release.
            assert not any(h == "web.codex.localhost" and c == bad for h, _s, c in load.answers)
            for host in hosts:
                edge = kit.edge_port
                eventually(lambda h=host, pt=edge: _answers(pt, h) == good or None)

            run = (await runs_of(kit))["production"][-1]
            assert run.status == "failure"
            async with kit.store.connect() as conn:
                rollout = await rollout_rows.of_run(conn, run.id)
                (issue,) = await forge_rows.issues(conn, kit.project)
                statuses = await forge_rows.statuses(conn, kit.project, bad)
            assert rollout is not None and rollout.status == "rolled_back"
            assert [r["service"] for r in rollout.detail["rolled_back"]] == ["auth", "api"]
            assert rollout.detail["preflight"]["compatible"] is True
            assert "web unhealthy" in issue.title and "incident" in issue.labels
            assert "Rolled back automatically, newest first:\n- auth" in issue.body
            assert "code-only rollback above is complete" in issue.body
            assert ("branchline/production", "failure") in [(s.context, s.state) for s in statuses]
            # Each status links to its run's page.
            assert {s.url for s in statuses if s.context == "branchline/production"} == {
                f"http://127.0.0.1:{kit.config.edge.api_port}/runs/{run.id}"
            }

            # The fix rolls out, and the incident's issue is closed saying so, once.
            app.write_text(text)
            git(project, "commit", "-qam", "web is fixed")
            await kit.forge.push("main")
            await p.run_until_settled()
            fixed = (await runs_of(kit))["production"][-1]
            assert fixed.status == "success"
            async with kit.store.connect() as conn:
                (closed,) = await forge_rows.issues(conn, kit.project)
                rollout = await rollout_rows.of_run(conn, run.id)
            assert closed.state == "closed" and closed.body.count("healthy again") == 1
            assert f"run {fixed.id}" in closed.body
            assert rollout is not None and rollout.detail["issue_closed"] is True

    asyncio.run(test())


def test_a_migration_that_breaks_the_live_release_stops_the_rollout(project: Path) -> None:
    async def test() -> None:
        async with pipelines(project) as p:
            kit = p.kit
            for name in ("AUTH_SECRET", "PAYMENT_WEBHOOK_SECRET"):
                await kit.secrets.set("production", name, f"production-{name}-0123456789")
            await kit.forge.push("main")
            await p.run_until_settled()
            good = git(project, "rev-parse", "HEAD")
            # Dropping a table the live api reads: its health check fails on the copy.
            migration = project / "migrations" / "003_drop_products.sql"
            migration.write_text("DROP TABLE purchases; DROP TABLE products;\n")
            git(project, "add", ".")
            git(project, "commit", "-qm", "drop products")
            await kit.forge.push("main")
            await p.run_until_settled()
            run = (await runs_of(kit))["production"][-1]
            assert run.status == "failure"
            async with kit.store.connect() as conn:
                rollout = await rollout_rows.of_run(conn, run.id)
                jobs = await run_rows.jobs_of(conn, run.id)
            assert rollout is not None and rollout.status == "failed"
            assert rollout.detail["preflight"]["compatible"] is False
            assert "code-only rollback" in (jobs[0].error or "")
            # Production was never migrated and still serves the good release.
            production = await kit.database.get_branch("production")
            assert production is not None and production.detail["migrations"] == ["001", "002"]
            assert kit.edge_port is not None
            assert through_edge(kit.edge_port, "api.codex.localhost")["commit"] == good

    asyncio.run(test())


def test_restore_points_production_at_a_past_moment(project: Path) -> None:
    async def test() -> None:
        async with pipelines(project) as p:
            kit = p.kit
            for name in ("AUTH_SECRET", "PAYMENT_WEBHOOK_SECRET"):
                await kit.secrets.set("production", name, f"production-{name}-0123456789")
            await kit.forge.push("main")
            await p.run_until_settled()
            uri = await kit.database.connection_uri("production")
            with psycopg.connect(uri, autocommit=True) as conn:
                conn.execute("INSERT INTO products (sku, name, price_cents) VALUES ('a', 'A', 1)")
            await asyncio.sleep(1.1)
            moment = datetime.now(UTC)
            await asyncio.sleep(1.1)
            with psycopg.connect(uri, autocommit=True) as conn:
                conn.execute("INSERT INTO products (sku, name, price_cents) VALUES ('b', 'B', 1)")
            before = {d.id for d in await kit.compute.list_deployments(PRODUCTION)}

            done = await restore_production(kit, moment)
            assert done.branch.startswith("emergency-restore-") and done.previous_branch == (
                "production"
            )
            assert sorted(done.redeployed) == ["api", "auth", "web"]
            assert await kit.database_branch(PRODUCTION) == done.branch
            live = [d for d in await kit.compute.list_deployments(PRODUCTION)
                    if d.status == "live"]  # fmt: skip
            assert len(live) == 3 and not {d.id for d in live} & before
            restored = await kit.database.connection_uri(done.branch)
            # What the running processes were given (the store keeps no URI).
            given = {_process_env(int(d.detail["pid"]))["DATABASE_URL"] for d in live}
            assert given == {restored}
            with psycopg.connect(restored) as conn:
                skus = [r[0] for r in conn.execute("SELECT sku FROM products ORDER BY sku")]
            assert "a" in skus and "b" not in skus  # the write after the moment is not in it
            assert kit.edge_port is not None
            assert through_edge(kit.edge_port, "api.codex.localhost")["status"] == "ok"

    asyncio.run(test())


def test_a_young_stray_is_spared_only_while_its_deploy_is_under_way(project: Path) -> None:
    """A process nobody recorded, seconds old: kept while its service's deploy holds
    the deploy lock (it may be about to be recorded), stopped at once when the lock
    is free (its deployer died: after a killed serve, reconcile must not wait)."""

    async def test() -> None:
        async with pipelines(project) as p:
            kit = p.kit
            stray = subprocess.Popen(
                [sys.executable, "-c", "import time; time.sleep(60)"],
                env={**os.environ, "BRANCHLINE_PROJECT": kit.project,
                     "BRANCHLINE_STATE": str(kit.compute.state_dir),
                     "BRANCHLINE_SERVICE": "api", "BRANCHLINE_ENVIRONMENT": "preview-9",
                     "BRANCHLINE_DEPLOYMENT": "999999"},
                start_new_session=True,
            )  # fmt: skip
            try:
                key = f"branchline:compute:{kit.project}:deploy:api:preview-9"
                async with locks.held(kit.store, key):
                    found = await kit.compute.reconcile()  # type: ignore[attr-defined]
                    assert not [f for f in found if f.kind == "process"], found
                    assert stray.poll() is None
                found = await kit.compute.reconcile()  # type: ignore[attr-defined]
                stopped = [f for f in found if f.kind == "process"]
                assert [(f.action, f.done) for f in stopped] == [("stop", True)], found
                assert stray.wait(timeout=10) is not None
            finally:
                stray.kill()
                stray.wait()

    asyncio.run(test())


def test_reconcile_dry_run_reports_then_removes_what_no_open_pr_explains(project: Path) -> None:
    async def test() -> None:
        async with pipelines(project) as p:
            kit = p.kit
            await kit.forge.open_pr("feature")
            await p.run_until_settled()
            # The close is recorded, but its event was lost (as if the worker died).
            async with kit.store.connect() as conn:
                await forge_rows.update_pr(conn, kit.project, 1, state="closed")
            # And a service process nobody recorded, started like branchline would.
            stray = subprocess.Popen(
                [sys.executable, "-c", "import time; time.sleep(60)"],
                env={**os.environ, "BRANCHLINE_PROJECT": kit.project,
                     "BRANCHLINE_STATE": str(kit.compute.state_dir),
                     "BRANCHLINE_SERVICE": "api", "BRANCHLINE_ENVIRONMENT": "preview-9"},
                start_new_session=True,
            )  # fmt: skip
            try:
                await asyncio.sleep(STRAY_AGE + 0.5)
                planned = await reconcile_module.reconcile(kit, engine=p.engine, dry_run=True)
                said = {(f.kind, f.action) for f in planned}
                assert ("preview", "remove") in said and ("process", "stop") in said
                assert not any(f.done for f in planned)
                assert (await leftovers(kit, 1))["deployments"]  # nothing was touched
                done = await reconcile_module.reconcile(kit, engine=p.engine)
                assert all(f.done for f in done)
                assert await leftovers(kit, 1) == NOTHING
                assert stray.wait(timeout=10) is not None
                assert await reconcile_module.reconcile(kit, engine=p.engine) == []
            finally:
                stray.kill()

    asyncio.run(test())
