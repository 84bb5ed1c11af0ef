"""A small filesystem of the test's own: an XFS image mounted through a loop device
(what a user's small disk is), or a size-limited tmpfs where XFS cannot be made.
Both need root; elsewhere the caller skips, saying so. Always unmounted, also when
the test fails."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

MB = 1024**2


def why_not() -> str | None:
    """Why no small filesystem can be made here, or None."""
    if os.geteuid() != 0:
        return "mounting a small filesystem (loop-mounted XFS or tmpfs) needs root"
    if shutil.which("mount") is None:
        return "no mount(8) on this machine"
    return None


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=False, timeout=60)


@contextlib.contextmanager
def small_filesystem(parent: Path, size: int) -> Iterator[Path]:
    """A mounted filesystem of about `size` bytes under `parent` (XFS needs 300 MB)."""
    mount = Path(tempfile.mkdtemp(prefix="smallfs-", dir=parent))
    image = mount.with_suffix(".img")
    mounted = False
    try:
        made = None
        if size >= 300 * MB and shutil.which("mkfs.xfs"):
            with image.open("wb") as fh:
                fh.truncate(size)
            # Without reflink, as most users' disks are: branches are copies here,
            # which is where a disk fills (clones: tests/integration/test_database_clones).
            made = _run("mkfs.xfs", "-q", "-m", "reflink=0", str(image))
            if made.returncode == 0:
                made = _run("mount", "-o", "loop", str(image), str(mount))
        if made is None or made.returncode != 0:
            image.unlink(missing_ok=True)
            made = _run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount))
        if made.returncode != 0:
            raise RuntimeError(f"cannot mount a small filesystem: {made.stderr.strip()}")
        mounted = True
        mount.chmod(0o755)  # the Postgres user must reach its clusters
        yield mount
    finally:
        if mounted:
            done = _run("umount", str(mount))
            if done.returncode != 0:  # something still holds it: detach it anyway
                _run("umount", "-l", str(mount))
        image.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            mount.rmdir()


def fill(path: Path, leave: int) -> int:
    """Grow the file `path` until about `leave` bytes are free; the bytes added."""
    added = 0
    with path.open("ab") as fh:
        while True:
            st = os.statvfs(path.parent)
            free = st.f_bavail * st.f_frsize
            step = min(free - leave, 8 * MB)
            if step <= 0:
                return added
            os.posix_fallocate(fh.fileno(), os.fstat(fh.fileno()).st_size, step)
            added += step
