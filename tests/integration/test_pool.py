"""The pool on a real loop-mounted reflink XFS: made, cloning, mounted again after a
"reboot", refused sizes, production moved in and out with its rows, deleted. Every
mount and loop device a test makes is released afterwards, also when it fails."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from branchline.errors import UsageError
from branchline.postgres import Cluster, reflink
from branchline.providers.database import pool
from branchline.providers.database.local import LocalDatabaseProvider
from branchline.store import Store
from tests import clonefs
from tests.integration.test_database_local import run

pytestmark = pytest.mark.integration
NO_STOP = lambda: None  # noqa: E731 - no clusters in these directories


@pytest.fixture
def project_dir(clone_dir: Path, cluster_root: Path) -> Iterator[Path]:
    """A project's state directory on the ordinary disk (clone_dir only skips or fails
    where no loop-mounted XFS can be made, and shows that one can be)."""
    state = Path(tempfile.mkdtemp(prefix="pool-", dir=cluster_root))
    state.chmod(0o755)
    try:
        yield state
    finally:
        homes = [*(state / "branches").glob("*"), *(state / "spares").glob("*-*")]
        for home in [h for h in homes if not h.is_symlink()]:
            Cluster(home).destroy()
        clonefs.release(state / "pool", state / "pool.img")  # a pool the test kept
        shutil.rmtree(state, ignore_errors=True)


def cp_reflink(source: Path, dest: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["cp", "--reflink=always", str(source), str(dest)],
                          capture_output=True, text=True, check=False)  # fmt: skip


def test_the_clone_dir_clones(clone_dir: Path) -> None:
    (clone_dir / "a").write_bytes(os.urandom(1 << 20))
    assert cp_reflink(clone_dir / "a", clone_dir / "b").returncode == 0
    assert reflink.can_clone(clone_dir) is True


def test_create_status_again_and_delete(project_dir: Path) -> None:
    made = pool.create(project_dir, "1G", stop_clusters=NO_STOP)
    image = project_dir / "pool.img"
    assert not made.already and made.pool.size == 1024**3
    assert clonefs.loop_devices(image) and stat.S_IMODE(image.stat().st_mode) == 0o600
    assert image.stat().st_blocks * 512 < 200 * 1024**2  # sparse
    shown = pool.status(project_dir)
    assert shown is not None and shown["mounted"] and shown["can_clone"] is True
    assert shown["total"] > 900 * 1024**2 and shown["free"] > 0 and shown["disk_free"] > 0
    assert shown["data"] == dict.fromkeys(pool.DATA_DIRS, "pool")
    # Through the links, the branches' directory is the cloning filesystem.
    (project_dir / "branches" / "a").write_bytes(os.urandom(1 << 20))
    done = cp_reflink(project_dir / "branches" / "a", project_dir / "branches" / "b")
    assert done.returncode == 0, done.stderr

    assert pool.create(project_dir, "1024M", stop_clusters=NO_STOP).already
    with pytest.raises(UsageError, match="already"):
        pool.create(project_dir, "2G", stop_clusters=NO_STOP)

    deleted = pool.delete(project_dir, stop_clusters=NO_STOP)
    assert deleted is not None and "branches" in deleted.moved
    assert pool.placement(project_dir) == dict.fromkeys(pool.DATA_DIRS, "disk")
    assert (project_dir / "branches" / "b").stat().st_size == 1 << 20
    assert not image.exists() and pool.load(project_dir) is None
    assert not clonefs.is_mountpoint(project_dir / "pool") and not clonefs.loop_devices(image)
    assert pool.delete(project_dir, stop_clusters=NO_STOP) is None  # gone already


def test_a_size_beyond_the_free_room_makes_nothing(project_dir: Path) -> None:
    with pytest.raises(UsageError, match=r"more than the .* free") as caught:
        pool.create(project_dir, "900T", stop_clusters=NO_STOP)
    assert "--size" in caught.value.hint
    assert pool.load(project_dir) is None and not (project_dir / "pool.img").exists()
    assert not clonefs.is_mountpoint(project_dir / "pool")


def test_a_reboot_is_mounted_again(project_dir: Path) -> None:
    pool.create(project_dir, "1G", stop_clusters=NO_STOP)
    (project_dir / "backups" / "kept").write_text("still here")
    subprocess.run(["umount", str(project_dir / "pool")], check=True)  # behind its back
    assert not (project_dir / "backups" / "kept").exists()
    shown = pool.status(project_dir)
    assert shown is not None and not shown["mounted"] and "can_clone" not in shown

    mounted = pool.ensure_mounted(project_dir)
    assert mounted is not None and mounted.size == 1024**3
    assert (project_dir / "backups" / "kept").read_text() == "still here"
    assert pool.ensure_mounted(project_dir) == mounted  # cheap, and mounts nothing twice
    assert len(clonefs.loop_devices(project_dir / "pool.img")) == 1
    assert pool.mount(project_dir).already


def test_a_lost_image_says_what_to_run(project_dir: Path) -> None:
    pool.create(project_dir, "1G", stop_clusters=NO_STOP)
    subprocess.run(["umount", str(project_dir / "pool")], check=True)
    (project_dir / "pool.img").unlink()
    with pytest.raises(UsageError, match=r"image .* is missing") as caught:
        pool.ensure_mounted(project_dir)
    assert "db pool delete --force" in caught.value.hint
    with pytest.raises(UsageError, match="missing"):
        pool.delete(project_dir, stop_clusters=NO_STOP)  # no data is dropped unasked
    forced = pool.delete(project_dir, stop_clusters=NO_STOP, force=True)
    assert forced is not None and any("lost" in note for note in forced.notes)
    assert pool.load(project_dir) is None
    assert pool.placement(project_dir) == dict.fromkeys(pool.DATA_DIRS, "none")


# -- production moves in and out ------------------------------------------------------


def rows(db: LocalDatabaseProvider, name: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(run(db, db.connection_uri(name)), autocommit=True) as conn:
        return conn.execute("SELECT v FROM kept ORDER BY v").fetchall()


def test_production_moves_into_the_pool_and_back(shared_store: Store, project_dir: Path) -> None:
    db = LocalDatabaseProvider(
        project=f"p{os.urandom(4).hex()}", state_dir=project_dir, store=shared_store
    )
    run(db, db.init_root())
    with psycopg.connect(run(db, db.connection_uri("production")), autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (v text)")
        conn.execute("INSERT INTO kept VALUES ('before the pool')")
    stopped: list[str] = []

    def stop() -> None:
        stopped.extend(asyncio.run(db.stop_clusters()))

    made = pool.create(project_dir, "1G", stop_clusters=stop)
    assert "production" in stopped and {"branches", "backups", "wal-archive"} <= set(made.moved)
    assert pool.placement(project_dir)["branches"] == "pool"
    assert db.cluster("production").data_dir.resolve().is_relative_to(project_dir / "pool")
    # It starts again on its next use, from the pool, with its rows; the provider
    # that copied before sees the pool and clones there.
    assert rows(db, "production") == [("before the pool",)]
    made_branch = run(db, db.create_branch("feature"))
    assert made_branch.detail.get("made_by") == "clone", made_branch.detail
    assert db.branching_method() == "clone"
    assert rows(db, "feature") == [("before the pool",)]
    assert (project_dir / "pool" / "branches" / "feature").exists()
    # A restart: the clusters stopped, the pool unmounted. The next use mounts it.
    stop()
    subprocess.run(["umount", str(project_dir / "pool")], check=True)
    assert rows(db, "feature") == [("before the pool",)]
    assert run(db, db.create_branch("after-restart")).detail.get("made_by") == "clone"

    deleted = pool.delete(project_dir, stop_clusters=stop)
    assert deleted is not None and "branches" in deleted.moved
    assert pool.placement(project_dir)["branches"] == "disk"
    assert rows(db, "production") == [("before the pool",)]
    assert rows(db, "feature") == [("before the pool",)]
    assert not clonefs.loop_devices(project_dir / "pool.img")


def test_another_filesystem_at_the_pools_place_is_refused(project_dir: Path) -> None:
    pool.save(pool.Pool(project_dir, 1024**3, datetime.now(UTC)))
    (project_dir / "pool").mkdir()
    mounted = ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(project_dir / "pool")]
    subprocess.run(mounted, check=True)
    for attempt in (
        lambda: pool.ensure_mounted(project_dir),
        lambda: pool.delete(project_dir, stop_clusters=NO_STOP, force=True),
    ):
        with pytest.raises(UsageError, match="where branchline mounts the pool") as caught:
            attempt()
        assert "umount" in caught.value.hint
    assert pool.load(project_dir) is not None  # nothing deleted, forced or not
