"""The migrate command against a real branch: stopped with its whole process tree at
`[database] migrate_timeout`, or when the step running it is cancelled."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from branchline.config import load_config
from branchline.migrations import CommandTimeoutError, migrate
from branchline.providers.database.local import LocalDatabaseProvider
from tests.integration.test_branch_data import db
from tests.integration.test_database_local import run

pytestmark = pytest.mark.integration
__all__ = ["db"]  # a fixture, used by name


def _project(tmp_path: Path, timeout: str) -> Path:
    """A project whose migrate command starts a child that leaves its process group
    (setsid), writes both pids, and sleeps."""
    pids = tmp_path / "pids"
    script = tmp_path / "hang.py"
    script.write_text(
        "import subprocess, sys, time\n"
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'],"
        " start_new_session=True)\n"
        f"open({str(pids)!r}, 'w').write(f'{{c.pid}} ' + str(__import__('os').getpid()))\n"
        "print('migrating...', flush=True)\n"
        "time.sleep(600)\n"
    )
    (tmp_path / "branchline.toml").write_text(
        '[project]\nname = "hang"\nzone = "hang.localhost"\n'
        f'[database]\nmigrate = ["{sys.executable}", "{script}"]\n'
        f'migrate_timeout = "{timeout}"\n'
    )
    return pids


def _gone(pids: list[int], within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(_alive(pid) for pid in pids):
            return True
        time.sleep(0.05)
    return False


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_sleeping_migrate_is_killed_at_its_deadline(
    db: LocalDatabaseProvider, tmp_path: Path
) -> None:
    pids_file = _project(tmp_path, "1500ms")
    config = load_config(tmp_path / "branchline.toml", env={})
    lines: list[str] = []
    began = time.monotonic()
    with pytest.raises(CommandTimeoutError) as stopped:
        run(db, migrate(config, db, "production", on_line=lines.append, fingerprint=False))
    took = time.monotonic() - began
    assert stopped.value.message == "migrate timed out after 1.5s (migrate_timeout)"
    assert stopped.value.code == "timed_out"
    assert "migrate_timeout" in stopped.value.hint
    assert lines == ["migrating...", "migrate: timed out after 1.5s (migrate_timeout); its "
                     "processes were stopped"]  # fmt: skip
    assert 1.5 <= took < 10, took
    pids = [int(p) for p in pids_file.read_text().split()]
    assert _gone(pids), "a process of the migrate command survived its deadline"


def test_a_cancelled_migrate_takes_its_process_tree_with_it(
    db: LocalDatabaseProvider, tmp_path: Path
) -> None:
    pids_file = _project(tmp_path, "10m")
    config = load_config(tmp_path / "branchline.toml", env={})
    assert config.database.migrate_timeout.total_seconds() == 600

    async def test() -> list[int]:
        task = asyncio.create_task(migrate(config, db, "production", fingerprint=False))
        deadline = time.monotonic() + 20
        while not pids_file.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)
        pids = [int(p) for p in pids_file.read_text().split()]
        assert all(_alive(pid) for pid in pids)
        task.cancel()  # what a `runs cancel` does to the step running it
        with pytest.raises(asyncio.CancelledError):
            await task
        return pids

    pids = run(db, test())
    assert _gone(pids, within=1.0), "a process of the migrate command survived the cancel"
