"""Copy-on-write clones of files (the FICLONE ioctl, `cp --reflink`): a clone shares
its blocks with the original until either side writes, so a data directory of any
size is copied in the time it takes to walk it. XFS made with `reflink=1` and btrfs
can; ext4 and tmpfs cannot. Whether a directory can is found by trying, never by
the filesystem's name (an XFS made without reflink looks the same)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import Collection
from pathlib import Path

FICLONE = 0x40049409  # _IOW(0x94, 9, int), linux/fs.h
_PROBE_BYTES = 4096


def can_clone(directory: Path) -> bool:
    """Whether files in `directory` (made if missing) can be cloned: tried on a
    throwaway file, so a filesystem without reflink support says no."""
    directory.mkdir(parents=True, exist_ok=True)
    source = directory / f".clone-probe-{os.getpid()}-{os.urandom(4).hex()}"
    target = source.with_suffix(".copy")
    try:
        source.write_bytes(b"\0" * _PROBE_BYTES)
        clone_file(source, target)
        return target.read_bytes() == source.read_bytes()
    except OSError:
        return False
    finally:
        source.unlink(missing_ok=True)
        target.unlink(missing_ok=True)


def clone_file(source: Path, target: Path) -> None:
    """`target` (new) becomes a clone of `source`, with its mode and owner."""
    src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        st = os.fstat(src)
        dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IMODE(st.st_mode))
        try:
            if st.st_size:
                fcntl.ioctl(dst, FICLONE, src)
            os.fchown(dst, st.st_uid, st.st_gid)
            os.fchmod(dst, stat.S_IMODE(st.st_mode))
        except BaseException:
            os.close(dst)
            dst = -1
            target.unlink(missing_ok=True)
            raise
        finally:
            if dst >= 0:
                os.close(dst)
    finally:
        os.close(src)


def clone_tree(
    source: Path,
    target: Path,
    *,
    skip: Collection[str] = (),
    emptied: Collection[str] = (),
    skip_file: Collection[str] = (),
) -> int:
    """Clone the tree `source` into `target` (which must not exist); the number of
    files cloned. Top-level entries named in `skip` are left out, those in `emptied`
    are made as empty directories, and files named in `skip_file` are left out
    anywhere. Files that vanish during the walk (a table dropped meanwhile) are left
    out, as `pg_basebackup` does: the WAL replayed afterwards says they are gone."""
    return _clone_dir(source, target, set(skip), set(emptied), set(skip_file), top=True)


def _clone_dir(
    source: Path, target: Path, skip: set[str], emptied: set[str], skip_file: set[str], top: bool
) -> int:
    _make_like(source, target)
    count = 0
    with os.scandir(source) as entries:
        listed = list(entries)
    for entry in listed:
        if top and entry.name in skip:
            continue
        if entry.name in skip_file:
            continue
        src, dst = Path(entry.path), target / entry.name
        with contextlib.suppress(FileNotFoundError):
            if entry.is_symlink():
                dst.symlink_to(src.readlink())
                os.lchown(dst, *_owner(entry))
            elif entry.is_dir(follow_symlinks=False):
                if top and entry.name in emptied:
                    _make_like(src, dst)
                else:
                    count += _clone_dir(src, dst, skip, emptied, skip_file, top=False)
            elif entry.is_file(follow_symlinks=False):
                clone_file(src, dst)
                count += 1
    return count


def _owner(entry: os.DirEntry[str]) -> tuple[int, int]:
    st = entry.stat(follow_symlinks=False)
    return st.st_uid, st.st_gid


def _make_like(source: Path, target: Path) -> None:
    """An empty directory with the mode and owner of `source` (not the umask's)."""
    st = source.stat()
    target.mkdir(stat.S_IMODE(st.st_mode))
    os.chown(target, st.st_uid, st.st_gid)
    target.chmod(stat.S_IMODE(st.st_mode))
