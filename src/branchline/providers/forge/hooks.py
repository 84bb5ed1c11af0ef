"""Git hooks that record a push event on every commit (and merge) in the repository."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from branchline.errors import UsageError

HOOKS = ("post-commit", "post-merge")
MARKER = "# installed by branchline"


def hooks_dir(repo: Path) -> Path:
    result = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--git-path", "hooks"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise UsageError(
            f"{repo} is not a git repository", hint="Run `git init` first, or pass its root."
        )
    path = Path(result.stdout.strip())
    return path if path.is_absolute() else repo / path


def install(repo: Path, config: Path) -> list[Path]:
    """Write the hooks (replacing only hooks branchline wrote before); returns them.
    A hook never fails a commit: recording the event is best effort."""
    directory = hooks_dir(repo)
    directory.mkdir(parents=True, exist_ok=True)
    command = shlex.join([sys.executable, "-m", "branchline", "--config", str(config),
                          "push", "--hook"])  # fmt: skip
    script = f"#!/bin/sh\n{MARKER}\n{command} >/dev/null 2>&1 || true\n"
    written = []
    for name in HOOKS:
        path = directory / name
        if path.exists() and MARKER not in path.read_text(errors="replace"):
            raise UsageError(
                f"{path} already exists and was not written by branchline",
                hint=f"Add this line to it yourself: {command} || true",
            )
        path.write_text(script)
        path.chmod(0o755)
        written.append(path)
    return written
