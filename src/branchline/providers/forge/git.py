"""The git operations of the local code host: argument lists, never a shell."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from branchline import naming
from branchline.errors import BranchlineError, UsageError


def _git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=False
    )
    if check and result.returncode != 0:
        raise BranchlineError(
            f"git {args[0]} failed in {repo}: {result.stderr.strip() or result.stdout.strip()}",
            hint="Run the same git command yourself to see what is wrong.",
        )
    return result


def check_branch_name(branch: str) -> str:
    """`branch` when git could name a branch so (checked before the name reaches an
    argument list: `a..b` is a range to `git rev-parse`, a NUL cannot be passed)."""
    return naming.check_git_branch(branch)


def head_of(repo: Path, branch: str) -> str:
    check_branch_name(branch)
    result = _git(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}",
                  check=False)  # fmt: skip
    if result.returncode != 0:
        raise UsageError(
            f"there is no branch {branch!r} in {repo}",
            hint="Create and commit to it first (git switch -c ...), or check the name.",
        )
    return result.stdout.strip()


def current_branch(repo: Path) -> str:
    result = _git(repo, "symbolic-ref", "--quiet", "--short", "HEAD", check=False)
    if result.returncode != 0:
        raise UsageError(
            "HEAD is detached: there is no current branch to push",
            hint="Name the branch: `branchline push BRANCH`.",
        )
    return result.stdout.strip()


def worktree_of(repo: Path, branch: str) -> Path | None:
    """The worktree where `branch` is checked out, if any."""
    listing = _git(repo, "worktree", "list", "--porcelain").stdout
    path = None
    for line in listing.splitlines():
        if line.startswith("worktree "):
            path = Path(line.removeprefix("worktree "))
        elif line == f"branch refs/heads/{branch}" and path is not None:
            return path
    return None


def merge(repo: Path, head: str, base: str, message: str) -> tuple[str, str]:
    """Merge `head` into `base` (a merge commit, like GitHub's merge button).
    Returns (base before, base after)."""
    before = head_of(repo, base)
    checked_out = worktree_of(repo, base)
    if checked_out is not None:
        # Merge where the user has it, so their working tree follows the branch.
        if _git(checked_out, "status", "--porcelain", "--untracked-files=no").stdout.strip():
            raise UsageError(
                f"{base!r} is checked out in {checked_out} with uncommitted changes",
                hint="Commit or stash them, then close the pull request again.",
            )
        _merge_in(checked_out, head, message)
        return before, head_of(repo, base)
    work = Path(tempfile.mkdtemp(prefix="branchline-merge-"))
    try:
        _git(repo, "worktree", "add", "--detach", "--quiet", str(work / "tree"), before)
        _merge_in(work / "tree", head, message)
        after = _git(work / "tree", "rev-parse", "HEAD").stdout.strip()
        # Compare-and-swap: fails if someone moved the branch meanwhile.
        _git(repo, "update-ref", f"refs/heads/{base}", after, before)
        return before, after
    finally:
        _git(repo, "worktree", "remove", "--force", str(work / "tree"), check=False)
        shutil.rmtree(work, ignore_errors=True)


def _merge_in(tree: Path, head: str, message: str) -> None:
    result = _git(tree, "-c", "user.name=branchline", "-c", "user.email=branchline@localhost",
                  "merge", "--no-ff", "-m", message, f"refs/heads/{head}", check=False)  # fmt: skip
    if result.returncode != 0:
        _git(tree, "merge", "--abort", check=False)
        raise UsageError(
            f"{head!r} does not merge cleanly: {result.stdout.strip() or result.stderr.strip()}",
            hint="Merge the base branch into it, resolve the conflicts, then `pr sync`.",
        )
