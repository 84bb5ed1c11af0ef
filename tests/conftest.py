"""Shared fixtures. Every cluster and process a test starts is stopped and
removed by a finalizer, also when the test fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from branchline.postgres import Cluster

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")


@pytest.fixture(scope="session")
def cluster_root() -> Iterator[Path]:
    """A directory the unprivileged Postgres user can enter (pytest's tmp is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="branchline-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster(cluster_root: Path) -> Iterator[Cluster]:
    """One throw-away Postgres cluster for the whole test session."""
    cluster = Cluster(cluster_root / "session-cluster")
    try:
        cluster.init(durable=False)
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def state_dir(cluster_root: Path, tmp_path: Path) -> Iterator[Path]:
    """A fresh state directory; its embedded cluster is stopped afterwards."""
    path = new_state_dir(cluster_root)
    yield path
    remove_state_dir(path)


def new_state_dir(cluster_root: Path) -> Path:
    path = Path(tempfile.mkdtemp(prefix="state-", dir=cluster_root))
    path.chmod(0o755)
    return path


def remove_state_dir(path: Path) -> None:
    """Stop every cluster a state directory holds, then remove it."""
    projects = path / "projects"
    homes = [*projects.glob("*/branches/*"), *projects.glob("*/spares/*-*")]
    for home in [*homes, path / "postgres"]:
        Cluster(home).destroy()
    shutil.rmtree(path, ignore_errors=True)


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real `branchline` command in a subprocess."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BRANCHLINE_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "branchline", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd or REPO,
        input=input,
        timeout=120,
        check=False,
    )


def eventually(check: Callable[[], T | None], timeout: float = 5.0) -> T:
    """Poll `check` (short backoff, no fixed sleep) until it returns a value."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        value = check()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within the deadline")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
