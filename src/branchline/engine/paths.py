"""Which files a change touched, and whether a job's path globs match them."""

from __future__ import annotations

import functools
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

from branchline.errors import BranchlineError

NO_COMMIT = "0" * 40  # what git sends for "no such commit" (a new or deleted branch)


@functools.lru_cache(maxsize=512)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """`**` crosses directories, `*` and `?` do not, as in GitHub's path filters."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def matches(path: str, patterns: Iterable[str]) -> bool:
    return any(_glob_regex(p).match(path) for p in patterns)


def any_matches(changed: Iterable[str] | None, patterns: Iterable[str]) -> bool:
    """None means "unknown" (a new branch): everything counts as changed."""
    patterns = list(patterns)
    if not patterns or changed is None:
        return True
    return any(matches(path, patterns) for path in changed)


def changed_files(repo: Path, base: str | None, head: str) -> list[str] | None:
    """Files changed between base and head, or None when there is no base to compare."""
    if not base or base == NO_COMMIT:
        return None
    result = subprocess.run(
        # -z: names verbatim (without it git C-quotes non-ASCII and unusual names).
        [
            "git",
            "-C",
            str(repo),
            "diff",
            "-z",
            "--name-only",
            "--no-renames",
            f"{base}...{head}",
            "--",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise BranchlineError(
            f"cannot compare {base[:12]} with {head[:12]} in {repo}: {result.stderr.strip()}",
            hint="Make sure both commits exist in the project's repository (git fetch).",
        )
    return [name for name in result.stdout.split("\0") if name]
