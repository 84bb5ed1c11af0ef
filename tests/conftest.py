"""Shared fixtures. Every cluster and process a test starts is stopped and
removed by a finalizer, also when the test fails."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from branchline.postgres import Cluster
from tests import clonefs

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
T = TypeVar("T")
# Where every test starts clusters or processes (the CLI in a subprocess included),
# and the fixtures that do: all of them are `integration`, out of the fast lane.
REAL_DIRECTORIES = ("integration", "e2e", "chaos", "security")
REAL_FIXTURES = frozenset({"pg_cluster", "state_dir", "shared_store", "clone_dir"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark what needs real Postgres clusters or processes, so that
    `-m "not integration"` is the fast lane (in-memory fakes, pure functions)."""
    for item in items:
        where = item.path.relative_to(TESTS).parts if item.path.is_relative_to(TESTS) else ()
        uses = set(getattr(item, "fixturenames", ()))
        if (where and where[0] in REAL_DIRECTORIES) or uses & REAL_FIXTURES:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def cluster_root() -> Iterator[Path]:
    """A directory the unprivileged Postgres user can enter (pytest's tmp is 0700).
    At the end of the session nothing may still run for a state directory in it."""
    path = Path(tempfile.mkdtemp(prefix="branchline-test-"))
    path.chmod(0o755)
    yield path
    for state in path.glob("state-*"):  # what a test's own state fixture did not remove
        remove_state_dir(state)
    leaked = stop_leftovers(path)
    shutil.rmtree(path, ignore_errors=True)
    assert not leaked, f"processes outlived the tests that started them: {leaked}"


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


@pytest.fixture(scope="session")
def clone_dir(cluster_root: Path) -> Iterator[Path]:
    """A directory on a filesystem that can clone files (reflink XFS, loop-mounted),
    for the whole session; unmounted at its end. Where none can be made: a skip that
    says why, but a failure under CI (`CI` set), where a skip would pass unseen."""
    with contextlib.ExitStack() as stack:
        why = clonefs.why_not()
        if why is None:
            try:
                path = stack.enter_context(clonefs.clone_filesystem(cluster_root))
            except RuntimeError as exc:  # no loop device in this container, say
                why = str(exc)
        if why is not None:
            if os.environ.get("CI", "") not in ("", "0"):
                pytest.fail(f"{why}; under CI (CI={os.environ['CI']}) it must be there")
            pytest.skip(why)
        yield path


@pytest.fixture
def state_dir(cluster_root: Path, tmp_path: Path) -> Iterator[Path]:
    """A fresh state directory; its embedded cluster is stopped afterwards, and a
    service or serve still running for it fails the test (and is stopped)."""
    path = new_state_dir(cluster_root)
    yield path
    remove_state_dir(path)  # its clusters (they carry the variable too) stop here
    leaked = stop_leftovers(path)
    assert not leaked, f"the test left processes running: {leaked}"


# The variables branchline gives what it starts: services (BRANCHLINE_STATE, their
# project's directory) and a background serve (BRANCHLINE_STATE_DIR).
STATE_VARIABLES = ("BRANCHLINE_STATE", "BRANCHLINE_STATE_DIR")


def leftover_processes(root: Path) -> list[tuple[int, str]]:
    """Live processes started for a state directory under `root`: found by their
    environment, which a service cannot hide by naming itself differently."""
    prefix = str(root)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            items = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile, or not ours to read
        for item in items:
            key, _, value = item.decode(errors="replace").partition("=")
            if key in STATE_VARIABLES and (value == prefix or value.startswith(prefix + "/")):
                found.append((int(entry.name), f"{key}={value} {_described(entry)}"))
                break
    return found


def _described(entry: Path) -> str:
    """What a leaked process is, for the failure message: its command and parent."""
    try:
        command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        fields = (entry / "stat").read_text().rpartition(")")[2].split()
    except OSError:
        return "(gone meanwhile)"
    return f"[{command.strip()[:200]}] state {fields[0]}, parent {fields[1]}"


def stop_leftovers(root: Path, grace: float = 3.0) -> list[tuple[int, str]]:
    """Kill (group and all) what still runs for `root`; returns what that was. A
    process that ends within `grace` seconds was already on its way out (killed a
    moment ago, or a server's child that noticed its parent die): not a leak."""
    deadline = time.monotonic() + grace
    while (leaked := leftover_processes(root)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid, _why in leaked:
        for kill in (os.killpg, os.kill):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill(pid, signal.SIGKILL)
    return leaked


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


# Tests run side by side: each serve takes any free port, unless a test sets one
# (a project's ports are otherwise fixed, and a taken one is an error).
ANY_FREE_PORT = {
    "BRANCHLINE_EDGE_PORT": "0", "BRANCHLINE_DNS_PORT": "0", "BRANCHLINE_API_PORT": "0",
}  # fmt: skip
for _variable, _value in ANY_FREE_PORT.items():
    os.environ.setdefault(_variable, _value)  # what a test starts in-process inherits it


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real `branchline` command in a subprocess (any free ports unless `env`
    names them)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BRANCHLINE_")}
    full_env.update(ANY_FREE_PORT)
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
