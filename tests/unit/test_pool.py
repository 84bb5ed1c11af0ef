"""The pool without root: sizes, the record, mount lookups, the refusals' words, and
the moves of data directories in and out (on plain directories: the swap and its
rollback need no mount), including a crash's remains."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from branchline.errors import BranchlineError, UsageError
from branchline.providers.database import pool

GB = 1024**3
NO_STOP = lambda: None  # noqa: E731 - nothing runs in these tests


def test_sizes_parse_and_small_ones_are_refused() -> None:
    assert pool.parse_pool_size("20G") == 20 * GB
    assert pool.parse_pool_size("1.5 GB") == int(1.5 * GB)
    with pytest.raises(UsageError, match="too small") as small:
        pool.parse_pool_size("500M")
    assert "--size 1G" in small.value.hint
    for wrong in ("twenty", "10%", ""):
        with pytest.raises(UsageError, match="--size") as bad:
            pool.parse_pool_size(wrong)
        assert "20G" in bad.value.hint


def test_a_pool_larger_than_the_free_room_is_refused_and_a_large_one_noted() -> None:
    with pytest.raises(UsageError, match=r"more than the 5\.0 GB free") as refused:
        pool.check_fits(8 * GB, 5 * GB)
    assert "grows as branches fill it" in refused.value.message
    assert "--size 5120M" in refused.value.hint
    note = pool.check_fits(4 * GB, 5 * GB)
    assert note is not None and "may grow to 4.0 GB of the 5.0 GB free" in note
    assert pool.check_fits(GB, 50 * GB) is None


def test_the_record_round_trips_atomically(tmp_path: Path) -> None:
    assert pool.load(tmp_path) is None
    made = pool.Pool(tmp_path, 2 * GB, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    pool.save(made)
    assert pool.load(tmp_path) == made
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool.json"]  # no temporary left
    assert made.image == tmp_path / "pool.img" and made.mount == tmp_path / "pool"
    assert made.as_dict()["size"] == 2 * GB


def test_an_unreadable_record_says_so(tmp_path: Path) -> None:
    pool.record_file(tmp_path).write_text('{"size": ')
    with pytest.raises(UsageError, match="unreadable") as caught:
        pool.load(tmp_path)
    assert "record" in caught.value.message and caught.value.hint


def test_mountinfo_is_read_with_its_escapes(tmp_path: Path) -> None:
    where = tmp_path / "a dir" / "pool"
    escaped = str(where).replace(" ", "\\040")
    info = (
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        f"90 22 7:3 / {escaped} rw,relatime shared:50 - xfs /dev/loop3 rw,attr2\n"
    )
    assert pool.mounted_source(where, info) == "/dev/loop3"
    assert pool.mounted_source(tmp_path, info) is None


def test_no_record_means_no_pool(tmp_path: Path) -> None:
    assert pool.ensure_mounted(tmp_path) is None
    assert pool.status(tmp_path) is None


def test_not_root_is_told_what_to_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    for attempt in (
        lambda: pool.create(tmp_path, "2G", stop_clusters=NO_STOP),
        lambda: pool.delete(tmp_path, stop_clusters=NO_STOP),
    ):
        with pytest.raises(UsageError, match="needs root") as caught:
            attempt()
        assert "loop device" in caught.value.message and "sudo" in caught.value.hint
    pool.save(pool.Pool(tmp_path, 2 * GB, datetime.now(UTC)))  # recorded, not mounted
    with pytest.raises(UsageError, match="not mounted") as remount:
        pool.ensure_mounted(tmp_path)
    assert remount.value.hint == "Mount it again: `sudo branchline db pool mount`."
    assert not (tmp_path / "pool.img").exists()  # nothing was made


def test_another_size_says_how_to_change_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    pool.save(pool.Pool(tmp_path, 2 * GB, datetime.now(UTC)))
    with pytest.raises(UsageError, match=r"a pool of 2\.0 GB already") as caught:
        pool.create(tmp_path, "3G", stop_clusters=NO_STOP)
    assert "db pool delete" in caught.value.hint and "create --size 3G" in caught.value.hint


# -- moving data (the pool's mount is a plain directory here) ------------------------


def _project(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    (state / "branches" / "production" / "data").mkdir(parents=True)
    (state / "branches" / "production" / "data" / "PG_VERSION").write_text("17\n")
    (state / "spares" / "production-1").mkdir(parents=True)
    (state / "branches" / "feature").symlink_to(state / "spares" / "production-1")
    (state / "backups" / "production").mkdir(parents=True)
    (state / "pool").mkdir()
    return state


def _outcome(state: Path) -> pool.Outcome:
    return pool.Outcome(pool.Pool(state, 2 * GB, datetime.now(UTC)))


def _leftovers(state: Path) -> list[str]:
    return sorted(p.name for p in [*state.glob(".*"), *(state / "pool").glob(".*")])


def test_data_moves_in_and_out_whole(tmp_path: Path) -> None:
    state = _project(tmp_path)
    stopped: list[bool] = []
    outcome = _outcome(state)
    pool._fill(outcome, lambda: stopped.append(True))
    assert stopped == [True] and outcome.moved == ["branches", "spares", "backups"]
    assert pool.placement(state) == dict.fromkeys(pool.DATA_DIRS, "pool")
    assert (state / "branches").readlink() == Path(
        "pool/branches"
    )  # relative: the state dir may move
    assert (state / "pool" / "branches" / "production" / "data" / "PG_VERSION").read_text()
    assert (state / "branches" / "feature").resolve() == (state / "pool/spares/production-1")
    assert _leftovers(state) == []

    back = _outcome(state)
    pool._empty(back, NO_STOP)
    assert back.moved == list(pool.DATA_DIRS)
    assert pool.placement(state) == dict.fromkeys(pool.DATA_DIRS, "disk")
    assert (state / "branches" / "production" / "data" / "PG_VERSION").read_text() == "17\n"
    assert (state / "branches" / "feature").is_symlink()  # still the adopted spare
    assert _leftovers(state) == []


def test_a_failed_copy_leaves_the_data_where_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = _project(tmp_path)
    real_copy = pool._copy

    def copy(source: Path, dest: Path) -> None:
        if source.name == "spares":
            real_copy(source, dest)  # half a copy, then the disk is full
            raise BranchlineError("cannot copy: No space left on device")
        real_copy(source, dest)

    monkeypatch.setattr(pool, "_copy", copy)
    with pytest.raises(BranchlineError) as caught:
        pool._fill(_outcome(state), NO_STOP)
    assert "moved into the pool: branches; spares and the rest are on the disk" in str(caught.value)
    where = pool.placement(state)
    assert where["branches"] == "pool" and where["spares"] == "disk"
    assert (state / "spares" / "production-1").is_dir()
    assert (state / "branches" / "feature").resolve() == (state / "spares/production-1").resolve()
    assert _leftovers(state) == [] and not (state / "pool" / "spares").exists()


def test_a_cluster_started_during_the_copy_undoes_the_move(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = _project(tmp_path)
    checks: list[Path] = []

    def running(directory: Path) -> list[str]:
        checks.append(directory)
        return ["production"] if len(checks) == 2 else []  # started while copying

    monkeypatch.setattr(pool, "_running_clusters", running)
    with pytest.raises(UsageError, match="still runs") as caught:
        pool._fill(_outcome(state), NO_STOP)
    assert "branchline down" in caught.value.hint
    assert pool.placement(state)["branches"] == "disk" and _leftovers(state) == []
    assert not (state / "pool" / "branches").exists()


def test_moving_out_needs_room_for_each_clone_in_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = _project(tmp_path)
    pool._fill(_outcome(state), NO_STOP)
    monkeypatch.setattr(pool, "_free", lambda path: 0)
    with pytest.raises(UsageError, match="once copied out") as caught:
        pool._empty(_outcome(state), NO_STOP)
    assert "--force" in caught.value.hint and "db gc" in caught.value.hint
    assert pool.placement(state)["branches"] == "pool"


def test_a_crash_mid_move_is_finished_or_undone(tmp_path: Path) -> None:
    state = _project(tmp_path)
    # branches: swapped away but the link never made -> put back
    (state / "branches").rename(state / ".branches.before-pool")
    # spares: linked, the disk copy not removed yet -> removed
    (state / "pool" / "spares").mkdir()
    (state / "spares").rename(state / ".spares.before-pool")
    (state / "spares").symlink_to("pool/spares")
    # backups: a copy into the pool that never finished -> removed
    (state / "pool" / ".backups.incoming").mkdir()
    # wal-archive: copied out whole, the link already gone -> moved into place
    (state / ".wal-archive.outgoing" / "production").mkdir(parents=True)
    done = pool.recover(state)
    assert len(done) == 4
    assert (state / "branches" / "production" / "data" / "PG_VERSION").exists()
    assert pool.placement(state) == {"branches": "disk", "spares": "pool",
                                     "wal-archive": "disk", "backups": "disk"}  # fmt: skip
    assert _leftovers(state) == []
    assert pool.recover(state) == []  # nothing left to do


def test_ensure_mounted_waits_for_a_move_and_tidies_after_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool, "is_mounted", lambda _pool: True)
    pool.save(pool.Pool(tmp_path, 2 * GB, datetime.now(UTC)))
    assert pool.ensure_mounted(tmp_path) is not None  # settled: no lock taken

    # Another process moves data (holds the lock, marked): ensure_mounted waits.
    (tmp_path / "pool.moving").touch()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path / "pool.lock")], stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        began = time.monotonic()
        assert pool.ensure_mounted(tmp_path) is not None
        assert time.monotonic() - began >= 0.3
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "pool.moving").exists()  # seen under the lock: a crash's

    # The pool command's own process (stopping clusters through the provider) does not
    # wait for itself.
    (tmp_path / "pool.moving").touch()
    with pool._locked(tmp_path):
        assert pool.ensure_mounted(tmp_path) is not None


HOLD_LOCK = """
import fcntl, sys, time
fh = open(sys.argv[1], "a")
fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(0.5)
"""
