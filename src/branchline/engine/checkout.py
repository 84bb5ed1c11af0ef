"""A clean checkout of a run's commit per job: a git worktree, removed afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
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


@contextlib.asynccontextmanager
async def checked_out(
    repo: Path,
    sha: str,
    *,
    parent: Path | None = None,
    prepare: Callable[[Path], None] | None = None,
) -> AsyncIterator[Path]:
    """`worktree` for async code: git runs in a thread, never on the event loop.
    `prepare` (handing it to the sandbox user, say) runs on the fresh checkout."""
    async with _in_threads(worktree(repo, sha, parent=parent), prepare) as path:
        yield path


def git_dir(repo: Path) -> Path | None:
    """The repository's shared git directory (where a worktree's history lives)."""
    found = _git(repo, "rev-parse", "--path-format=absolute", "--git-common-dir")
    return Path(found.stdout.strip()) if found.returncode == 0 else None


@contextlib.contextmanager
def staged(root: Path, *, skip: tuple[str, ...] = (".branchline",)) -> Iterator[Path]:
    """A private copy of the project at `root` as it is on disk (uncommitted changes
    included): what git tracks or would (not what it ignores), or, outside git, the
    whole directory but `skip`. Removed when the block ends."""
    base = Path(tempfile.mkdtemp(prefix="branchline-stage-"))
    dest = base / "src"
    try:
        listed = _git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
        if listed.returncode == 0:
            dest.mkdir()
            for name in filter(None, listed.stdout.split("\0")):
                if name.split("/", 1)[0] in skip:
                    continue
                source = root / name
                if source.is_file() and not source.is_symlink():
                    (dest / name).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source, dest / name)
                elif source.is_symlink():
                    (dest / name).parent.mkdir(parents=True, exist_ok=True)
                    (dest / name).symlink_to(source.readlink())
        else:
            shutil.copytree(root, dest, symlinks=True, ignore=shutil.ignore_patterns(*skip))
        yield dest
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextlib.asynccontextmanager
async def staged_copy(
    root: Path, *, prepare: Callable[[Path], None] | None = None
) -> AsyncIterator[Path]:
    """`staged` for async code (the copying runs in a thread)."""
    async with _in_threads(staged(root), prepare) as path:
        yield path


@contextlib.asynccontextmanager
async def _in_threads(
    manager: contextlib.AbstractContextManager[Path], prepare: Callable[[Path], None] | None
) -> AsyncIterator[Path]:
    """A blocking context manager entered and left in threads, then `prepare`d."""
    path = await asyncio.to_thread(manager.__enter__)
    try:
        if prepare is not None:
            await asyncio.to_thread(prepare, path)
        yield path
    finally:
        await asyncio.to_thread(manager.__exit__, None, None, None)
