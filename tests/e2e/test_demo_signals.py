"""A demo stopped half-way (Ctrl-C, or SIGTERM from a `timeout`, a CI cancel, `kill`)
removes everything it started: no process left for its directory (found by the
environment branchline gives what it starts, never by command line), no directory."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from branchline import processes
from tests.conftest import leftover_processes, stop_leftovers
from tests.demo_process import DemoProcess


@pytest.fixture
def tmp() -> Iterator[Path]:
    """The demo's TMPDIR (0755: Postgres, as another user when run as root, enters it);
    whatever a failed test left in it is stopped and removed."""
    path = Path(tempfile.mkdtemp(prefix="demo-signals-"))
    path.chmod(0o755)
    yield path
    stop_leftovers(path)
    shutil.rmtree(path, ignore_errors=True)


def _services_of(root: Path) -> list[processes.Tree]:
    """Processes of the demo's services, found by their tree tag (a service itself is
    handed no BRANCHLINE_STATE; its sandbox and keeper are)."""
    return processes.trees(processes.tree_prefix(root / "state" / "projects" / "codex"))


@pytest.mark.parametrize(
    ("stop", "phase", "code"),
    [
        # Ctrl-C reaches a terminal's whole foreground group; here as the push is tested.
        (signal.SIGINT, "1. a push", 130),
        # SIGTERM to the demo alone, once the preview's three services run.
        (signal.SIGTERM, "3. a new commit", 143),
    ],
    ids=["sigint-during-the-push", "sigterm-during-the-preview-update"],
)
def test_a_stopped_demo_removes_everything_it_started(
    tmp: Path, stop: signal.Signals, phase: str, code: int
) -> None:
    demo = DemoProcess(tmp)
    try:
        demo.wait_for(f"\n{phase}", timeout=240)
        root = demo.root()
        if stop == signal.SIGTERM:  # services and branches are there to be removed
            assert "preview-1 live" in demo.out
        if stop == signal.SIGINT:
            os.killpg(demo.process.pid, stop)
        else:
            demo.process.send_signal(stop)
        # The teardown takes seconds (about 10 with the preview's services).
        assert demo.ended(timeout=120) == code, demo.out[-3000:]
    finally:
        demo.kill()
    out = demo.out
    assert f"the demo was stopped ({stop.name}) during “{phase}" in out, out[-3000:]
    assert "removed everything the demo started:" in out, out[-3000:]
    if stop == signal.SIGTERM:  # the preview's three, stopped through the state
        assert "removed everything the demo started: 3 services," in out
    assert "Traceback" not in out
    # Nothing left: no process for its directory, no service, no directory.
    assert leftover_processes(tmp) == []
    assert _services_of(root) == []
    assert list(tmp.iterdir()) == []
