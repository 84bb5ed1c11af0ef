"""A branch's own bytes on a real copy-on-write filesystem (a loop-mounted XFS with
reflink): a reflink copy owns ~nothing until one side writes, tmpfs (no FIEMAP)
falls back to allocated blocks, a 1 GB tree is measured fast, and a clone of a
real data directory costs no more than `space.clone_estimate` says."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from branchline.postgres import Cluster, space
from branchline.postgres.extents import own_bytes

pytestmark = pytest.mark.integration
MB = 1024**2


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=False, timeout=120)


def _cannot(why: str) -> None:
    """No filesystem to test on: a failure under CI (it must run there), else a skip."""
    if os.environ.get("CI", "") not in ("", "0"):
        pytest.fail(why)
    pytest.skip(why)


@contextlib.contextmanager
def _mounted(parent: Path, *options: str) -> Iterator[Path]:
    """A filesystem mounted by `mount *options <dir>` under `parent`; always unmounted."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        _cannot("mounting a test filesystem needs root and mount(8)")
    mount = Path(tempfile.mkdtemp(prefix="extents-", dir=parent))
    mounted = False
    try:
        done = _run("mount", *options, str(mount))
        if done.returncode != 0:
            _cannot(f"cannot mount {' '.join(options)}: {done.stderr.strip()}")
        mounted = True
        mount.chmod(0o755)  # the Postgres user must reach its clusters
        yield mount
    finally:
        if mounted and _run("umount", str(mount)).returncode != 0:
            _run("umount", "-l", str(mount))  # something still holds it: detach anyway
        with contextlib.suppress(OSError):
            mount.rmdir()


@contextlib.contextmanager
def reflink_xfs(parent: Path, size: int = 2048 * MB) -> Iterator[Path]:
    """A small XFS with reflink on, loop-mounted; image and mount removed after."""
    if shutil.which("mkfs.xfs") is None:
        _cannot("mkfs.xfs is not installed (apt-get install xfsprogs)")
    image = Path(tempfile.mkstemp(prefix="extents-", suffix=".img", dir=parent)[1])
    try:
        with image.open("wb") as fh:
            fh.truncate(size)
        made = _run("mkfs.xfs", "-q", "-f", "-m", "reflink=1", str(image))
        if made.returncode != 0:
            _cannot(f"mkfs.xfs -m reflink=1 failed: {made.stderr.strip()}")
        with _mounted(parent, "-o", "loop", str(image)) as mount:
            yield mount
    finally:
        image.unlink(missing_ok=True)


def _reflink(source: Path, target: Path) -> None:
    done = _run("cp", "-a", "--reflink=always", str(source), str(target))
    assert done.returncode == 0, done.stderr
    os.sync()


def _write(path: Path, size: int, chunk: bytes | None = None) -> None:
    block = chunk or os.urandom(MB)
    with path.open("wb") as fh:
        for _ in range(size // len(block)):
            fh.write(block)
    os.sync()


def test_a_reflink_copy_owns_nothing_until_one_side_writes(cluster_root: Path) -> None:
    with reflink_xfs(cluster_root) as fs:
        parent = fs / "parent"
        parent.mkdir()
        _write(parent / "table", 64 * MB)
        assert own_bytes(parent) >= 64 * MB  # nothing shared yet: all its own
        _reflink(parent, fs / "child")
        child = fs / "child"
        assert own_bytes(child) < MB
        assert own_bytes(parent) < MB  # the parent shares them now too
        assert space.tree_size(child) >= 64 * MB  # what `du` would (wrongly) charge

        with (child / "table").open("r+b") as fh:  # the child writes 8 MB of its table
            fh.write(os.urandom(8 * MB))
        os.sync()
        assert 8 * MB <= own_bytes(child) < 9 * MB
        # The parent's old copy of those 8 MB is no longer shared either.
        assert 8 * MB <= own_bytes(parent) < 9 * MB
        (child / "new").write_bytes(os.urandom(4 * MB))  # and adds a file
        os.sync()
        assert 12 * MB <= own_bytes(child) < 13 * MB


def test_without_fiemap_it_counts_allocated_blocks(cluster_root: Path) -> None:
    with _mounted(cluster_root, "-t", "tmpfs", "-o", "size=64m", "tmpfs") as fs:
        (fs / "d").mkdir()
        (fs / "d" / "a").write_bytes(os.urandom(3 * MB))
        (fs / "b").write_bytes(b"x" * 10)
        (fs / "link").symlink_to(fs / "d" / "a")  # not followed: not counted twice
        assert own_bytes(fs) == space.tree_size(fs)
        assert 3 * MB <= own_bytes(fs) < 4 * MB


def test_a_gigabyte_data_directory_is_measured_fast(cluster_root: Path) -> None:
    """Like a data directory: thousands of small files and 1 GB in 1 GB-ish relations."""
    with reflink_xfs(cluster_root, 3072 * MB) as fs:
        data = fs / "data"
        for d in range(10):
            (data / "base" / str(d)).mkdir(parents=True)
            for i in range(300):
                (data / "base" / str(d) / str(i)).write_bytes(os.urandom(8192))
        chunk = os.urandom(MB)
        for i in range(32):
            _write(data / "base" / f"rel{i}", 32 * MB, chunk)
        _reflink(data, fs / "clone")
        with (fs / "clone" / "base" / "rel0").open("r+b") as fh:
            fh.write(os.urandom(16 * MB))
        os.sync()
        files = space.file_count(fs / "clone")
        began = time.perf_counter()
        owned = own_bytes(fs / "clone")
        seconds = time.perf_counter() - began
        print(f"own_bytes of a 1 GB tree of {files} files: {seconds:.3f} s")
        assert 16 * MB <= owned < 17 * MB
        assert space.tree_size(fs / "clone") >= 1024 * MB
        assert seconds < 2.0, f"own_bytes took {seconds:.2f} s for 1 GB"


def test_a_clone_of_a_data_directory_costs_what_clone_estimate_says(cluster_root: Path) -> None:
    with reflink_xfs(cluster_root) as fs:
        cluster = Cluster(fs / "prod")
        try:
            cluster.init(durable=False)
            cluster.start()
            with psycopg.connect(cluster.uri(), autocommit=True) as conn:
                conn.execute(
                    "CREATE TABLE t AS SELECT g, md5(g::text) FROM generate_series(1, 500000) g"
                )
            cluster.stop()
            os.sync()
            before = os.statvfs(fs)
            _reflink(cluster.data_dir, fs / "clone")
            after = os.statvfs(fs)
            cost = (before.f_bfree - after.f_bfree) * before.f_frsize
            estimate = space.clone_estimate(cluster.data_dir)
            metadata = estimate - 6 * space.WAL_SEGMENT
            print(f"clone cost {cost} bytes; estimate {estimate} (metadata part {metadata})")
            assert cost <= metadata
            assert estimate < space.copy_estimate(cluster.data_dir)
            assert own_bytes(fs / "clone") < MB
        finally:
            cluster.destroy()
