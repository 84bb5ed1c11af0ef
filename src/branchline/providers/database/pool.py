"""The pool: a filesystem that can clone files (reflink XFS in a sparse image,
loop-mounted) for a project whose state directory sits on one that cannot (ext4).

Layout under the project's state directory:

    pool.img      the sparse image (grows as branches fill it)
    pool.json     the record: image, size, created_at (written atomically)
    pool/         where the image is mounted
    branches -> pool/branches   (and spares, wal-archive, backups alike)

The data directories become symlinks into the mount, so every path the provider
uses keeps working. Moving data in or out goes one directory at a time: copy it
beside its destination, check no cluster started meanwhile, then swap names; a
crash leaves at most a `.<dir>.before-pool`, `.<dir>.incoming` or `.<dir>.outgoing`
that `recover` (run by every entry point here) finishes or undoes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from branchline.config.sizes import human_bytes, parse_size
from branchline.errors import BranchlineError, UsageError
from branchline.postgres import Cluster, reflink, space

# What the branches' data is: everything else (locks, logs, releases) stays put.
DATA_DIRS = ("branches", "spares", "wal-archive", "backups")
MIN_SIZE = 1024**3  # below it XFS's log and metadata leave little room for branches
MOUNTINFO = Path("/proc/self/mountinfo")
COMMAND_TIMEOUT = 600.0  # a copy of production can take minutes
MKFS = ("mkfs.xfs", "-q", "-m", "reflink=1")

StopClusters = Callable[[], object]
Progress = Callable[[str], None]


def _quiet(message: str) -> None:
    """The default progress: say nothing."""


@dataclass(frozen=True)
class Pool:
    """A recorded pool of one project's state directory."""

    state_dir: Path
    size: int
    created_at: datetime

    @property
    def image(self) -> Path:
        return self.state_dir / "pool.img"

    @property
    def mount(self) -> Path:
        return self.state_dir / "pool"

    def as_dict(self) -> dict[str, Any]:
        return {"image": str(self.image), "mount": str(self.mount), "size": self.size,
                "created_at": self.created_at.isoformat()}  # fmt: skip


@dataclass
class Outcome:
    """What `create`, `mount` or `delete` did, for the CLI to show."""

    pool: Pool
    already: bool = False  # create: the same pool was there; mount: it was mounted
    moved: list[str] = field(default_factory=list)  # data directories moved in or out
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"pool": self.pool.as_dict(), "already": self.already, "moved": self.moved,
                "notes": self.notes}  # fmt: skip


def record_file(state_dir: Path) -> Path:
    return state_dir / "pool.json"


def load(state_dir: Path) -> Pool | None:
    """The recorded pool, or None when there is none."""
    path = record_file(state_dir)
    try:
        raw = json.loads(path.read_text())
        return Pool(state_dir, int(raw["size"]), datetime.fromisoformat(raw["created_at"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(
            f"the pool record {path} is unreadable: {exc}",
            hint=f"Restore it from {path.with_suffix('.json.tmp')} if that is whole, or "
            "unmount the pool, move its data back and remove the record by hand.",
        ) from exc


def save(pool: Pool) -> None:
    """Write the record atomically: a crash leaves the old one or the new one."""
    path = record_file(pool.state_dir)
    tmp = path.with_suffix(".json.tmp")
    data = {"image": str(pool.image), "size": pool.size, "created_at": pool.created_at.isoformat()}
    with tmp.open("w") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def parse_pool_size(text: str) -> int:
    """Bytes from "20G", "1.5 GB"...; refused below MIN_SIZE."""
    try:
        spec = parse_size(text, percent=False)
    except ValueError as exc:
        raise UsageError(f"--size: {exc}", hint='Give a size such as "20G".') from exc
    size = spec.of(0)
    if size < MIN_SIZE:
        raise UsageError(
            f"a pool of {human_bytes(size)} is too small: XFS's own log and metadata "
            "would leave little room for branches",
            hint=f"Give at least {human_bytes(MIN_SIZE)}: --size 1G.",
        )
    return size


def check_fits(size: int, free: int) -> str | None:
    """Refuse a pool larger than the `free` bytes of the disk that holds its image;
    a note when it would take most of them (the image is sparse: it takes its room
    only as branches fill it, and other files may take that room first)."""
    if size > free:
        raise UsageError(
            f"a pool of {human_bytes(size)} is more than the {human_bytes(free)} free on "
            "the disk that holds it: the image grows as branches fill it, so it could "
            "fill that disk and stop production with it",
            hint=f"Give at most --size {free // 1024**2}M, or free room on that disk first.",
        )
    if size > free // 2:
        return (
            f"the pool may grow to {human_bytes(size)} of the {human_bytes(free)} free on "
            "its disk: files written there meanwhile make that room smaller"
        )
    return None


# -- mounts ---------------------------------------------------------------------


def _unescape(field_: str) -> str:
    """/proc/self/mountinfo writes space, tab, newline and backslash in octal."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_)


def mounted_source(mount: Path, mountinfo: str | None = None) -> str | None:
    """The device mounted at `mount` (the last one mounted there), or None."""
    if mountinfo is None:
        try:
            mountinfo = MOUNTINFO.read_text()
        except OSError:
            return None
    where = os.path.realpath(mount)
    found = None
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if len(fields) < 10 or "-" not in fields:
            continue
        after = fields[fields.index("-") + 1 :]  # filesystem type, source, options
        if _unescape(fields[4]) == where and len(after) >= 2:
            found = _unescape(after[1])
    return found


def _backing_file(device: str) -> str | None:
    """The image behind a loop device (/dev/loop3 -> its file), or None."""
    name = Path(device).name
    try:
        return (Path("/sys/block") / name / "loop" / "backing_file").read_text().strip()
    except OSError:
        return None


def is_mounted(pool: Pool) -> bool:
    """Whether the pool's own image is mounted at its place. Something else mounted
    there is an error: branches would land on a filesystem branchline does not own."""
    source = mounted_source(pool.mount)
    if source is None:
        return False
    backing = _backing_file(source)
    if backing is None and Path(source).name.startswith("loop"):
        return True  # a loop device whose file this machine does not show (no /sys)
    if backing is not None and os.path.realpath(backing) == os.path.realpath(pool.image):
        return True
    raise UsageError(
        f"{source} is mounted at {pool.mount}, where branchline mounts the pool {pool.image}",
        hint=f"Unmount it (`sudo umount {pool.mount}`), then run `sudo branchline db pool mount`.",
    )


def _run(*args: str, what: str, hint: str) -> None:
    try:
        done = subprocess.run(
            list(args), capture_output=True, text=True, check=False, timeout=COMMAND_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BranchlineError(f"cannot {what}: {exc}", hint=hint) from exc
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip() or f"exit {done.returncode}"
        raise BranchlineError(f"cannot {what}: {detail}", hint=hint)


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise UsageError(
            f"{what} needs root: the pool is an image mounted through a loop device, "
            "and only root may mount one",
            hint="Run it with sudo (e.g. `sudo branchline db pool mount`).",
        )


def _mount(pool: Pool) -> None:
    require_root(f"mounting the pool {pool.image}")
    if not pool.image.is_file():
        raise UsageError(
            f"the pool's image {pool.image} is missing: the branches that lived in it are gone",
            hint="Forget the pool with `sudo branchline db pool delete --force`, then "
            "`branchline db init` makes production again.",
        )
    pool.mount.mkdir(exist_ok=True)
    _run("mount", "-o", "loop", str(pool.image), str(pool.mount), what=f"mount {pool.image}",
         hint="See the message above; `dmesg` says more about a loop device or XFS.")  # fmt: skip
    pool.mount.chmod(0o755)  # the Postgres run-as user must reach its clusters


def _unmount(mount: Path) -> None:
    hint = f"Something still uses it (`fuser -vm {mount}` names it): stop it, run again."
    _run("umount", str(mount), what=f"unmount {mount}", hint=hint)


# State directories whose pool lock this process holds: the pool command moving the
# data stops the clusters through the provider, whose ensure_mounted must not wait
# for that same command (a second flock in one process waits for itself).
_HELD: set[str] = set()


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """One pool command of a project at a time (create, mount, delete)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(state_dir)
    with (state_dir / "pool.lock").open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)


def ensure_mounted(state_dir: Path) -> Pool | None:
    """The project's pool, mounted; None when it has none. Cheap when mounted and
    nothing moves (a read of /proc/self/mountinfo, a few stats). After a reboot it
    mounts the image again, which needs root: a UsageError says what to run
    otherwise. While a pool command moves the data it waits for it to finish, and it
    finishes or undoes a move a crash interrupted."""
    pool = load(state_dir)
    if pool is None:
        return None
    mounted = is_mounted(pool)
    if mounted and (not _unsettled(state_dir) or os.path.realpath(state_dir) in _HELD):
        return pool
    if not mounted and os.geteuid() != 0:
        raise UsageError(
            f"the pool {pool.image} that holds the branches' data is not mounted "
            "(the machine restarted?)",
            hint="Mount it again: `sudo branchline db pool mount`.",
        )
    with _locked(state_dir):  # held by a pool command for as long as it moves data
        pool = load(state_dir)
        if pool is None:  # deleted meanwhile: the data is back on the disk
            return None
        if not is_mounted(pool):
            _mount(pool)
        recover(state_dir)
    return pool


# -- what lives where --------------------------------------------------------------


def _aside(state_dir: Path, name: str, kind: str) -> Path:
    return state_dir / f".{name}.{kind}"


def placement(state_dir: Path) -> dict[str, str]:
    """Where each data directory is: "pool", "disk" or "none" (not made yet)."""
    found = {}
    for name in DATA_DIRS:
        path = state_dir / name
        found[name] = "pool" if path.is_symlink() else "disk" if path.exists() else "none"
    return found


def _moving_marker(state_dir: Path) -> Path:
    return state_dir / "pool.moving"


@contextlib.contextmanager
def _moving(state_dir: Path) -> Iterator[None]:
    """Marks the moves of a pool command (under the pool's lock), so that
    `ensure_mounted` waits for them instead of finding the directories mid-swap."""
    marker = _moving_marker(state_dir)
    marker.touch()
    try:
        yield
    finally:
        marker.unlink(missing_ok=True)


def _unsettled(state_dir: Path) -> bool:
    """Whether data is being moved, or a crash left a move half done."""
    mount = state_dir / "pool"
    return _moving_marker(state_dir).exists() or any(
        _aside(state_dir, name, "before-pool").exists()
        or _aside(state_dir, name, "outgoing").exists()
        or (mount / f".{name}.incoming").exists()
        for name in DATA_DIRS
    )


def recover(state_dir: Path) -> list[str]:
    """Finish or undo a move a crash interrupted (under the pool's lock); what it did.
    A swap is complete once the symlink is in place, and a copy counts only once it
    has its final name."""
    done = []
    mount = state_dir / "pool"
    _moving_marker(state_dir).unlink(missing_ok=True)  # seen under the lock: a crash's
    for name in DATA_DIRS:
        path = state_dir / name
        before = _aside(state_dir, name, "before-pool")
        outgoing = _aside(state_dir, name, "outgoing")
        incoming = mount / f".{name}.incoming"
        if before.exists():
            if path.is_symlink():  # moved in: the old copy is what is left over
                shutil.rmtree(before)
                done.append(f"{name}: removed the copy left on the disk")
            elif not path.exists():  # interrupted mid-swap: the disk copy is the data
                before.rename(path)
                done.append(f"{name}: put back on the disk")
        if outgoing.exists():
            if path.is_symlink():  # the copy out was not finished
                shutil.rmtree(outgoing)
                done.append(f"{name}: removed a partial copy out of the pool")
            elif not path.exists():  # copied out whole, the symlink already gone
                outgoing.rename(path)
                done.append(f"{name}: moved out of the pool")
        if incoming.exists():
            shutil.rmtree(incoming)
            done.append(f"{name}: removed a partial copy into the pool")
    return done


def _running_clusters(directory: Path) -> list[str]:
    """Postgres servers running on data under `directory` (a branch home that links
    to a spare is counted where the spare is)."""
    running = []
    for home in sorted(directory.glob("*")):
        if home.is_dir() and not home.is_symlink() and Cluster(home).postmaster_pid() is not None:
            running.append(home.name)
    return running


def _refuse_running(directory: Path) -> None:
    running = _running_clusters(directory)
    if running:
        raise UsageError(
            f"Postgres still runs on {directory} ({', '.join(running)}): its data cannot "
            "move while it runs",
            hint="Stop what uses the branches (`branchline down`), then run the pool "
            "command again.",
        )


def _copy(source: Path, dest: Path) -> None:
    """A copy keeping owners, modes, symlinks and sparse files (cp -a)."""
    _run("cp", "-a", "--", str(source), str(dest), what=f"copy {source} to {dest}",
         hint="Nothing was moved: the data is where it was. Free room and run again.")  # fmt: skip


def _move_in(state_dir: Path, name: str) -> bool:
    """Move data directory `name` into the pool; True if there was data to move."""
    path, dest = state_dir / name, state_dir / "pool" / name
    if path.is_symlink():
        return False
    if not path.exists():  # nothing yet: the provider makes it in the pool
        dest.mkdir(mode=0o755, exist_ok=True)
        owner = state_dir.stat()  # whoever runs branchline owns it, as on the disk
        os.chown(dest, owner.st_uid, owner.st_gid)
        path.symlink_to(Path("pool") / name)
        return False
    incoming = dest.with_name(f".{name}.incoming")
    before = _aside(state_dir, name, "before-pool")
    if dest.exists():  # an earlier attempt's copy: the disk's is the current one
        shutil.rmtree(dest)
    _refuse_running(path)
    try:
        _copy(path, incoming)
        _refuse_running(path)  # nothing may have written while it was copied
        incoming.rename(dest)
        path.rename(before)
        path.symlink_to(Path("pool") / name)
    except BaseException:
        if not path.exists() and not path.is_symlink() and before.exists():
            before.rename(path)
        shutil.rmtree(incoming, ignore_errors=True)
        shutil.rmtree(dest, ignore_errors=True)
        raise
    shutil.rmtree(before)
    return True


def _move_out(state_dir: Path, name: str) -> bool:
    """Move data directory `name` out of the pool; True if it was in it."""
    path, data = state_dir / name, state_dir / "pool" / name
    if not path.is_symlink():
        return False
    outgoing = _aside(state_dir, name, "outgoing")
    # Checked through the link: a postmaster names its data directory as it was started.
    _refuse_running(path)
    try:
        _copy(data, outgoing)
        _refuse_running(path)
        path.unlink()
        outgoing.rename(path)
    except BaseException:
        if not path.exists() and not path.is_symlink():
            path.symlink_to(Path("pool") / name)
        shutil.rmtree(outgoing, ignore_errors=True)
        raise
    return True


def room(pool: Pool) -> int:
    """Bytes branches can still write in the mounted pool: its own free space, but no
    more than the disk under the sparse image can still give it."""
    return min(_free(pool.mount), _free(pool.state_dir))


def _disk_data(state_dir: Path) -> int:
    return sum(
        space.tree_size(state_dir / n) for n in DATA_DIRS if placement(state_dir)[n] == "disk"
    )


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


# -- the commands -------------------------------------------------------------------


def create(
    state_dir: Path, size_text: str, *, stop_clusters: StopClusters, progress: Progress = _quiet
) -> Outcome:
    """Make, mount and record the pool, then move the data directories into it
    (`stop_clusters` first when there is data to move; `progress` hears of each long
    step). Idempotent for one size."""
    require_root("creating a pool")
    state_dir.mkdir(parents=True, exist_ok=True)
    size = parse_pool_size(size_text)
    with _locked(state_dir):
        pool = load(state_dir)
        if pool is not None and pool.size != size:
            raise UsageError(
                f"this project has a pool of {human_bytes(pool.size)} already",
                hint="To change its size: `sudo branchline db pool delete` (the branches "
                "move back to the disk), then "
                f"`sudo branchline db pool create --size {size_text}`.",
            )
        note = None
        if pool is None:
            already, (pool, note) = False, _make(state_dir, size)
        else:
            already = True
            if not is_mounted(pool):
                _mount(pool)
        outcome = Outcome(pool, already=already, notes=[note] if note else [])
        outcome.notes += recover(state_dir)
        _fill(outcome, stop_clusters, progress)
    return outcome


def why_not_here() -> str | None:
    """Why no pool can be made on this machine (root, mkfs.xfs, loop devices), or None."""
    if os.geteuid() != 0:
        return "making a pool needs root"
    if shutil.which(MKFS[0]) is None:
        return "making a pool needs mkfs.xfs (Debian's xfsprogs)"
    if not Path("/dev/loop-control").exists():
        return "this machine has no loop devices"
    return None


def discard(state_dir: Path) -> bool:
    """Unmount and remove a throw-away project's pool with everything in it (the
    demo's, whose clusters are destroyed already): nothing is moved back. The data
    directories' symlinks go with it. True if there was one."""
    pool = load(state_dir)
    if pool is None:
        return False
    with _locked(state_dir):
        if mounted_source(pool.mount) is not None and is_mounted(pool):
            _unmount(pool.mount)
        pool.image.unlink(missing_ok=True)
        record_file(state_dir).unlink(missing_ok=True)
        for name in DATA_DIRS:
            if (state_dir / name).is_symlink():
                (state_dir / name).unlink()
        with contextlib.suppress(OSError):
            pool.mount.rmdir()
    return True


def _make(state_dir: Path, size: int) -> tuple[Pool, str | None]:
    if shutil.which(MKFS[0]) is None:
        raise UsageError(
            "making a pool needs mkfs.xfs, which is not installed",
            hint="Install xfsprogs (`sudo apt-get install xfsprogs`) and run again.",
        )
    pool = Pool(state_dir, size, datetime.now(UTC))
    # Remains of a create that crashed before it recorded the pool: nothing in them.
    if mounted_source(pool.mount) is not None and is_mounted(pool):
        _unmount(pool.mount)
    pool.image.unlink(missing_ok=True)
    note = check_fits(size, _free(state_dir))
    data = _disk_data(state_dir)
    try:
        # Only root reads it: it holds every branch's data, passwords included.
        fd = os.open(pool.image, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)  # sparse: takes room only as branches fill it
        finally:
            os.close(fd)
        _run(*MKFS, str(pool.image), what=f"make an XFS filesystem in {pool.image}",
             hint="See the message above; `mkfs.xfs -V` shows the version installed.")  # fmt: skip
        _mount(pool)
        if data > _free(pool.mount):
            raise UsageError(
                f"the project's branches take {human_bytes(data)}, more than a pool of "
                f"{human_bytes(size)} holds ({human_bytes(_free(pool.mount))} free in it)",
                hint="Give a larger --size, or delete branches first (`branchline db gc`).",
            )
        save(pool)
    except BaseException:
        if mounted_source(pool.mount) is not None:
            with contextlib.suppress(BranchlineError):
                _unmount(pool.mount)
        pool.image.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            pool.mount.rmdir()
        raise
    return pool, note


def _fill(outcome: Outcome, stop_clusters: StopClusters, progress: Progress = _quiet) -> None:
    state_dir = outcome.pool.state_dir
    need, free = _disk_data(state_dir), _free(outcome.pool.mount)
    if need > free:
        raise UsageError(
            f"the branches on the disk take {human_bytes(need)}, more than the pool's "
            f"{human_bytes(free)} free",
            hint="Delete branches (`branchline db gc`), or make a larger pool: "
            "`sudo branchline db pool delete`, then `create --size` more.",
        )
    # Marked first: a branchline command waits (ensure_mounted) instead of starting
    # a cluster again between the stop and the copies.
    with _moving(state_dir):
        if "disk" in placement(state_dir).values():
            stop_clusters()  # they start again on their next use, from the pool
        _fill_each(outcome, progress)


def _fill_each(outcome: Outcome, progress: Progress) -> None:
    state_dir = outcome.pool.state_dir
    for name in DATA_DIRS:
        if placement(state_dir)[name] == "disk":
            size = human_bytes(space.tree_size(state_dir / name))
            progress(f"moving {name} into the pool ({size})")
        try:
            if _move_in(state_dir, name):
                outcome.moved.append(name)
        except BranchlineError as exc:
            so_far = ", ".join(outcome.moved) or "nothing"
            exc.message += f" (moved into the pool: {so_far}; {name} and the rest are on the disk)"
            raise


def mount(state_dir: Path) -> Outcome:
    """`db pool mount`: mount the recorded pool (after a reboot)."""
    pool = load(state_dir)
    if pool is None:
        raise UsageError(
            "this project has no pool to mount",
            hint="Make one: `sudo branchline db pool create --size 20G`.",
        )
    already = is_mounted(pool)
    ensure_mounted(state_dir)
    return Outcome(pool, already=already)


def delete(
    state_dir: Path,
    *,
    stop_clusters: StopClusters,
    force: bool = False,
    progress: Progress = _quiet,
) -> Outcome | None:
    """Move the data back to the disk, unmount, remove the image and the record; None
    when there is no pool. `force`: also when the data cannot come back (it is lost)."""
    require_root("deleting a pool")
    with _locked(state_dir):
        pool = load(state_dir)
        if pool is None:
            return None
        outcome = Outcome(pool)
        mounted = is_mounted(pool)  # something else mounted there is refused, even forced
        if not mounted:
            try:
                _mount(pool)
                mounted = True
            except BranchlineError:
                if not force:
                    raise
                outcome.notes.append("the pool could not be mounted: its data is lost")
        if mounted:
            outcome.notes += recover(state_dir)
            try:
                _empty(outcome, stop_clusters, progress)
            except BranchlineError as exc:
                if not force:
                    raise
                outcome.notes.append(f"data left in the pool and lost: {exc.message}")
                stop_clusters()
            _unmount(pool.mount)
        for name in DATA_DIRS:  # what could not come back (with --force) is gone
            if (state_dir / name).is_symlink():
                (state_dir / name).unlink()
        pool.image.unlink(missing_ok=True)
        record_file(state_dir).unlink()
        with contextlib.suppress(OSError):
            pool.mount.rmdir()
    return outcome


def _empty(outcome: Outcome, stop_clusters: StopClusters, progress: Progress = _quiet) -> None:
    state_dir = outcome.pool.state_dir
    inside = [n for n, where in placement(state_dir).items() if where == "pool"]
    if not inside:
        return
    # Clones share blocks in the pool; copied out, each takes its full size.
    need = sum(space.tree_size(state_dir / "pool" / n) for n in inside)
    free = _free(state_dir)
    if need > free:
        raise UsageError(
            f"the branches in the pool take {human_bytes(need)} once copied out, more than "
            f"the {human_bytes(free)} free on the disk",
            hint="Delete branches first (`branchline db branches delete NAME`, "
            "`branchline db gc`), or --force to delete the pool with everything in it.",
        )
    with _moving(state_dir):
        stop_clusters()
        _empty_each(outcome, inside, progress)


def _empty_each(outcome: Outcome, inside: list[str], progress: Progress) -> None:
    state_dir = outcome.pool.state_dir
    for name in inside:
        progress(f"moving {name} out of the pool")
        try:
            if _move_out(state_dir, name):
                outcome.moved.append(name)
        except BranchlineError as exc:
            so_far = ", ".join(outcome.moved) or "nothing"
            exc.message += f" (moved back: {so_far}; {name} and the rest are still in the pool)"
            raise


# -- status -------------------------------------------------------------------------


def status(state_dir: Path) -> dict[str, Any] | None:
    """What `db pool status` shows; None when there is no pool. Mounts nothing."""
    pool = load(state_dir)
    if pool is None:
        return None
    mounted = is_mounted(pool)
    data: dict[str, Any] = {**pool.as_dict(), "mounted": mounted,
                            "image_exists": pool.image.is_file(),
                            "data": placement(state_dir)}  # fmt: skip
    with contextlib.suppress(OSError):
        data["image_allocated"] = pool.image.stat().st_blocks * 512
    if mounted:
        st = os.statvfs(pool.mount)
        total = st.f_blocks * st.f_frsize
        # Tried (a probe file in the mount), which only root may write there.
        clones = reflink.can_clone(pool.mount) if os.geteuid() == 0 else None
        data |= {"total": total, "used": total - st.f_bfree * st.f_frsize,
                 "free": st.f_bavail * st.f_frsize, "disk_free": _free(state_dir),
                 "can_clone": clones}  # fmt: skip
    return data
