"""Config changes take effect: a run uses its own commit's branchline.toml (a fork's
uses the served one), a running serve takes a changed file, a rerun plans again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from branchline.config import load_config
from branchline.engine import logs as run_logs
from branchline.engine.model import Workflow
from branchline.operations import runs as runs_ops
from branchline.store import runs as run_rows
from tests.codex_project import commit_on
from tests.integration.test_pipelines import pipelines, project, runs_of, story

pytestmark = pytest.mark.integration
__all__ = ["project"]  # the fixture, shared with test_pipelines

EXTRA_JOB = """
[tests.extra]
command = ["python", "-c", "print('extra job from the commit')"]
"""


def _jobs(run: run_rows.RunRow) -> set[str]:
    return {job.name for job in Workflow.from_dict(run.definition["workflow"]).jobs}


def test_a_run_uses_its_commits_config_and_a_fork_the_served_one(project: Path) -> None:
    served = (project / "branchline.toml").read_text()
    commit_on(project, "more-tests", {"branchline.toml": served + EXTRA_JOB}, "an extra test")
    commit_on(project, "fork-tests", {"branchline.toml": served + EXTRA_JOB}, "an extra test")

    async def test() -> None:
        async with pipelines(project) as p:
            kit = p.kit
            await kit.forge.push("more-tests")
            await kit.forge.open_pr("fork-tests", fork=True)
            await p.run_until_settled()
            testing = (await runs_of(kit))["testing"]
            assert [r.status for r in testing] == ["success", "success"], await story(kit)
            pushed, forked = testing
            # The branch's own new job ran, with its own command.
            assert "extra" in _jobs(pushed)
            lines = [line.content async for line in run_logs.read(kit.store, pushed.id)]
            assert any("extra job from the commit" in line for line in lines)
            # Code from a fork is planned with the served config: no job of its own.
            assert "extra" not in _jobs(forked) and "quick" in _jobs(forked)

            # Served config fixed on the machine (the fork's jobs come from it): a
            # rerun plans again from the config as it reads now.
            (project / "branchline.toml").write_text(served + EXTRA_JOB)
            kit.reload(load_config(project / "branchline.toml", env={}))
            rerun = await runs_ops.rerun(kit, p.engine, forked.id)
            assert rerun.run_id is not None
            await p.run_until_settled()
            async with kit.store.connect() as conn:
                again = await run_rows.get_run(conn, rerun.run_id)
            assert again is not None and again.status == "success", await story(kit)
            assert "extra" in _jobs(again) and again.rerun_of == forked.id

    asyncio.run(test())


def refused_push(project: Path, branch: str, extra: str) -> str:
    """Push `branch` with `extra` added to its branchline.toml: no testing run may
    start, and the error its event records is returned."""
    served = (project / "branchline.toml").read_text()
    commit_on(project, branch, {"branchline.toml": served + extra}, f"config of {branch}")

    async def push() -> str:
        async with pipelines(project) as p:
            await p.kit.forge.push(branch)
            await p.run_until_settled()
            assert "testing" not in await runs_of(p.kit)
            async with p.kit.store.connect() as conn:
                cur = await conn.execute("SELECT error FROM branchline.events ORDER BY id DESC")
                row = await cur.fetchone()
        assert row is not None and row[0], row
        return str(row[0])

    return asyncio.run(push())


def test_a_broken_config_on_a_branch_fails_its_push_with_the_reason(project: Path) -> None:
    error = refused_push(
        project, "broken", '\n[tests.bad]\ncommand = ["python"]\ntimeout = "soon"\n'
    )
    assert "at commit" in error and "tests.bad.timeout" in error


def test_serve_takes_a_changed_config_and_refuses_a_broken_one(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = project / "branchline.toml"
    served = path.read_text()
    assert "max_live = 10" in served

    async def test() -> None:
        async with pipelines(project) as p:
            watcher = asyncio.create_task(p.watch_config(every=0.05))
            try:
                assert p.kit.config.preview.max_live == 10
                path.write_text(served.replace("max_live = 10", "max_live = 3"))
                await _until(lambda: p.kit.config.preview.max_live == 3)
                # Broken: refused, the previous config stays and the log says why.
                path.write_text(served.replace("max_live = 10", "max_live = 0"))
                await _until(lambda: "is not valid" in caplog.text)
                assert p.kit.config.preview.max_live == 3
                # Its zone is what serve started with: taken at the next restart.
                zone = p.kit.config.project.zone
                moved = served.replace(zone, "elsewhere.localhost")
                path.write_text(moved.replace("max_live = 10", "max_live = 4"))
                await _until(lambda: p.kit.config.preview.max_live == 4)
                assert p.kit.config.project.zone == zone
                assert "[project]: that takes effect when serve restarts" in caplog.text
            finally:
                watcher.cancel()

    with caplog.at_level(logging.INFO, logger="branchline"):
        asyncio.run(test())


async def _until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not check():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.05)


def test_a_branch_config_reads_only_the_variables_the_served_one_uses(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERVE_TOKEN", "ghp_of_whoever_started_serve")
    error = refused_push(project, "nosy", '\n[tests.nosy]\ncommand = ["echo", "${SERVE_TOKEN}"]\n')
    assert "SERVE_TOKEN" in error and "ghp_of_whoever_started_serve" not in error
