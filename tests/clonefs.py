"""A filesystem that can clone files (FICLONE, `cp --reflink=always`): reflink XFS in
a sparse image, mounted through a loop device. Needs root and mkfs.xfs; elsewhere the
caller skips, saying so (under CI it fails). Always unmounted and its loop device
detached, also when the test fails."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

GB = 1024**3


def why_not() -> str | None:
    """Why no cloning filesystem can be made here, or None."""
    if os.geteuid() != 0:
        return "mounting a cloning filesystem (reflink XFS through a loop device) needs root"
    for tool in ("mkfs.xfs", "mount", "losetup"):
        if shutil.which(tool) is None:
            return f"no {tool} on this machine (mkfs.xfs is in xfsprogs)"
    if not Path("/dev/loop-control").exists():
        return "no loop devices here (/dev/loop-control is missing)"
    return None


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=False, timeout=120)


def loop_devices(image: Path) -> list[str]:
    """The loop devices backed by `image` (none once it is properly unmounted)."""
    found = run("losetup", "-j", str(image)).stdout.splitlines()
    return [line.split(":", 1)[0] for line in found if line.strip()]


def is_mountpoint(path: Path) -> bool:
    return run("findmnt", "-n", "--mountpoint", os.path.realpath(path)).returncode == 0


def release(mount: Path, image: Path) -> None:
    """Unmount `mount` (lazily if something still holds it) and detach every loop
    device of `image`: what a test made is gone whatever state it failed in."""
    while is_mountpoint(mount):
        if run("umount", str(mount)).returncode != 0:
            run("umount", "-l", str(mount))
            break
    for device in loop_devices(image):
        run("losetup", "-d", device)


@contextlib.contextmanager
def clone_filesystem(parent: Path, size: int = GB) -> Iterator[Path]:
    """A mounted reflink XFS of `size` bytes (sparse) in a new directory under `parent`."""
    mount = Path(tempfile.mkdtemp(prefix="clonefs-", dir=parent))
    image = mount.with_suffix(".img")
    try:
        with image.open("wb") as fh:
            fh.truncate(size)
        for step in (
            ("mkfs.xfs", "-q", "-m", "reflink=1", str(image)),
            ("mount", "-o", "loop", str(image), str(mount)),
        ):
            done = run(*step)
            if done.returncode != 0:
                raise RuntimeError(f"{step[0]} failed: {done.stderr.strip()}")
        mount.chmod(0o755)  # the Postgres user must reach its clusters
        yield mount
    finally:
        release(mount, image)
        image.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            mount.rmdir()
