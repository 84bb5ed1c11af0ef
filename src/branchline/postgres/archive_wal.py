"""Production's archive_command and restore_command (standard library only: Postgres
runs it as `python -I archive_wal.py ...`, as the cluster's own user).

    archive_wal.py archive ARCHIVE_DIR %p %f [KEEP_BYTES]
    archive_wal.py restore ARCHIVE_DIR %f %p SEGMENT_SIZE

Archiving writes a temporary file, fsyncs it, renames it into place and fsyncs the
directory: a crash or a full disk never leaves a partial segment under a real
name. A partial or different segment already there (left by an older, plain `cp`)
is replaced from pg_wal, which still holds the whole one until archiving succeeds;
an identical one counts as archived (a retry after a crash). A copy that would
leave less than KEEP_BYTES free is not made: production's own pg_wal needs that
room more (a segment not archived stays in pg_wal; a WAL write that fails stops
production). A failure exits 1
with one line on stderr starting with `branchline-archive:` (it lands in the
cluster's log, where `status` finds the reason); Postgres retries by itself, so
archiving resumes as soon as there is room again.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

CHUNK = 1024 * 1024
SEGMENT_NAME = re.compile(r"[0-9A-F]{24}")
PREFIX = "branchline-archive:"


def _say(message: str) -> None:
    print(f"{PREFIX} {message}", file=sys.stderr, flush=True)


def _same_content(a: Path, b: Path) -> bool:
    with a.open("rb") as fa, b.open("rb") as fb:
        while True:
            left, right = fa.read(CHUNK), fb.read(CHUNK)
            if left != right:
                return False
            if not left:
                return True


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(directory: Path, name: str) -> Path:
    return directory / f".{name}.{os.getpid()}.tmp"


def archive(directory: Path, source: Path, name: str, keep: int = 0) -> int:
    """Copy the WAL file `source` into `directory` as `name`, atomically."""
    dest = directory / name
    for stale in directory.glob(f".{name}.*.tmp"):  # an earlier attempt that was killed
        stale.unlink(missing_ok=True)
    try:
        size = source.stat().st_size
        if dest.exists():
            held = dest.stat().st_size
            if held == size and _same_content(source, dest):
                return 0  # archived before Postgres could note it: done
            what = f"{held} of {size} bytes" if held != size else "different content"
            _say(f"replacing {name} in the archive ({what}: a partial or stale copy)")
        st = os.statvfs(directory)
        free = st.f_bavail * st.f_frsize
        if keep and free - size < keep:
            _say(
                f"could not archive {name}: No space left on device for it without starving "
                f"production's WAL ({free // 2**20} MB free, {keep // 2**20} MB kept for pg_wal)"
            )
            return 1
        tmp = temp_name(directory, name)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with source.open("rb") as src, os.fdopen(fd, "wb") as out:
                while chunk := src.read(CHUNK):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            tmp.replace(dest)
            _fsync_dir(directory)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        _say(f"could not archive {name}: {exc.strerror or exc} ({exc.filename or directory})")
        return 1
    return 0


def restore(directory: Path, name: str, target: Path, segment_size: int) -> int:
    """Copy `name` from the archive to `target`; a missing or partial one is named."""
    source = directory / name
    try:
        size = source.stat().st_size
    except FileNotFoundError:
        _say(f"{name} is not in the archive")
        return 1
    except OSError as exc:
        _say(f"cannot read {name} from the archive: {exc.strerror or exc}")
        return 1
    if SEGMENT_NAME.fullmatch(name) and size != segment_size:
        _say(f"{name} in the archive is partial ({size} of {segment_size} bytes)")
        return 1
    tmp = target.with_name(target.name + ".branchline-tmp")
    try:
        with source.open("rb") as src, tmp.open("wb") as out:
            while chunk := src.read(CHUNK):
                out.write(chunk)
        tmp.replace(target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        _say(f"could not restore {name}: {exc.strerror or exc}")
        return 1
    return 0


def main(argv: list[str]) -> int:
    if len(argv) in (4, 5) and argv[0] == "archive":
        keep = int(argv[4]) if len(argv) == 5 and argv[4].isdigit() else 0
        return archive(Path(argv[1]), Path(argv[2]), argv[3], keep)
    if len(argv) == 5 and argv[0] == "restore" and argv[4].isdigit():
        return restore(Path(argv[1]), argv[2], Path(argv[3]), int(argv[4]))
    _say(f"unexpected arguments {argv!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
