"""A clean checkout of a run's commit per job: a git worktree, removed afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

from branchline import processes
from branchline.errors import BranchlineError

PREFIX = "branchline-job-"  # a job's checkout directory in the temporary directory
OWNER = "owner"  # in it: "<pid> <start time>" of the process that made it


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=False
    )


@contextlib.contextmanager
def _worktrees_locked(repo: Path) -> Iterator[None]:
    """One change to `repo`'s worktrees at a time, across threads and processes: git
    does not lock them, and two jobs adding, removing and pruning at once break each
    other's (measured: 7 of 90 checkouts failed with 6 at once)."""
    common = git_dir(repo)
    if common is None:  # not a repository: the git command will say so
        yield
        return
    # Beside the worktrees' own records in the repository's git directory (git leaves
    # files it does not know alone there), gone with the repository.
    with (common / "branchline-worktrees.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def worktree(repo: Path, sha: str, *, parent: Path | None = None) -> Iterator[Path]:
    """A detached worktree of `sha`; removed when the block ends, also on failure."""
    base = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent))
    path = base / "src"
    # Who made it: a sweep removes it once that process is gone (a SIGKILLed worker).
    (base / OWNER).write_text(f"{os.getpid()} {processes.start_time_of(os.getpid())}\n")
    with _worktrees_locked(repo):
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
        with _worktrees_locked(repo):
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


def remove_checkout(base: Path, repo: Path | None) -> bool:
    """Remove a job's checkout directory (`base`, a branchline-job-* directory) left
    by a worker that died, and git's record of its worktree. False: it was gone."""
    if not base.name.startswith(PREFIX) or not base.is_dir():
        return False
    if repo is not None and git_dir(repo) is not None:
        with _worktrees_locked(repo):
            _git(repo, "worktree", "remove", "--force", str(base / "src"))
            shutil.rmtree(base, ignore_errors=True)
            _git(repo, "worktree", "prune")
    else:
        shutil.rmtree(base, ignore_errors=True)
    return True


def sweep_checkouts(parent: Path | None, keep: set[str]) -> list[Path]:
    """Remove job checkouts in `parent` (the temporary directory by default) whose
    maker is gone and that no job in `keep` (the live jobs' checkouts) owns; a
    directory without an owner file is left alone. Returns what was removed."""
    where = Path(parent or tempfile.gettempdir())
    removed = []
    for base in where.glob(f"{PREFIX}*"):
        if str(base) in keep or not base.is_dir():
            continue
        try:
            pid, started = (base / OWNER).read_text().split()
        except (OSError, ValueError):
            continue  # not ours to judge (made before owners were written, or elsewhere)
        if str(processes.start_time_of(int(pid))) == started:
            continue  # its maker still runs: a job in progress
        repo = _repository_of(base / "src")
        remove_checkout(base, repo)
        removed.append(base)
    return removed


def _repository_of(worktree: Path) -> Path | None:
    """The repository a worktree was added from (its `.git` file points there)."""
    try:
        text = (worktree / ".git").read_text().strip()
    except OSError:
        return None
    if not text.startswith("gitdir: "):
        return None
    # <repo>/.git/worktrees/<name>: the repository is three levels up.
    return Path(text.removeprefix("gitdir: ")).parent.parent.parent


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
