"""The workflow engine on real Postgres, real procrastinate workers and real processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from branchline.engine.engine import ArtifactMissingError, Engine, EngineOptions
from branchline.engine.model import Call, Command, Job, RunIf, Step, Workflow
from branchline.postgres import Cluster
from branchline.processes import group_alive
from branchline.store import Store, locate_state
from branchline.store import runs as rows
from tests.conftest import REPO

pytestmark = pytest.mark.integration
PY = sys.executable
FAST = EngineOptions(
    grace=1.0, heartbeat=0.5, stalled_after=2.0, recover_every=0.5, poll=0.5, stop_grace=3.0
)


@pytest.fixture(scope="module")
def state_url(pg_cluster: Cluster) -> Iterator[str]:
    name = f"engine_{os.urandom(4).hex()}"
    with psycopg.connect(pg_cluster.uri(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield pg_cluster.uri(name)
    with psycopg.connect(pg_cluster.uri(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A git repository with two commits: (path, first sha, second sha)."""
    path = tmp_path_factory.mktemp("repo")

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@t", *args],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip

    git("init", "-q", "-b", "main")
    (path / "api").mkdir()
    (path / "api" / "app.py").write_text("print('api')\n")
    (path / "web").mkdir()
    (path / "web" / "app.py").write_text("print('web')\n")
    git("add", ".")
    git("commit", "-qm", "first")
    first = git("rev-parse", "HEAD")
    (path / "api" / "app.py").write_text("print('api v2')\n")
    git("commit", "-qam", "second")
    return path, first, git("rev-parse", "HEAD")


def cmd(*code: str, **kw: Any) -> Command:
    return Command(args=(PY, "-c", "\n".join(code)), **kw)


@asynccontextmanager
async def engine_with_workers(
    url: str, *, workers: int = 1, concurrency: int = 2, options: EngineOptions = FAST,
    project: str | None = None, **kwargs: Any,
) -> AsyncIterator[Engine]:  # fmt: skip
    store = Store(locate_state(Path("/"), {"BRANCHLINE_DATABASE_URL": url}))
    await store.start()
    project = project or f"p{os.urandom(3).hex()}"
    engine = Engine(store, project=project, options=options, **kwargs)
    async with engine.open():
        tasks = [
            asyncio.create_task(
                engine.run_worker(concurrency=concurrency, install_signal_handlers=False)
            )
            for _ in range(workers)
        ]
        try:
            await _workers_ready(engine, workers)
            yield engine
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _workers_ready(engine: Engine, count: int, timeout: float = 20) -> None:
    """Every worker registered, so that jobs really can run side by side."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with engine.store.connect() as conn:
            cur = await conn.execute(
                "SELECT count(*) FROM procrastinate_workers "
                "WHERE last_heartbeat > now() - interval '2 seconds'"
            )
            row = await cur.fetchone()
        if row is not None and row[0] >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{count} workers did not start")


async def pid_written(path: Path, timeout: float = 20) -> int:
    """The pid a step's process writes to `path`, once it is there whole (the file
    exists, empty, before the write that fills it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            if text := path.read_text().strip():
                return int(text)
        await asyncio.sleep(0.05)
    raise AssertionError(f"no pid in {path} after {timeout:g} s")


async def wait_run(engine: Engine, run_id: int, timeout: float = 30) -> rows.RunRow:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with engine.store.connect() as conn:
            run = await rows.get_run(conn, run_id)
        assert run is not None
        if run.status in ("success", "failure", "cancelled"):
            return run
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} did not finish: {run.status}")


async def jobs(engine: Engine, run_id: int) -> dict[str, rows.JobRow]:
    async with engine.store.connect() as conn:
        return {job.name: job for job in await rows.jobs_of(conn, run_id)}


async def log_text(engine: Engine, run_id: int) -> str:
    async with engine.store.connect() as conn:
        return "\n".join(r.content for r in await rows.logs_after(conn, run_id, 0))


async def drop_queued_tasks(conn: Any, run_id: int) -> None:
    """The queue forgets the run's tasks, as after a crash at the wrong moment."""
    await conn.execute(
        "DELETE FROM procrastinate_jobs WHERE queueing_lock = ANY("
        "SELECT 'job-' || id FROM branchline.jobs WHERE run_id = %s)",
        (run_id,),
    )


def run_async(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


def test_independent_jobs_overlap_and_dependants_wait(
    state_url: str, repo: tuple[Path, str, str]
) -> None:
    path, _, sha = repo
    workflow = Workflow(
        "parallel",
        (
            Job("a", (Step("sleep", cmd("import time; time.sleep(2)")),)),
            Job("b", (Step("sleep", cmd("import time; time.sleep(2)")),)),
            Job("after", (Step("done", cmd("print('done')")),), needs=("a", "b")),
        ),
    )

    async def test() -> None:
        async with engine_with_workers(state_url, workers=2, concurrency=1) as engine:
            run_id = await engine.submit(workflow, triggered_by="test", repo=path, sha=sha)
            run = await wait_run(engine, run_id)
            assert run.status == "success"
            j = await jobs(engine, run_id)
            a, b, after = j["a"], j["b"], j["after"]
            assert a.started_at and b.started_at and a.finished_at and b.finished_at
            assert a.started_at < b.finished_at and b.started_at < a.finished_at  # overlap
            assert after.started_at and after.started_at >= max(a.finished_at, b.finished_at)

    run_async(test)


def test_failure_skips_dependants_but_always_cleanup_runs(
    state_url: str, repo: tuple[Path, str, str]
) -> None:
    path, _, sha = repo
    workflow = Workflow(
        "failing",
        (
            Job("setup", (Step("ok", cmd("print('setup')")),)),
            Job("tests", (Step("boom", cmd("import sys; sys.exit(3)")),), needs=("setup",)),
            Job("deploy", (Step("never", cmd("print('deploy')")),), needs=("tests",)),
            Job(
                "cleanup",
                (Step("clean", cmd("print('cleaning up')")),),
                needs=("tests", "deploy"),
                run_if=RunIf.ALWAYS,
            ),
        ),
    )

    async def test() -> None:
        async with engine_with_workers(state_url) as engine:
            run_id = await engine.submit(workflow, triggered_by="test", repo=path, sha=sha)
            run = await wait_run(engine, run_id)
            j = await jobs(engine, run_id)
            assert run.status == "failure"
            assert j["tests"].status == "failure" and "exited with code 3" in (
                j["tests"].error or ""
            )
            assert j["deploy"].status == "skipped"
            assert j["cleanup"].status == "success"
            assert "cleaning up" in await log_text(engine, run_id)

    run_async(test)


def test_cancel_kills_the_step_and_its_grandchildren(
    state_url: str, repo: tuple[Path, str, str], tmp_path: Path
) -> None:
    path, _, sha = repo
    pidfile = tmp_path / "grandchild.pid"
    spawn = cmd(
        "import subprocess, sys, time",
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])",
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))",
        "time.sleep(300)",
    )
    workflow = Workflow(
        "cancellable",
        (
            Job("long", (Step("spawn", spawn),)),
            Job("cleanup", (Step("c", cmd("print('cleanup ran')")),), needs=("long",),
                run_if=RunIf.ALWAYS),
        ),
    )  # fmt: skip

    async def test() -> None:
        async with engine_with_workers(state_url) as engine:
            run_id = await engine.submit(workflow, triggered_by="test", repo=path, sha=sha)
            grandchild = await pid_written(pidfile)
            assert await engine.cancel(run_id, by="alice, by hand") is True
            run = await wait_run(engine, run_id)
            assert run.status == "cancelled"
            j = await jobs(engine, run_id)
            assert j["long"].status == "cancelled"
            assert j["long"].error == "step 'spawn': cancelled by alice, by hand"
            assert "cancelled by alice, by hand" in await log_text(engine, run_id)
            assert j["cleanup"].status == "success"
            await asyncio.sleep(0.2)
            assert not _alive(grandchild), "the grandchild survived the cancel"
            assert await engine.cancel(run_id, by="alice") is False  # already over

    run_async(test)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_concurrency_group_cancels_or_queues(state_url: str, repo: tuple[Path, str, str]) -> None:
    path, _, sha = repo
    slow = (Step("slow", cmd("import time; time.sleep(60)")),)

    def group(cancel: bool) -> Workflow:
        return Workflow("grouped", (Job("only", slow),), concurrency_group="preview-pr-8",
                        cancel_in_progress=cancel)  # fmt: skip

    quick = Workflow("grouped", (Job("only", (Step("q", cmd("print(1)")),)),),
                     concurrency_group="queue-pr-9")  # fmt: skip

    async def test() -> None:
        async with engine_with_workers(state_url, concurrency=2) as engine:
            first = await engine.submit(group(True), triggered_by="t", repo=path, sha=sha)
            await _until(engine, first, "running")
            second = await engine.submit(group(True), triggered_by="t", repo=path, sha=sha)
            assert (await wait_run(engine, first)).status == "cancelled"
            assert f"cancelled by run {second} (newer" in await log_text(engine, first)
            await _until(engine, second, "running")
            await engine.cancel(second, by="test")
            await wait_run(engine, second)
            # Without cancel_in_progress the newer run waits for the older one.
            a = await engine.submit(quick, triggered_by="t", repo=path, sha=sha)
            b = await engine.submit(quick, triggered_by="t", repo=path, sha=sha)
            run_a, run_b = await wait_run(engine, a), await wait_run(engine, b)
            assert run_a.status == run_b.status == "success"
            assert run_a.finished_at and run_b.started_at and run_b.started_at >= run_a.finished_at

    run_async(test)


async def _until(engine: Engine, run_id: int, status: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with engine.store.connect() as conn:
            run = await rows.get_run(conn, run_id)
        if (
            run
            and run.status == status
            and any(j.status == "running" for j in (await jobs(engine, run_id)).values())
        ):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} never reached {status}")


def test_secrets_never_reach_the_stored_log(state_url: str, repo: tuple[Path, str, str]) -> None:
    path, _, sha = repo
    secret = "s3cr3t-Value-9f8e7d"
    printer = cmd(
        "import os, sys, time",
        "s = os.environ['AUTH_SECRET']",
        "print(s, flush=True)",
        "sys.stdout.write('token=' + s[:7]); sys.stdout.flush(); time.sleep(0.3)",
        "sys.stdout.write(s[7:] + ' and more\\n'); sys.stdout.flush()",
        "print('err', s, file=sys.stderr)",
        secrets=("AUTH_SECRET",),
    )
    workflow = Workflow("secretive", (Job("print", (Step("leak", printer),)),))

    async def secrets(_run: rows.RunRow) -> dict[str, str]:
        return {"AUTH_SECRET": secret}

    async def test() -> None:
        async with engine_with_workers(state_url, secrets=secrets) as engine:
            run_id = await engine.submit(workflow, triggered_by="t", repo=path, sha=sha)
            assert (await wait_run(engine, run_id)).status == "success"
            text = await log_text(engine, run_id)
            assert secret not in text
            assert secret[:7] not in text and secret[7:] not in text
            assert "token=*** and more" in text and "err ***" in text

    run_async(test)


def test_path_filters_skip_jobs_without_changes(
    state_url: str, repo: tuple[Path, str, str]
) -> None:
    path, first, second = repo  # only api/ changed between them
    workflow = Workflow(
        "filtered",
        (
            Job("api", (Step("t", cmd("print('api tests')")),), paths=("api/**",)),
            Job("web", (Step("t", cmd("print('web tests')")),), paths=("web/**",)),
            Job("report", (Step("r", cmd("print('report')")),), needs=("api", "web")),
        ),
    )

    async def test() -> None:
        async with engine_with_workers(state_url) as engine:
            run_id = await engine.submit(
                workflow, triggered_by="t", repo=path, sha=second, base_sha=first
            )
            run = await wait_run(engine, run_id)
            j = await jobs(engine, run_id)
            assert run.status == "success"
            assert j["api"].status == "success"
            assert j["web"].status == "skipped" and "web/**" in (j["web"].error or "")
            assert j["report"].status == "success"  # a path skip does not block

    run_async(test)


def test_artifacts_between_workflows_and_clear_misses(
    state_url: str, repo: tuple[Path, str, str]
) -> None:
    path, _, sha = repo

    async def publish(ctx: Any, value: str) -> None:
        await ctx.publish("DATABASE_URL", value, sensitive=True)
        await ctx.log("published")

    async def consume(ctx: Any) -> None:
        url = await ctx.artifact("DATABASE_URL", workflow="testing", sha=ctx.sha)
        await ctx.log(f"got {len(url)} characters")

    actions = {"publish": publish, "consume": consume}
    testing = Workflow("testing", (Job("db", (Step("p", Call("publish", {"value": "pg://x"})),),
                                       checkout=False),))  # fmt: skip
    preview = Workflow("preview", (Job("use", (Step("c", Call("consume")),), checkout=False),))

    async def test() -> None:
        async with engine_with_workers(state_url, actions=actions) as engine:
            missing = await engine.submit(preview, triggered_by="t", repo=path, sha=sha)
            run = await wait_run(engine, missing)
            assert run.status == "failure"
            assert "no artifact 'DATABASE_URL'" in await log_text(engine, missing)
            produced = await engine.submit(testing, triggered_by="t", repo=path, sha=sha)
            assert (await wait_run(engine, produced)).status == "success"
            used = await engine.submit(preview, triggered_by="t", repo=path, sha=sha)
            assert (await wait_run(engine, used)).status == "success"
            assert "got 6 characters" in await log_text(engine, used)
            async with engine.store.connect() as conn:
                await conn.execute(
                    "UPDATE branchline.artifacts SET expires_at = now() - interval '1 s'"
                )
            with pytest.raises(ArtifactMissingError, match="expired"):
                await engine.artifact("DATABASE_URL", workflow="testing", sha=sha)

    run_async(test)


def test_env_from_hands_a_published_value_to_a_later_command_masked(
    state_url: str, repo: tuple[Path, str, str]
) -> None:
    path, _, sha = repo
    uri = "postgresql://app:s3cret-pass-word@127.0.0.1:5999/app"

    async def publish(ctx: Any) -> None:
        await ctx.publish("database_url", uri, sensitive=True)

    use = cmd(
        "import os; u = os.environ['DATABASE_URL']",
        "print('len', len(u)); print(u); print(u.split(':')[2].split('@')[0])",
        env_from={"DATABASE_URL": "database_url"},
    )
    workflow = Workflow("w", (
        Job("branch", (Step("p", Call("publish")),), checkout=False),
        Job("test", (Step("use", use),), needs=("branch",)),
        Job("orphan", (Step("use", cmd("pass", env_from={"X": "never_published"})),)),
    ))  # fmt: skip

    async def test() -> None:
        async with engine_with_workers(state_url, actions={"publish": publish}) as engine:
            run_id = await engine.submit(workflow, triggered_by="t", repo=path, sha=sha)
            run = await wait_run(engine, run_id)
            assert run.status == "failure"
            found = await jobs(engine, run_id)
            assert found["test"].status == "success"
            assert found["orphan"].status == "failure"
            text = await log_text(engine, run_id)
            assert f"len {len(uri)}" in text
            assert "s3cret-pass-word" not in text
            assert "no earlier job of" in text
            async with engine.store.connect() as conn:
                cur = await conn.execute(
                    "SELECT kind, action, payload->>'conclusion', payload->>'workflow' "
                    "FROM branchline.events WHERE delivery_id = %s",
                    (f"run-{run_id}-completed",),
                )
                assert await cur.fetchall() == [("workflow_run", "completed", "failure", "w")]

    run_async(test)


def test_killed_worker_is_recovered_and_always_job_runs(
    state_url: str, repo: tuple[Path, str, str], tmp_path: Path
) -> None:
    path, _, sha = repo
    started = tmp_path / "started"
    workflow = Workflow(
        "crashy",
        (
            Job("long", (Step("s", cmd(f"open({str(started)!r}, 'w').write('x')",
                                       "import time; time.sleep(300)")),)),
            Job("cleanup", (Step("c", cmd("print('cleanup after crash')")),), needs=("long",),
                run_if=RunIf.ALWAYS),
        ),
    )  # fmt: skip

    async def test() -> None:
        store = Store(locate_state(Path("/"), {"BRANCHLINE_DATABASE_URL": state_url}))
        await store.start()
        project = f"p{os.urandom(3).hex()}"
        victim = subprocess.Popen(
            [PY, "-m", "tests.integration.engine_worker", state_url, project], cwd=REPO
        )
        try:
            engine = Engine(store, project=project, options=FAST)
            async with engine.open():
                run_id = await engine.submit(workflow, triggered_by="t", repo=path, sha=sha)
                deadline = time.monotonic() + 30
                while not started.exists() and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                assert started.exists(), "the victim worker never started the job"
                async with store.connect() as conn:
                    step = (await rows.steps_of(conn, (await jobs(engine, run_id))["long"].id))[0]
                assert step.pgid is not None
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                assert group_alive(step.pgid)  # the orphaned step still runs
                rescuer = asyncio.create_task(
                    engine.run_worker(concurrency=2, install_signal_handlers=False)
                )
                try:
                    run = await wait_run(engine, run_id, timeout=40)
                finally:
                    rescuer.cancel()
                    await asyncio.gather(rescuer, return_exceptions=True)
                j = await jobs(engine, run_id)
                assert run.status == "failure"
                assert j["long"].status == "failure"
                # Says why, naming the worker that went away.
                error = j["long"].error or ""
                assert f":{victim.pid}" in error, error
                assert "no heartbeat" in error or "is gone" in error, error
                assert f"{error}; its step is stopped" in await log_text(engine, run_id)
                assert j["cleanup"].status == "success"
                assert not group_alive(step.pgid), "recovery left the step running"
        finally:
            if victim.poll() is None:
                victim.kill()
                victim.wait()

    run_async(test)


def test_a_job_lost_between_store_and_queue_is_enqueued_again(
    state_url: str, repo: tuple[Path, str, str]
) -> None:
    path, _, sha = repo
    workflow = Workflow("lost", (Job("only", (Step("s", cmd("print('found again')")),)),))

    async def test() -> None:
        store = Store(locate_state(Path("/"), {"BRANCHLINE_DATABASE_URL": state_url}))
        await store.start()
        engine = Engine(store, project=f"p{os.urandom(3).hex()}", options=FAST)
        async with engine.open():
            run_id = await engine.submit(workflow, triggered_by="t", repo=path, sha=sha)
            # As after a crash between the store's commit and the enqueue: the store
            # says "queued" but the queue holds no task for the job.
            async with store.connect() as conn:
                await drop_queued_tasks(conn, run_id)
                await conn.execute(
                    "UPDATE branchline.jobs SET enqueued_at = now() - interval '1 minute' "
                    "WHERE run_id = %s",
                    (run_id,),
                )
            worker = asyncio.create_task(
                engine.run_worker(concurrency=1, install_signal_handlers=False)
            )
            try:
                run = await wait_run(engine, run_id, timeout=20)
            finally:
                worker.cancel()
                await asyncio.gather(worker, return_exceptions=True)
            assert run.status == "success"
            assert "found again" in await log_text(engine, run_id)

    run_async(test)


def test_a_job_the_state_database_died_under_runs_again_beyond_its_retries(
    state_url: str, repo: tuple[Path, str, str]
) -> None:
    """The state database went away while this worker ran a job (so neither its end
    nor its task's could be written): branchline's fault, not the job's. The job
    (retries = 0) runs once more and its run succeeds; a second such loss fails it."""
    path, _, sha = repo
    workflow = Workflow("abandoned", (Job("only", (Step("s", cmd("print('ran again')")),)),))

    async def lose(engine: Engine, run_id: int, attempt: int) -> int:
        async with engine.store.connect() as conn:
            await drop_queued_tasks(conn, run_id)
            cur = await conn.execute(
                "UPDATE branchline.jobs SET status = 'running', worker = %s, attempt = %s "
                "WHERE run_id = %s RETURNING id",
                (engine._worker_name(), attempt, run_id),
            )
            row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    async def test() -> None:
        store = Store(locate_state(Path("/"), {"BRANCHLINE_DATABASE_URL": state_url}))
        await store.start()
        engine = Engine(store, project=f"p{os.urandom(3).hex()}", options=FAST)
        async with engine.open():
            run_id = await engine.submit(workflow, triggered_by="t", repo=path, sha=sha)
            job_id = await lose(engine, run_id, attempt=1)
            assert await engine.recover_abandoned() == [job_id]
            job = (await jobs(engine, run_id))["only"]
            assert job.status == "queued", job
            assert "the state database went away" in (job.error or "")
            worker = asyncio.create_task(
                engine.run_worker(concurrency=1, install_signal_handlers=False)
            )
            try:
                run = await wait_run(engine, run_id, timeout=20)
            finally:
                worker.cancel()
                await asyncio.gather(worker, return_exceptions=True)
            assert run.status == "success"
            assert "ran again" in await log_text(engine, run_id)

            again = await engine.submit(workflow, triggered_by="t", repo=path, sha=sha)
            await lose(engine, again, attempt=2)
            await engine.recover_abandoned()
            job = (await jobs(engine, again))["only"]
            assert job.status == "failure", job
            assert "the state database went away" in (job.error or "")

    run_async(test)


def test_a_run_queued_but_never_started_is_started_by_recovery(
    state_url: str, repo: tuple[Path, str, str]
) -> None:
    """The state database died between a run's record (queued: submitted, or next in
    its concurrency group) and its first advance: no job was ever queued. Recovery
    starts it; before, it stayed queued for good."""
    path, _, sha = repo
    workflow = Workflow("unstarted", (Job("only", (Step("s", cmd("print('started')")),)),))

    async def test() -> None:
        store = Store(locate_state(Path("/"), {"BRANCHLINE_DATABASE_URL": state_url}))
        await store.start()
        engine = Engine(store, project=f"p{os.urandom(3).hex()}", options=FAST)
        async with engine.open():
            run_id = await engine.submit(workflow, triggered_by="t", repo=path, sha=sha)
            async with store.connect() as conn:
                await drop_queued_tasks(conn, run_id)
                await conn.execute(
                    "UPDATE branchline.runs SET status = 'queued', started_at = NULL "
                    "WHERE id = %s", (run_id,),
                )  # fmt: skip
                await conn.execute(
                    "UPDATE branchline.jobs SET status = 'pending', enqueued_at = NULL "
                    "WHERE run_id = %s", (run_id,),
                )  # fmt: skip
            assert await engine.advance_stuck_runs() == [run_id]
            worker = asyncio.create_task(
                engine.run_worker(concurrency=1, install_signal_handlers=False)
            )
            try:
                run = await wait_run(engine, run_id, timeout=20)
            finally:
                worker.cancel()
                await asyncio.gather(worker, return_exceptions=True)
            assert run.status == "success"
            assert "started" in await log_text(engine, run_id)

    run_async(test)


def test_a_run_whose_worker_died_between_a_job_and_the_advance_goes_on(
    state_url: str, repo: tuple[Path, str, str]
) -> None:
    """The crash window between "job a succeeded" (committed) and "so b is queued"
    (not yet): the recovery pass moves the run along instead of leaving it running."""
    path, _, sha = repo
    workflow = Workflow("window", (
        Job("a", (Step("s", cmd("print('a ran')")),)),
        Job("b", (Step("s", cmd("print('b ran')")),), needs=("a",)),
    ))  # fmt: skip

    async def test() -> None:
        store = Store(locate_state(Path("/"), {"BRANCHLINE_DATABASE_URL": state_url}))
        await store.start()
        engine = Engine(store, project=f"p{os.urandom(3).hex()}", options=FAST)
        async with engine.open():
            run_id = await engine.submit(workflow, triggered_by="t", repo=path, sha=sha)
            # As a worker killed right after recording a's end: a is done, its task
            # is gone from the queue, and nobody advanced the run.
            async with store.connect() as conn:
                await drop_queued_tasks(conn, run_id)
                await conn.execute(
                    "UPDATE branchline.jobs SET status = 'success', finished_at = now() "
                    "WHERE run_id = %s AND name = 'a'",
                    (run_id,),
                )
            assert (await jobs(engine, run_id))["b"].status == "pending"
            assert await engine.advance_stuck_runs() == [run_id]
            worker = asyncio.create_task(
                engine.run_worker(concurrency=1, install_signal_handlers=False)
            )
            try:
                run = await wait_run(engine, run_id, timeout=20)
            finally:
                worker.cancel()
                await asyncio.gather(worker, return_exceptions=True)
            assert run.status == "success"
            assert "b ran" in await log_text(engine, run_id)
            assert await engine.advance_stuck_runs() == []  # nothing left to move

    run_async(test)


def test_a_late_heartbeat_of_this_very_worker_kills_nothing(
    state_url: str, repo: tuple[Path, str, str], tmp_path: Path
) -> None:
    """A worker whose heartbeat came late (its event loop was held) is alive: the
    recovery pass of the same process must not take its job for a dead worker's."""
    path, _, sha = repo
    done = tmp_path / "done"
    workflow = Workflow("late", (Job("only", (Step("s", cmd(
        "import time; time.sleep(2.5)", f"open({str(done)!r}, 'w').write('x')")),)),))  # fmt: skip
    # Heartbeats every 10 s, "stalled" after 1 s: every running job looks stalled.
    late = EngineOptions(grace=1.0, heartbeat=10.0, stalled_after=1.0, recover_every=0.3,
                         poll=0.5)  # fmt: skip

    async def test() -> None:
        async with engine_with_workers(state_url, options=late) as engine:
            run_id = await engine.submit(workflow, triggered_by="t", repo=path, sha=sha)
            run = await wait_run(engine, run_id)
            assert run.status == "success", await log_text(engine, run_id)
            assert done.exists()

    run_async(test)
