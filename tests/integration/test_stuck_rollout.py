"""A production rollout stuck in its migrate step, on real providers: it ends at
`[database] migrate_timeout` with an incident issue holding the way back, its
processes gone, and the next rollout proceeds."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from branchline import processes
from branchline.store import forge as forge_rows
from branchline.store import rollouts as rollout_rows
from branchline.store import runs as run_rows
from tests.codex_project import git
from tests.integration.test_pipelines import pipelines, project, runs_of, story

pytestmark = pytest.mark.integration
__all__ = ["project"]  # a fixture, used by name

HANG = """import os as _os, pathlib as _pathlib, time as _time
_port = _pathlib.Path("HANG_ON_PORT")
if _port.exists() and _os.environ.get("PGPORT") == _port.read_text().strip():
    print("waiting for a lock that never comes", flush=True)
    _time.sleep(600)
"""


def test_a_rollout_stuck_in_migrate_ends_at_its_deadline_and_the_next_proceeds(
    project: Path,
) -> None:
    toml = project / "branchline.toml"
    text = toml.read_text()
    assert '\nmigrate = ["python", "migrate.py"]\n' in text
    line = '\nmigrate = ["python", "migrate.py"]\n'
    toml.write_text(text.replace(line, line + 'migrate_timeout = "8s"\n'))
    source = (project / "migrate.py").read_text()
    head = "from __future__ import annotations\n"
    (project / "migrate.py").write_text(source.replace(head, head + HANG, 1))
    git(project, "commit", "-qam", "migrate may hang; a short migrate deadline")

    async def test() -> None:
        async with pipelines(project) as p:
            kit = p.kit
            assert kit.config.database.migrate_timeout.total_seconds() == 8
            for name in ("AUTH_SECRET", "PAYMENT_WEBHOOK_SECRET"):
                await kit.secrets.set("production", name, f"production-{name}-0123456789")
            await kit.forge.push("main")
            await p.run_until_settled()
            found = await runs_of(kit)
            assert [r.status for r in found.get("production", [])] == ["success"], await story(kit)
            good = git(project, "rev-parse", "HEAD")

            # Only production's own migration hangs (not the tests', not the preflight's).
            port = str(conninfo_to_dict(await kit.database.connection_uri("production"))["port"])
            (project / "HANG_ON_PORT").write_text(port)
            git(project, "add", ".")
            git(project, "commit", "-qm", "a migration that waits forever")
            stuck_sha = git(project, "rev-parse", "HEAD")
            await kit.forge.push("main")
            await asyncio.wait_for(p.run_until_settled(), 240)
            stuck = (await runs_of(kit))["production"][-1]
            assert stuck.sha == stuck_sha and stuck.status == "failure"
            async with kit.store.connect() as conn:
                jobs = {j.name: j for j in await run_rows.jobs_of(conn, stuck.id)}
                rollout = await rollout_rows.of_run(conn, stuck.id)
                (issue,) = await forge_rows.issues(conn, kit.project)
                log = "\n".join(
                    line.content for line in await run_rows.logs_after(conn, stuck.id, 0)
                )
            assert jobs["rollout"].error == (
                "step 'migrate': migrate timed out after 8s (migrate_timeout)"
            )
            assert jobs["rollout"].error_code == "timed_out"
            assert "waiting for a lock that never comes" in log
            assert rollout is not None and rollout.status == "failed"
            assert rollout.detail["issue"] == issue.number
            assert "incident" in issue.labels and "stopped" in issue.title
            restore_point = rollout.detail["restore_point"]
            assert f'branchline restore --to "{restore_point}"' in issue.body
            # Nothing of the migrate command is left (found by its tree tag).
            left = [pid for pid, env in processes.with_environment(f"PGPORT={port}")
                    if env.get(processes.TREE_VARIABLE, "").startswith("migrate.")]  # fmt: skip
            assert left == [], left
            assert kit.edge_port is not None

            # The next rollout is not blocked by the stuck one.
            (project / "HANG_ON_PORT").unlink()
            git(project, "commit", "-qam", "the migration no longer waits")
            fixed = git(project, "rev-parse", "HEAD")
            await kit.forge.push("main")
            await asyncio.wait_for(p.run_until_settled(), 240)
            last = (await runs_of(kit))["production"][-1]
            assert last.sha == fixed and last.status == "success", good

    asyncio.run(test())
