"""Immutable releases: a service's files at one commit (`git archive`, so nothing
of the working tree leaks in), built once with the service's build command."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from branchline.config import ServiceConfig
from branchline.errors import BranchlineError, exec_error
from branchline.processes import private_log

BUILD_TIMEOUT = 900.0
SPEC_FILE = "service.json"  # the service as the release's commit defined it


def record_spec(location: Path, spec: ServiceConfig, secret_values: frozenset[str]) -> None:
    """Keep the service's definition with its release (a rollback runs the command it
    was built for). Variables holding a secret value are kept by name only: their
    values are taken from the config when the release starts, never stored here."""
    data = spec.model_dump(mode="json")
    env = data.get("env") or {}
    data["env"] = {k: v for k, v in env.items() if v not in secret_values}
    data["env_from_config"] = sorted(k for k, v in env.items() if v in secret_values)
    data["name"] = spec.name
    (location / SPEC_FILE).write_text(json.dumps(data, indent=1), encoding="utf-8")


def recorded_spec(location: Path, current: ServiceConfig | None) -> ServiceConfig | None:
    """The definition `record_spec` kept, or None for a release built without one."""
    try:
        data = json.loads((location / SPEC_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    name = data.pop("name")
    from_config = data.pop("env_from_config", [])
    if current is not None:
        data["env"].update({k: current.env[k] for k in from_config if k in current.env})
    spec = ServiceConfig.model_validate(data)
    spec._name = name
    return spec


def export_tree(
    repo: Path, commit: str, path: str, dest: Path, include: Sequence[str] = ()
) -> Path:
    """Extract `path` (and the `include` paths) at `commit` into `dest`; returns the
    service directory in it."""
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", "--format=tar", commit, "--", path, *include],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        reason = archive.stderr.decode(errors="replace").strip()
        raise BranchlineError(
            f"cannot read {path!r} at {commit[:12]}: {reason}",
            hint="Check that the commit exists and that the service's `path` and `include` "
            "are right in branchline.toml.",
        )
    import tarfile  # here: every command that builds the kit imports this module

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


def run_build(
    command: Sequence[str], cwd: Path, log: Path, env: dict[str, str], *, what: str = "build"
) -> None:
    """Run the build command (or `what` else: the `deps` install), an argument list;
    on failure raise with its output."""
    with private_log(log, "wb") as out:
        try:
            result = subprocess.run(
                list(command), cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env,
                stdin=subprocess.DEVNULL, timeout=BUILD_TIMEOUT, check=False,
            )  # fmt: skip
        except (FileNotFoundError, PermissionError) as exc:  # missing, or not executable
            raise exec_error(exc, what, command[0]) from exc
        except subprocess.TimeoutExpired as exc:
            raise BranchlineError(f"the {what} took longer than {BUILD_TIMEOUT:.0f} s") from exc
    if result.returncode != 0:
        tail = log.read_bytes()[-2000:].decode(errors="replace").strip()
        raise BranchlineError(
            f"the {what} failed (exit {result.returncode}): "
            f"{tail.splitlines()[-1] if tail else ''}",
            hint=f"Its output: {tail[-600:] or '(none)'}",
        )


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def deps_key(service_dir: Path, lock: Sequence[str], install: Sequence[str]) -> str:
    """What names a dependency install: its command and its lock files' contents."""
    digest = hashlib.sha256(json.dumps(list(install)).encode())
    for name in lock:
        file = service_dir / name
        try:
            digest.update(name.encode() + b"\0" + file.read_bytes() + b"\0")
        except FileNotFoundError:
            raise BranchlineError(
                f"the lock file {name!r} of `deps` is not in the release",
                hint="Commit it, or fix `lock` of the service's `[deps]` in branchline.toml.",
            ) from None
    return digest.hexdigest()[:24]


@contextlib.contextmanager
def deps_locked(cache: Path) -> Iterator[None]:
    """One install per cache directory at a time (two builds may share one)."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    with cache.with_name(cache.name + ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
