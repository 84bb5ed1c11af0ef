"""`branchline demo --database neon`: the whole story with the example's database on
Neon's API, served by a fake Neon the demo starts itself (every exchange checked
against Neon's OpenAPI document); afterwards nothing of it runs, fake included, and
its directory is gone."""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import leftover_processes, stop_leftovers
from tests.demo_process import DemoProcess


@pytest.fixture
def tmp() -> Iterator[Path]:
    """The demo's TMPDIR (0755: Postgres, as another user when run as root, enters it);
    whatever a failed test left in it is stopped and removed."""
    path = Path(tempfile.mkdtemp(prefix="demo-neon-"))
    path.chmod(0o755)
    yield path
    stop_leftovers(path)
    shutil.rmtree(path, ignore_errors=True)


def test_the_demo_on_neon_plays_through_and_leaves_nothing(tmp: Path) -> None:
    demo = DemoProcess(tmp, "--database", "neon")
    try:
        code = demo.ended(timeout=600)
    finally:
        demo.kill()
    out = demo.out
    assert code == 0, out[-3000:]
    assert "the fake Neon:" in out
    for phase in ("1. a push", "2. a pull request", "3. a new commit", "4. the merge",
                  "5. a broken release"):  # fmt: skip
        assert f"\n{phase}" in out, out[-3000:]
    assert "rolled back automatically; production still serves the previous release" in out
    line = re.search(
        r"Neon \(fake\): (\d+) API calls, (\d+) invalid exchanges, [\d.]+ s of simulated", out
    )
    assert line, out[-3000:]
    assert int(line.group(1)) > 0
    assert line.group(2) == "0"
    assert "the fake Neon with its branches' clusters" in out
    assert "removed everything the demo started:" in out, out[-3000:]
    assert "Traceback" not in out
    # The key went by environment: never on a command line, never in the output.
    assert "NEON_API_KEY=" not in out
    assert leftover_processes(tmp) == []
    assert list(tmp.iterdir()) == []
