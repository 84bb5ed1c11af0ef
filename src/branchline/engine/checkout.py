"""A clean checkout of a run's commit per job: a git worktree, removed afterwards."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from branchline.errors import BranchlineError


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=False
    )


@contextlib.contextmanager
def worktree(repo: Path, sha: str, *, parent: Path | None = None) -> Iterator[Path]:
    """A detached worktree of `sha`; removed when the block ends, also on failure."""
    base = Path(tempfile.mkdtemp(prefix="branchline-job-", dir=parent))
    path = base / "src"
    added = _git(repo, "worktree", "add", "--detach", "--quiet", str(path), sha)
    if added.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        raise BranchlineError(
            f"cannot check out {sha[:12]} from {repo}: {added.stderr.strip()}",
            hint="Make sure the commit exists in the project's repository (git fetch).",
        )
    try:
        yield path
    finally:
        _git(repo, "worktree", "remove", "--force", str(path))
        shutil.rmtree(base, ignore_errors=True)
        _git(repo, "worktree", "prune")
