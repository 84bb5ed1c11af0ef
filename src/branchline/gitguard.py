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
    if missing); True when a line was added."""
    relative = _inside(state_dir, root)
    if relative is None:
        return False
    top = Path(_git(root, "rev-parse", "--show-toplevel").stdout.strip())
    gitignore = top / ".gitignore"
    entry = f"/{relative}/"
    existing = gitignore.read_text().splitlines() if gitignore.exists() else []
    if any(line.strip() in (entry, entry.lstrip("/"), entry.rstrip("/"), f"{relative}")
           for line in existing):  # fmt: skip
        return False
    text = gitignore.read_text() if gitignore.exists() else ""
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
