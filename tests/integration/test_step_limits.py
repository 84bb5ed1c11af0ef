"""A step's limits on real Postgres, workers and processes: its log within a cap, its
deadline and its cancel (Call steps too), its checkout after its worker died, and
retention of old runs."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from branchline.engine.engine import Engine, EngineOptions
from branchline.engine.model import Call, Job, RunIf, Step, Workflow
from branchline.engine.runner import StepContext
from branchline.store import Store, locate_state
from branchline.store import runs as rows
from tests.conftest import REPO
from tests.integration.test_engine import (
    FAST,
    PY,
    cmd,
    engine_with_workers,
    jobs,
    log_text,
    pid_written,
    repo,
    run_async,
    state_url,
    wait_run,
)

pytestmark = pytest.mark.integration
__all__ = ["repo", "state_url"]  # fixtures, used by name
MB = 1024 * 1024


async def _database_size(engine: Engine) -> int:
    async with engine.store.connect() as conn:
        cur = await conn.execute("SELECT pg_database_size(current_database())")
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])  # type: ignore[call-overload]


def test_a_step_printing_50_mb_keeps_its_head_and_tail_within_the_cap(
    state_url: str, repo: tuple[Path, str, str]
) -> None:
    path, _, sha = repo
    lines = 500_000  # 100 bytes each: 50 MB
    printer = cmd(
        "import os, sys",
        "out = sys.stdout",
        f"for i in range({lines}):",
        "    out.write(f'line {i:09d} ' + os.urandom(42).hex() + '\\n')",
    )
    workflow = Workflow("loud", (Job("loud", (Step("print", printer),)),))

    async def test() -> None:
        async with engine_with_workers(state_url) as engine:
            assert engine.options.step_log == 5 * MB  # the default
            before = await _database_size(engine)
            run_id = await engine.submit(workflow, triggered_by="t", repo=path, sha=sha)
            run = await wait_run(engine, run_id, timeout=120)
            assert run.status == "success"
            after = await _database_size(engine)
            async with engine.store.connect() as conn:
                cur = await conn.execute(
                    "SELECT count(*), sum(octet_length(content)) FROM branchline.log_chunks "
                    "WHERE run_id = %s",
                    (run_id,),
                )
                stored_rows, _stored_bytes = await cur.fetchone()  # type: ignore[misc]
                found = await rows.logs_after(conn, run_id, 0, limit=1_000_000)
            out = [line.content for line in found if line.stream == "stdout"]
            kept = sum(len(line) + 1 for line in out)
            # The head (the first lines, in order) and the tail (the very last).
            assert out[0].startswith("line 000000000 ")
            assert out[-1].startswith(f"line {lines - 1:09d} ")
            assert 4.9 * MB < kept <= 5 * MB
            (notice,) = [ln.content for ln in found if "bytes dropped" in ln.content]
            dropped = int(re.search(r"… (\d+) bytes dropped …", notice)[1])  # type: ignore[index]
            assert dropped + kept == lines * 100
            assert "`[limits] step_log`" in notice
            # Where it sits: between the head and the tail.
            at = [ln.content for ln in found].index(notice)
            assert found[at - 1].content < found[at + 1].content
            # Stored a few lines to a row, and the state grew by about the cap.
            assert stored_rows < 700, stored_rows
            grown = after - before
            print(f"\n50 MB printed: {stored_rows} rows, state database +{grown / MB:.1f} MB")
            assert grown < 3 * 5 * MB, f"the state database grew by {grown / MB:.1f} MB"

    run_async(test)


def test_the_cap_is_configurable_and_a_quiet_step_loses_nothing(
    state_url: str, repo: tuple[Path, str, str]
) -> None:
    path, _, sha = repo
    loud = cmd("for i in range(2000): print(f'loud {i:04d} ' + 'y' * 90)")
    quiet = cmd(
        "for i in range(50): print(f'quiet {i}')", "import sys; print('err', file=sys.stderr)"
    )
    workflow = Workflow("two", (Job("j", (Step("loud", loud), Step("quiet", quiet))),))
    small = EngineOptions(**{**FAST.__dict__, "step_log": 64 * 1024})

    async def test() -> None:
        async with engine_with_workers(state_url, options=small) as engine:
            run_id = await engine.submit(workflow, triggered_by="t", repo=path, sha=sha)
            assert (await wait_run(engine, run_id)).status == "success"
            text = await log_text(engine, run_id)
            assert "loud 0000 " in text and "loud 1999 " in text and "loud 1000 " not in text
            assert "bytes dropped" in text and "the cap is 64 KB" in text
            for i in range(50):
                assert f"quiet {i}\n" in text + "\n"
            assert text.count("bytes dropped") == 1  # the quiet step lost nothing
            assert "\nerr" in text

    run_async(test)


# -- deadlines and cancels of Call steps ------------------------------------------------


async def _spawn_tree(pidfile: Path) -> subprocess.Popen[bytes]:
    """A process with a child, both sleeping, in their own group (as a migrate
    command is started); their pids are written to `pidfile`."""
    code = (
        "import subprocess, sys, time\n"
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(pidfile)!r}, 'w').write(f'{{c.pid}}')\n"
        "time.sleep(600)\n"
    )
    return subprocess.Popen([PY, "-c", code], start_new_session=True)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _tree_action(pids: list[int], pidfile: Path) -> Any:
    """An action that starts a process tree and waits on it; stopped (cancelled), it
    stops the tree, as the migrate action's command runner does."""

    async def action(ctx: StepContext, **_params: Any) -> None:
        process = await _spawn_tree(pidfile)
        pids.append(process.pid)
        await ctx.log(f"started {process.pid}")
        try:
            while process.poll() is None:
                await asyncio.sleep(0.05)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                await asyncio.to_thread(process.wait)

    return action


def test_a_call_step_past_its_deadline_is_stopped_with_its_processes(
    state_url: str, repo: tuple[Path, str, str], tmp_path: Path
) -> None:
    path, _, sha = repo
    pids: list[int] = []
    pidfile = tmp_path / "child.pid"
    workflow = Workflow(
        "stuck",
        (
            Job("stuck", (Step("wait", Call("hang", timeout=1.5)),), checkout=False),
            Job("after", (Step("c", Call("noop")),), needs=("stuck",), run_if=RunIf.ALWAYS,
                checkout=False),
        ),
    )  # fmt: skip

    async def noop(ctx: StepContext) -> None:
        await ctx.log("cleanup ran")

    actions: Mapping[str, Any] = {"hang": _tree_action(pids, pidfile), "noop": noop}

    async def test() -> None:
        async with engine_with_workers(state_url, actions=actions) as engine:
            began = time.monotonic()
            run_id = await engine.submit(workflow, triggered_by="t", repo=path, sha=sha)
            run = await wait_run(engine, run_id)
            took = time.monotonic() - began
            assert run.status == "failure"
            j = await jobs(engine, run_id)
            assert j["stuck"].error == "step 'wait': timed out after 1.5s"
            assert j["stuck"].error_code == "timed_out"
            assert j["after"].status == "success"
            assert took < 15, took
            child = int(pidfile.read_text())
            assert not _alive(pids[0]) and not _alive(child), "the step's processes survived"

    run_async(test)


def test_runs_cancel_reaches_a_call_step_and_its_processes(
    state_url: str, repo: tuple[Path, str, str], tmp_path: Path
) -> None:
    path, _, sha = repo
    pids: list[int] = []
    pidfile = tmp_path / "child.pid"
    workflow = Workflow("cancel-call", (Job("j", (Step("wait", Call("hang")),), checkout=False),))

    async def test() -> None:
        async with engine_with_workers(
            state_url, actions={"hang": _tree_action(pids, pidfile)}
        ) as engine:
            assert engine.options.step_timeout == 3600  # the default deadline
            run_id = await engine.submit(workflow, triggered_by="t", repo=path, sha=sha)
            child = await pid_written(pidfile)
            assert await engine.cancel(run_id, by="carol") is True
            run = await wait_run(engine, run_id)
            assert run.status == "cancelled"
            j = await jobs(engine, run_id)
            assert j["j"].error == "step 'wait': cancelled by carol"
            assert "cancelled by carol" in await log_text(engine, run_id)
            assert not _alive(pids[0]) and not _alive(child)

    run_async(test)


def test_a_step_without_a_deadline_of_its_own_gets_the_engine_s(
    state_url: str, repo: tuple[Path, str, str]
) -> None:
    path, _, sha = repo
    workflow = Workflow("slow", (Job("j", (Step("sleep", cmd("import time; time.sleep(60)")),)),))
    short = EngineOptions(**{**FAST.__dict__, "step_timeout": 1.0})

    async def test() -> None:
        async with engine_with_workers(state_url, options=short) as engine:
            run_id = await engine.submit(workflow, triggered_by="t", repo=path, sha=sha)
            assert (await wait_run(engine, run_id)).status == "failure"
            j = await jobs(engine, run_id)
            assert j["j"].error == "step 'sleep': timed out after 1s ([limits] step_timeout)"

    run_async(test)


def test_a_stopping_worker_waits_its_grace_then_hands_its_running_job_back(
    state_url: str, repo: tuple[Path, str, str], tmp_path: Path
) -> None:
    """A worker stopped while a step runs waits `stop_grace` for it, then stops the
    step's processes and hands the job back: the next worker runs it again. (It used
    to wait forever: a stop, or a test's teardown, hung with the step.)"""
    path, _, sha = repo
    pids: list[int] = []
    pidfile = tmp_path / "child.pid"
    workflow = Workflow("stopped", (Job("j", (Step("wait", Call("hang")),), checkout=False),))
    project = f"p{os.urandom(3).hex()}"

    async def quick(ctx: StepContext, **_params: Any) -> None:
        await ctx.log("ran again")

    async def test() -> None:
        async with engine_with_workers(
            state_url, project=project, actions={"hang": _tree_action(pids, pidfile)}
        ) as engine:
            run_id = await engine.submit(workflow, triggered_by="t", repo=path, sha=sha)
            child = await pid_written(pidfile)
            stopping = time.monotonic()
        took = time.monotonic() - stopping
        assert FAST.stop_grace <= took < FAST.stop_grace + 15, took
        assert not _alive(pids[0]) and not _alive(child), "the step's processes survived"
        async with engine_with_workers(
            state_url, project=project, actions={"hang": quick}
        ) as engine:
            j = await jobs(engine, run_id)
            assert j["j"].status in ("queued", "running", "success"), j["j"]
            run = await wait_run(engine, run_id)
            assert run.status == "success"
            assert (await jobs(engine, run_id))["j"].attempt == 2
            log = await log_text(engine, run_id)
            assert "its worker stopped while it ran" in log
            assert "ran again" in log

    run_async(test)


# -- checkouts of dead workers ------------------------------------------------------


def test_a_sigkilled_worker_s_checkout_is_removed_on_recovery(
    state_url: str, repo: tuple[Path, str, str], tmp_path: Path
) -> None:
    path, _, sha = repo
    started = tmp_path / "started"
    workdir = tmp_path / "checkouts"
    workdir.mkdir()
    sleeper = cmd(f"open({str(started)!r}, 'w').write('x')", "import time; time.sleep(300)")
    workflow = Workflow("crashy", (Job("long", (Step("s", sleeper),)),))

    async def test() -> None:
        store = Store(locate_state(Path("/"), {"BRANCHLINE_DATABASE_URL": state_url}))
        await store.start()
        project = f"p{os.urandom(3).hex()}"
        victim = subprocess.Popen(
            [PY, "-m", "tests.integration.engine_worker", state_url, project, str(workdir)],
            cwd=REPO,
        )
        options = EngineOptions(**{**FAST.__dict__, "workdir": workdir})
        try:
            engine = Engine(store, project=project, options=options)
            async with engine.open():
                run_id = await engine.submit(workflow, triggered_by="t", repo=path, sha=sha)
                deadline = time.monotonic() + 30
                while not started.exists() and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                job = (await jobs(engine, run_id))["long"]
                assert job.checkout is not None and Path(job.checkout).parent == workdir
                assert Path(job.checkout, "src", "api", "app.py").exists()
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                recovered = await engine.recover_dead_local_workers()
                assert recovered == [job.id]
                assert not Path(job.checkout).exists(), "the dead worker's checkout is left"
                assert list(workdir.iterdir()) == []
                listed = subprocess.run(
                    ["git", "-C", str(path), "worktree", "list"],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                assert job.checkout not in listed  # git forgot it too
                assert (await jobs(engine, run_id))["long"].checkout is None
                await wait_run(engine, run_id)
        finally:
            if victim.poll() is None:
                victim.kill()
                victim.wait()

    run_async(test)


def test_a_sweep_removes_checkouts_whose_maker_is_gone_and_keeps_live_ones(
    repo: tuple[Path, str, str], tmp_path: Path
) -> None:
    from branchline.engine.checkout import OWNER, PREFIX, sweep_checkouts, worktree

    path, _, sha = repo
    # A checkout made by a process that then died (SIGKILL: no cleanup ran).
    maker = subprocess.run(
        [PY, "-c", "import os, sys; from pathlib import Path\n"
         "from branchline.engine.checkout import worktree\n"
         f"cm = worktree(Path({str(path)!r}), {sha!r}, parent=Path({str(tmp_path)!r}))\n"
         "print(cm.__enter__()); sys.stdout.flush(); os._exit(0)"],
        capture_output=True, text=True, check=True, cwd=REPO,
    )  # fmt: skip
    orphan = Path(maker.stdout.strip()).parent
    assert orphan.name.startswith(PREFIX) and (orphan / OWNER).exists()
    stranger = tmp_path / f"{PREFIX}not-ours"  # no owner file: never judged
    stranger.mkdir()
    with worktree(path, sha, parent=tmp_path) as mine:  # this process: alive
        recorded = tmp_path / f"{PREFIX}recorded"  # a live job's, per the store
        recorded.mkdir()
        (recorded / OWNER).write_text("999999999 1\n")
        removed = sweep_checkouts(tmp_path, {str(recorded)})
        assert removed == [orphan]
        assert not orphan.exists() and mine.exists() and stranger.exists() and recorded.exists()


# -- retention ----------------------------------------------------------------------


def test_retention_prunes_old_runs_logs_and_artifacts_and_keeps_the_rest(
    state_url: str, repo: tuple[Path, str, str]
) -> None:
    path, first, sha = repo
    day = 86400.0
    options = EngineOptions(**{**FAST.__dict__, "retain_runs": 30 * day, "retain_logs": 7 * day,
                               "retain_artifacts": 3 * day})  # fmt: skip

    async def publish(ctx: StepContext) -> None:
        await ctx.log("published")
        await ctx.publish("out", f"value of {ctx.run_id}", days=365)

    workflow = Workflow("kept", (Job("j", (Step("p", Call("publish")),), checkout=False),))

    async def test() -> None:
        async with engine_with_workers(
            state_url, options=options, actions={"publish": publish}
        ) as engine:
            ids = {}
            # Production serves `first`: "live" and "serving" are runs of its commit.
            for name, commit in (("old", sha), ("logs_old", sha), ("art_old", sha),
                                 ("recent", sha), ("live", first), ("running", sha),
                                 ("serving", first)):  # fmt: skip
                ids[name] = await engine.submit(workflow, triggered_by=name, repo=path, sha=commit)
                await wait_run(engine, ids[name])
            rerun = await engine.rerun(ids["old"])
            await wait_run(engine, rerun)
            async with engine.store.connect() as conn:
                ages = {"old": 40, "logs_old": 10, "art_old": 5, "recent": 1, "running": 60,
                        "serving": 90}  # fmt: skip
                for name, days in ages.items():
                    await conn.execute(
                        "UPDATE branchline.runs SET finished_at = now() - make_interval(days => %s)"
                        " WHERE id = %s", (days, ids[name]))  # fmt: skip
                    await conn.execute(
                        "UPDATE branchline.artifacts SET created_at = now() - "
                        "make_interval(days => %s) WHERE run_id = %s",
                        (days, ids[name]),
                    )
                await conn.execute(  # a run that is not over, however old
                    "UPDATE branchline.runs SET status = 'running' WHERE id = %s",
                    (ids["running"],),
                )
                # ... with its job running on another host: else a recovery pass
                # rightly finishes a run with nothing left to run, before the prune.
                await conn.execute(
                    "UPDATE branchline.jobs SET status = 'running', worker = 'elsewhere:1' "
                    "WHERE run_id = %s", (ids["running"],))  # fmt: skip
                cur = await conn.execute(
                    "INSERT INTO branchline.releases (project, service, commit_sha, status) "
                    "VALUES (%s, 'api', %s, 'ready') RETURNING id",
                    (engine.project, first),
                )
                release = (await cur.fetchone())[0]  # type: ignore[index]
                await conn.execute(
                    "INSERT INTO branchline.deployments (project, service, environment, "
                    "release_id, status) VALUES (%s, 'api', 'production', %s, 'live')",
                    (engine.project, release),
                )
                await conn.execute(  # the deployment history outlives the run
                    "INSERT INTO branchline.rollouts (project, run_id, sha, triggered_by) "
                    "VALUES (%s, %s, %s, 'merge')", (engine.project, ids["old"], sha))  # fmt: skip
            pruned = await engine.prune()
            assert pruned["runs"] == 1, pruned
            async with engine.store.connect() as conn:
                left = {r.id for r in await rows.list_runs(conn, engine.project, limit=100)}
                cur = await conn.execute(
                    "SELECT run_id, count(*) FROM branchline.log_chunks GROUP BY run_id"
                )
                logs = dict(await cur.fetchall())  # type: ignore[arg-type]
                cur = await conn.execute("SELECT run_id FROM branchline.artifacts")
                artifacts = {row[0] for row in await cur.fetchall()}
                cur = await conn.execute(
                    "SELECT run_id FROM branchline.rollouts WHERE project = %s", (engine.project,)
                )
                rollout_runs = [row[0] for row in await cur.fetchall()]
                rerun_row = await rows.get_run(conn, rerun)
            assert ids["old"] not in left and rerun_row is not None and rerun_row.rerun_of is None
            assert rollout_runs == [None]
            assert set(ids.values()) - {ids["old"]} <= left
            assert ids["logs_old"] not in logs and ids["recent"] in logs
            assert ids["art_old"] not in artifacts and ids["logs_old"] not in artifacts
            assert ids["recent"] in artifacts
            # Never a run that is not over, never one of production's live commit.
            for name in ("running", "serving", "live"):
                assert ids[name] in logs and ids[name] in artifacts, name
            again = await engine.prune()
            assert again["runs"] == again["log_rows"] == again["artifacts"] == 0

    run_async(test)
