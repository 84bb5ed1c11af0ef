"""Chaos: the state directory on a small filesystem made by the test (a loop-mounted
XFS image, or tmpfs), filled by branches and then by a file, as an operator's worst
day would go.

Asserted: branch creation is refused with the clear error (how much is needed and
free, what gc could free) before the space kept for production's WAL is touched;
`db gc` runs without a spare and drops the spare first when the disk is into the
reserve; production keeps accepting writes all along (a client writes every 20 ms
and must see no error); archiving fails cleanly instead of leaving a partial
segment, and shows in `status`, `db backup` (which fails) and `db restore` (which
names the segment at once); once space is freed, archiving resumes by itself (no
command run), and `db restore` reaches a moment written during the fault.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from branchline.postgres import Cluster
from tests.chaos.smallfs import MB, fill, small_filesystem, why_not
from tests.conftest import remove_state_dir, run_cli, stop_leftovers

pytestmark = pytest.mark.integration
MIN_FREE = 40 * MB
CONFIG = """\
[project]
name = "shop"
zone = "shop.localhost"

[database]
migrate = ["true"]

[database.local]
min_free = "40MB"
# Restores reach back past the fault: gc's pruning to 10% of this 1 GB disk (the
# default) would drop those moments (tests/integration/test_archive_retention).
max_archive_size = "60%"

[services.api]
path = "api"
run = "python -m api"
"""


@dataclass
class Project:
    root: Path
    state: Path
    env: dict[str, str]

    def cli(self, *args: str) -> tuple[int, str, str]:
        done = run_cli(*args, cwd=self.root, env=self.env)
        for text in (done.stdout, done.stderr):
            assert "internal error" not in text and "Traceback" not in text, text
        return done.returncode, done.stdout, done.stderr

    def json(self, *args: str) -> Any:
        code, out, err = self.cli("--json", *args)
        assert code == 0, f"{args}: {out}{err}"
        return json.loads(out)

    @property
    def production(self) -> Cluster:
        return Cluster(self.state / "projects" / "shop" / "branches" / "production")

    def archiver(self) -> dict[str, Any]:
        with psycopg.connect(self.production.uri(), autocommit=True) as conn:
            cur = conn.execute("SELECT * FROM pg_stat_archiver")
            row = cur.fetchone()
            assert row is not None and cur.description is not None
            return {col.name: value for col, value in zip(cur.description, row, strict=True)}

    def free(self) -> int:
        import os

        st = os.statvfs(self.state)
        return st.f_bavail * st.f_frsize


@pytest.fixture
def project(cluster_root: Path, tmp_path: Path) -> Iterator[Project]:
    reason = why_not()
    if reason is not None:
        pytest.skip(reason)
    # Production alone keeps up to 128 MB of WAL for its copies (wal_keep_size) and
    # its archive grows: 1 GB leaves room for a backup and a restore once the branches
    # are gone.
    with small_filesystem(cluster_root, 1024 * MB) as mount:
        state = mount / "state"
        state.mkdir(mode=0o755)
        (tmp_path / "api").mkdir()
        (tmp_path / "branchline.toml").write_text(CONFIG)
        try:
            yield Project(tmp_path, state, {"BRANCHLINE_STATE_DIR": str(state)})
        finally:
            remove_state_dir(state)  # stops every cluster before the unmount
            stop_leftovers(state)


@dataclass
class Writer:
    """Production's steady client: one insert every 20 ms, every error kept."""

    uri: str
    rows: int = 0
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        conn: psycopg.Connection[tuple[Any, ...]] | None = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = psycopg.connect(self.uri, autocommit=True, connect_timeout=5)
                    conn.execute("CREATE TABLE IF NOT EXISTS steady (n int, note text)")
                conn.execute("INSERT INTO steady VALUES (%s, 'steady')", (self.rows,))
                self.rows += 1
            except psycopg.Error as exc:
                self.errors.append(f"{datetime.now(UTC):%H:%M:%S.%f} {exc}")
                conn = None
            time.sleep(0.02)
        if conn is not None:
            conn.close()


def test_a_full_disk_never_takes_production_down(project: Project) -> None:
    assert project.cli("db", "init")[0] == 0
    uri = project.json("db", "url", "production")["uri"]
    writer = Writer(uri)
    thread = threading.Thread(target=writer.run, daemon=True)
    thread.start()
    try:
        _fill_with_branches(project)
        _fill_into_the_reserve(project)
        fault = _archiving_fails_cleanly(project, uri)
        _space_returns(project, uri, fault)
    finally:
        writer.stop.set()
        thread.join(10)
    assert writer.errors == [], writer.errors
    assert writer.rows > 100


def _fill_with_branches(project: Project) -> None:
    """Branches until one is refused; the refusal comes before the reserve is touched.
    A file takes most of the disk first: each copy adds WAL to production's archive,
    which a restore later replays (and must find room for)."""
    fill(project.state.parent / "filler", leave=400 * MB)
    made = []
    for n in range(1, 30):
        code, _out, err = project.cli("db", "branches", "create", f"b{n}")
        if code != 0:
            assert code == 2, err
            assert f"not enough disk space to create branch 'b{n}' from 'production'" in err
            assert "it needs about" in err and "is free on" in err and "min_free" in err
            assert "branchline db gc" in err
            break
        made.append(f"b{n}")
    else:
        raise AssertionError("29 branches fit on a 1 GB disk: nothing was refused")
    assert made, "not even one branch fitted"
    assert project.free() > MIN_FREE // 2, "the copies ate production's reserve"
    listed = project.json("db", "branches", "list")
    assert {b["name"]: b["status"] for b in listed} == {
        "production": "ready",
        **dict.fromkeys(made, "ready"),
    }
    project.json("db", "gc")  # runs whether or not a spare fits
    assert project.free() > MIN_FREE // 2, "gc's spare ate production's reserve"


def _fill_into_the_reserve(project: Project) -> None:
    """Something else fills the disk into the reserve: the spare goes first."""
    assert project.cli("db", "branches", "delete", "b1")[0] == 0
    project.json("db", "gc")
    spares = project.state / "projects" / "shop" / "spares"
    assert (spares / "production.next").exists(), "room again, yet no spare"
    spare = spares / (spares / "production.next").read_text().strip()
    filler = project.state.parent / "filler"
    for _attempt in range(3):  # gc's own cleanup (old archived WAL) may give room back
        fill(filler, leave=24 * MB)
        report = project.json("db", "gc")
        if any("spare copy dropped" in note for note in report["notes"]):
            break
    else:
        raise AssertionError(f"the spare stayed on a disk into the reserve: {report['notes']}")
    assert not spare.exists() and not (spares / "production.next").exists()
    fill(filler, leave=36 * MB)  # room for production's next two segments, no more
    code, _out, err = project.cli("db", "branches", "create", "late")
    assert code == 2 and "not enough disk space to create branch 'late'" in err


def _archiving_fails_cleanly(project: Project, uri: str) -> datetime:
    """Production closes a segment it cannot archive without starving its own WAL:
    archiving fails, and says so everywhere; production keeps writing."""
    before = project.archiver()
    with psycopg.connect(project.production.uri(), autocommit=True) as conn:
        row = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()
    assert row is not None
    segment = str(row[0])
    deadline = time.monotonic() + 30
    while project.archiver()["failed_count"] == before["failed_count"]:
        assert time.monotonic() < deadline, "archiving did not fail on a full disk"
        time.sleep(0.2)
    with psycopg.connect(uri, autocommit=True) as conn:  # production accepts writes
        conn.execute("INSERT INTO steady VALUES (-1, 'during the fault')")
    fault = datetime.now(UTC)
    archive = project.state / "projects" / "shop" / "wal-archive" / "production"
    assert not (archive / segment).exists(), "a partial segment under a real name"
    assert not list(archive.glob(".*.tmp")), "an unfinished copy left behind"

    # Checkpoints give back old WAL now and then; the filler takes it, so that the
    # archive stays without room while production keeps its own.
    squeeze = lambda: fill(project.state.parent / "filler", leave=20 * MB)  # noqa: E731
    squeeze()
    status = project.json("status")["storage"]
    assert status["archive"]["failing"] is True
    # The first file waiting: the segment, or the backup history file before it.
    failed = status["archive"]["last_failed_wal"]
    assert failed == segment or failed.startswith(before["last_archived_wal"][:16]), failed
    assert "No space left on device" in status["archive"]["reason"]
    code, human, _err = project.cli("status")
    assert code == 0 and "failing" in human and failed in human and "db gc" in human
    squeeze()
    code, _out, err = project.cli("db", "backup")
    assert code == 2 and "WAL archiving of production is failing" in err and failed in err
    squeeze()
    began = time.monotonic()
    code, _out, err = project.cli("db", "restore", "--to", "1 second ago", "--name", "too-soon")
    assert code == 2 and f"segment {failed} could not be archived" in err, err
    assert time.monotonic() - began < 20, "named at once, not after a timeout"
    return fault


def _space_returns(project: Project, uri: str, fault: datetime) -> None:
    """Space comes back: archiving resumes with no command run; restore reaches past
    the fault."""
    failed = project.archiver()["last_failed_wal"]
    (project.state.parent / "filler").unlink()
    began = time.monotonic()
    while True:  # nothing is run: the archiver retries by itself
        state = project.archiver()
        if state["last_archived_wal"] is not None and state["last_archived_wal"] >= failed:
            break
        assert time.monotonic() - began < 120, f"archiving did not resume: {state}"
        time.sleep(0.5)
    print(f"archiving resumed {time.monotonic() - began:.1f} s after space came back")
    assert project.json("status")["storage"]["archive"]["failing"] is False
    report = project.json("db", "gc")
    assert not any("WAL archiving" in note for note in report["notes"]), report
    # A restore is a full copy: room for it comes from the throw-away branches.
    for branch in project.json("db", "branches", "list"):
        if branch["name"] != "production":
            assert project.cli("db", "branches", "delete", branch["name"])[0] == 0
    time.sleep(1.1)  # the moment must be in the past
    moment = (fault + timedelta(milliseconds=500)).isoformat()
    restored = project.json("db", "restore", "--to", moment, "--name", "after-fault")
    assert restored["name"] == "after-fault"
    branch_uri = project.json("db", "url", "after-fault")["uri"]
    with psycopg.connect(branch_uri) as conn:
        notes = conn.execute("SELECT note FROM steady WHERE n = -1").fetchall()
    assert notes == [("during the fault",)]
    assert project.cli("db", "branches", "delete", "after-fault")[0] == 0
    code, out, err = project.cli("db", "backup")
    assert code == 0, out + err  # backups work again
