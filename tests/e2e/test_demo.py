"""The README's first command: the demo runs end to end, exits 0, and leaves
nothing running."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.conftest import REPO


def _ours(pattern: str) -> list[str]:
    found = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True)
    return [line for line in found.stdout.splitlines() if "branchline-demo-" in line]


def test_the_demo_runs_end_to_end_and_cleans_up() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRANCHLINE_")}
    env["TMPDIR"] = tempfile.mkdtemp(prefix="demo-tmp-")
    Path(env["TMPDIR"]).chmod(0o755)
    done = subprocess.run(
        [sys.executable, "-m", "branchline", "demo"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for phase in ("1. a push", "2. a pull request", "3. a new commit", "4. the merge",
                  "5. a broken release"):  # fmt: skip
        assert phase in out
    assert "deleted afterwards" in out and "incident issue #1" in out
    assert "rolled back automatically; production still serves the previous release" in out
    assert "http://web.codex.localhost:" in out
    # Nothing it started is left: no directory, no service, no Postgres, no edge.
    assert list(Path(env["TMPDIR"]).iterdir()) == []
    assert _ours("app.py") == [] and _ours("postgres") == [] and _ours("edge") == []
    Path(env["TMPDIR"]).rmdir()
