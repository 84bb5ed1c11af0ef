"""branchline's state never goes into git.

The state directory (`.branchline/` by default) holds live Postgres data, the
secret key and cluster passwords. `ignore` adds it to the repository's
`.gitignore` (`init` and `db init` do); `refuse_if_tracked` stops every command
while git tracks anything under it, with the commands that undo it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from branchline.errors import UsageError


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, check=False
    )


def _inside(state_dir: Path, root: Path) -> str | None:
    """`state_dir` relative to the repository's work tree at `root`, or None when it
    is outside it (then git cannot track it)."""
    top = _git(root, "rev-parse", "--show-toplevel")
    if top.returncode != 0:
        return None  # not a git repository
    work_tree = Path(top.stdout.strip()).resolve()
    try:
        return state_dir.resolve().relative_to(work_tree).as_posix()
    except ValueError:
        return None


def ignore(state_dir: Path, root: Path) -> bool:
    """Add the state directory to `.gitignore` at the top of the work tree (created
    if missing; outside a repository, in `root`, ready for `git init`); True when a
    line was added, False when it was ignored already or is outside the project."""
    relative = _inside(state_dir, root)
    in_git = relative is not None
    if relative is not None:
        top = Path(_git(root, "rev-parse", "--show-toplevel").stdout.strip())
    else:
        try:
            relative = state_dir.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            return False
        top = root
    gitignore = top / ".gitignore"
    entry = f"/{relative}/"
    text = gitignore.read_text() if gitignore.exists() else ""
    if any(line.strip() in (entry, entry.lstrip("/"), entry.rstrip("/"), relative)
           for line in text.splitlines()):  # fmt: skip
        return False
    # A broader pattern (`.*`, `.branchline/*`) may cover it already.
    if in_git and _git(top, "check-ignore", "-q", "--no-index", f"{relative}/key").returncode == 0:
        return False
    prefix = "" if not text or text.endswith("\n") else "\n"
    gitignore.write_text(
        f"{text}{prefix}# branchline's state: live databases, keys (never commit it)\n{entry}\n"
    )
    return True


def refuse_if_tracked(state_dir: Path, root: Path) -> None:
    """UsageError when git tracks a file under the state directory."""
    relative = _inside(state_dir, root)
    if relative is None:
        return
    tracked = _git(root, "ls-files", "-z", "--", f":(top){relative}")
    if tracked.returncode != 0 or not tracked.stdout:
        return
    count = len([name for name in tracked.stdout.split("\0") if name])
    raise UsageError(
        f"git tracks {count} file(s) under {relative}/, branchline's state (live databases, "
        "the secret key, passwords): commands stop until it is out of git",
        hint=f"Run `git rm -r --cached {relative} && git commit -m 'Stop tracking "
        f"branchline state'`, and `branchline init` adds `/{relative}/` to .gitignore. If "
        "these files were pushed anywhere, treat the secrets in them as exposed: set new ones.",
    )
