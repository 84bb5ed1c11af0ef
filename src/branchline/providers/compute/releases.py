"""Immutable releases: a service's files at one commit (`git archive`, so nothing
of the working tree leaks in), built once with the service's build command."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from collections.abc import Sequence
from pathlib import Path

from branchline.errors import BranchlineError
from branchline.processes import private_log

BUILD_TIMEOUT = 900.0


def export_tree(repo: Path, commit: str, path: str, dest: Path) -> Path:
    """Extract `path` at `commit` into `dest`; returns the service directory in it."""
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", "--format=tar", commit, "--", path],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        reason = archive.stderr.decode(errors="replace").strip()
        raise BranchlineError(
            f"cannot read {path!r} at {commit[:12]}: {reason}",
            hint="Check that the commit exists and the service's path is right in branchline.toml.",
        )
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        # The "data" filter refuses absolute paths, `..`, links out of the tree and devices.
        tar.extractall(dest, filter="data")
    service_dir = dest / path if path not in ("", ".") else dest
    if not service_dir.is_dir():
        raise BranchlineError(
            f"{path!r} does not exist at {commit[:12]}",
            hint="Commit the service's directory, or fix its path in branchline.toml.",
        )
    return service_dir


def run_build(command: Sequence[str], cwd: Path, log: Path, env: dict[str, str]) -> None:
    """Run the build command (an argument list); on failure raise with its output."""
    with private_log(log, "wb") as out:
        try:
            result = subprocess.run(
                list(command), cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env,
                stdin=subprocess.DEVNULL, timeout=BUILD_TIMEOUT, check=False,
            )  # fmt: skip
        except FileNotFoundError as exc:
            raise BranchlineError(
                f"cannot run the build command {command[0]!r}: {exc.strerror}",
                hint="Check the service's `build` in branchline.toml.",
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise BranchlineError(f"the build took longer than {BUILD_TIMEOUT:.0f} s") from exc
    if result.returncode != 0:
        tail = log.read_bytes()[-2000:].decode(errors="replace").strip()
        raise BranchlineError(
            f"the build failed (exit {result.returncode}): {tail.splitlines()[-1] if tail else ''}",
            hint=f"Its output: {tail[-600:] or '(none)'}",
        )


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
