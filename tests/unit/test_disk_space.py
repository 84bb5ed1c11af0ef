"""Disk rules without clusters: sizes, the reserve, the refusal's words, what counts
as a full disk, the archive script's atomic copy and its restore side, segment names."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from branchline.cli import main as cli_main
from branchline.cli.output import Output
from branchline.config.sizes import SizeSpec, human_bytes, parse_size
from branchline.errors import ConfigError, PostgresError
from branchline.postgres import archive_wal, archiver, space
from branchline.postgres.cluster import Cluster
from branchline.postgres.runas import RunAs
from branchline.providers.database.local_disk import Disk, raise_if_disk_full
from tests.unit.test_config import BASE, load

MB = 1024**2
GB = 1024**3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500MB", SizeSpec(bytes=500 * MB)),
        ("500 mb", SizeSpec(bytes=500 * MB)),
        ("1.5GiB", SizeSpec(bytes=int(1.5 * GB))),
        ("2G", SizeSpec(bytes=2 * GB)),
        ("4096", SizeSpec(bytes=4096)),
        (123, SizeSpec(bytes=123)),
        ("10%", SizeSpec(fraction=0.10)),
        ("2.5 %", SizeSpec(fraction=0.025)),
    ],
)
def test_sizes_are_parsed(text: object, expected: SizeSpec) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "-5", "101%", "5 parsecs", True, 1.5, "MB"])
def test_bad_sizes_are_refused(text: object) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_min_free_in_the_config(tmp_path: Path) -> None:
    config = load(tmp_path, BASE + '\n[database.local]\nmin_free = "300MB"\n')
    assert config.database.local.reserve == SizeSpec(bytes=300 * MB)
    assert load(tmp_path, BASE).database.local.reserve is None  # the default: 10%, <= 1 GB
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, BASE + '\n[database.local]\nmin_free = "a lot"\n')
    assert "min_free" in caught.value.message and "500MB" in caught.value.hint


def test_the_default_reserve_is_a_tenth_at_most_a_gigabyte(tmp_path: Path) -> None:
    assert space.default_reserve(220 * MB) == 22 * MB
    assert space.default_reserve(500 * GB) == GB
    room = space.measure(tmp_path / "not" / "made" / "yet")  # the nearest existing ancestor
    st = os.statvfs(tmp_path)
    assert room.total == st.f_blocks * st.f_frsize
    assert room.reserve == min(room.total // 10, GB)
    assert space.measure(tmp_path, SizeSpec(fraction=0.5)).reserve == room.total // 2


def test_a_copy_that_would_eat_into_the_reserve_is_refused_with_the_numbers() -> None:
    room = space.Room(Path("/srv/state"), total=236 * MB, free=60 * MB, reserve=23 * MB)
    space.require(room, 30 * MB, "create branch 'a'", space.Reclaimable())  # 37 MB usable
    gc = space.Reclaimable((("2 expired branch(es)", 80 * MB), ("the spare copy", 40 * MB)))
    with pytest.raises(space.DiskFullError) as caught:
        space.require(room, 48 * MB, "create branch 'pr-9' from 'production'", gc)
    err = caught.value
    assert err.exit_code == 2 and err.code == "disk_full"
    assert err.message == (
        "not enough disk space to create branch 'pr-9' from 'production': it needs about "
        "48 MB, and 60 MB is free on /srv/state, of which 23 MB is kept for production's WAL "
        "([database.local] min_free)"
    )
    assert "`branchline db gc` could free about 120 MB (2 expired branch(es) 80 MB, the "
    assert "the spare copy 40 MB" in err.hint and "min_free" in err.hint
    nothing = space.refusal(room, 48 * MB, "x", space.Reclaimable())
    assert nothing.hint.startswith("`branchline db gc` would free nothing now")


def test_full_disks_are_recognised_whatever_reports_them() -> None:
    assert space.is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert space.is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert not space.is_disk_full(OSError(errno.EACCES, "Permission denied"))
    tool = PostgresError(
        "pg_basebackup failed for /x (exit 1)",
        hint='pg_basebackup: error: could not write to file "x": No space left on device',
    )
    assert space.is_disk_full(tool)
    assert not space.is_disk_full(PostgresError("pg_basebackup failed", hint="timeout"))

    class DiskFullError(Exception):
        sqlstate = "53100"

    assert space.is_disk_full(DiskFullError("could not extend file"))


def test_a_full_disk_is_never_an_internal_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def full(**_kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "/srv/state/x")

    monkeypatch.setattr(cli_main, "app", full)
    code = cli_main._dispatch(["db", "gc"], Output(json=True, debug=False), debug=False)
    err = json.loads(capsys.readouterr().err)
    assert code == 2 and err["error"] == "DiskFullError"
    assert "internal error" not in err["message"] and "the disk is full" in err["message"]
    assert "db gc" in err["hint"] and "min_free" in err["hint"]


def test_human_sizes() -> None:
    assert human_bytes(0) == "0 B"
    assert human_bytes(7_356_416) == "7.0 MB"
    assert human_bytes(220 * MB) == "220 MB"
    assert human_bytes(3 * GB // 2) == "1.5 GB"


# -- the archive script ---------------------------------------------------------------

SEGMENT = "000000010000000000000007"


def _segment(directory: Path, size: int = 64 * 1024, fill: bytes = b"w") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / SEGMENT
    path.write_bytes(fill * size)
    return path


def _archive(archive: Path, source: Path, name: str = SEGMENT) -> subprocess.CompletedProcess[str]:
    """As Postgres runs it: a separate interpreter, isolated, with arguments only."""
    return subprocess.run(
        [sys.executable, "-I", archive_wal.__file__, "archive", str(archive), str(source), name],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip


def test_archiving_writes_the_whole_segment_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    source = _segment(tmp_path / "pg_wal")
    archive = tmp_path / "archive"
    archive.mkdir()
    done = _archive(archive, source)
    assert done.returncode == 0, done.stderr
    assert (archive / SEGMENT).read_bytes() == source.read_bytes()
    assert sorted(p.name for p in archive.iterdir()) == [SEGMENT]
    again = _archive(archive, source)  # Postgres retries after a crash: identical is done
    assert again.returncode == 0 and again.stderr == ""


@pytest.mark.parametrize("leftover", ["partial", "different"])
def test_a_partial_or_stale_leftover_is_replaced(tmp_path: Path, leftover: str) -> None:
    source = _segment(tmp_path / "pg_wal")
    archive = tmp_path / "archive"
    archive.mkdir()
    if leftover == "partial":  # what `cp` left when the disk filled
        (archive / SEGMENT).write_bytes(source.read_bytes()[:7000])
    else:
        (archive / SEGMENT).write_bytes(b"x" * source.stat().st_size)
    (archive / f".{SEGMENT}.4242.tmp").write_bytes(b"killed mid-copy")
    done = _archive(archive, source)
    assert done.returncode == 0, done.stderr
    assert "replacing 000000010000000000000007" in done.stderr
    assert ("7000 of 65536 bytes" if leftover == "partial" else "different content") in done.stderr
    assert (archive / SEGMENT).read_bytes() == source.read_bytes()
    assert sorted(p.name for p in archive.iterdir()) == [SEGMENT]


def test_a_failed_copy_leaves_nothing_under_the_real_name(tmp_path: Path) -> None:
    """A read error half way (the disk-full case is in the chaos and integration tests:
    it needs a real small filesystem)."""
    archive = tmp_path / "archive"
    archive.mkdir()
    done = _archive(archive, tmp_path / "pg_wal" / SEGMENT)  # gone: nothing to copy
    assert done.returncode == 1
    assert done.stderr.startswith("branchline-archive: could not archive 0000000100")
    assert list(archive.iterdir()) == []


def test_restore_names_a_missing_or_partial_segment(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    _segment(archive, size=5000)
    target = tmp_path / "RECOVERYXLOG"
    assert archive_wal.restore(archive, SEGMENT, target, 65536) == 1
    assert not target.exists()
    assert archive_wal.restore(archive, "000000010000000000000008", target, 65536) == 1
    assert archive_wal.restore(archive, SEGMENT, target, 5000) == 0
    assert target.stat().st_size == 5000


def test_restore_reports_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = tmp_path / "archive"
    _segment(archive, size=5000)
    archive_wal.restore(archive, SEGMENT, tmp_path / "x", 65536)
    archive_wal.restore(archive, "000000010000000000000008", tmp_path / "x", 65536)
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "branchline-archive: 000000010000000000000007 in the archive is partial "
        "(5000 of 65536 bytes)",
        "branchline-archive: 000000010000000000000008 is not in the archive",
    ]


def test_the_archive_command_survives_hostile_paths_through_the_shell(tmp_path: Path) -> None:
    """Postgres runs archive_command with /bin/sh: our paths are quoted, nothing in
    them is run, and %p / %f are the only things Postgres fills in."""
    odd = tmp_path / "it's $(touch pwned) `x`"
    archive = odd / "production"
    archive.mkdir(parents=True)
    script = archiver.install_script(odd)
    command = archiver.archive_command(script, archive, RunAs())
    assert command.endswith(f" %p %f {archiver.KEEP_FOR_WAL}") and " -I " in command
    source = _segment(tmp_path / "pg_wal")
    line = command.replace("%p", str(source)).replace("%f", SEGMENT)
    done = subprocess.run(["/bin/sh", "-c", line], cwd=tmp_path, capture_output=True,
                          text=True, check=False, timeout=30)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (archive / SEGMENT).read_bytes() == source.read_bytes()
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


def test_the_interpreter_is_one_the_postgres_user_can_run(tmp_path: Path) -> None:
    """Root's own Python may sit under /root (0700): the cluster's user gets the
    system's instead; one it cannot reach is never chosen."""
    nobody = RunAs(uid=65534, gid=65534, name="nobody")
    chosen = Path(archiver.python(nobody))
    assert archiver._runnable(nobody, chosen)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (private / "python3").write_bytes(b"")
    (private / "python3").chmod(0o755)
    assert not archiver._runnable(nobody, private / "python3")


def test_segment_names_and_gaps(tmp_path: Path) -> None:
    assert archiver.next_segment("0000000100000000000000FE") == "0000000100000000000000FF"
    assert archiver.next_segment("0000000100000000000000FF") == "000000010000000100000000"
    size = 1024
    for name in ("000000010000000000000001", "000000010000000000000002"):
        (tmp_path / name).write_bytes(b"x" * size)
    (tmp_path / "000000010000000000000003").write_bytes(b"x" * 100)
    first, last = "000000010000000000000001", "000000010000000000000004"
    assert archiver.first_problem(tmp_path, first, "000000010000000000000002", size) is None
    problem = archiver.first_problem(tmp_path, first, last, size)
    assert problem == (
        "000000010000000000000003",
        "the archive holds only 100 of its 1024 bytes (a partial copy)",
    )
    (tmp_path / "000000010000000000000003").write_bytes(b"x" * size)
    assert archiver.first_problem(tmp_path, first, last, size) == (
        "000000010000000000000004",
        "it is not in the archive",
    )
    assert archiver.partial_segments(tmp_path, size) == []


def test_a_disk_that_fills_half_way_is_named_as_such(tmp_path: Path) -> None:
    disk = Disk(tmp_path, Cluster(tmp_path / "production"), tmp_path / "archive",
                tmp_path / "backups", None)  # fmt: skip
    tool = PostgresError(
        "pg_basebackup failed for /x (exit 1)",
        hint='pg_basebackup: error: could not write to file "x": No space left on device',
    )
    with pytest.raises(space.DiskFullError) as caught:
        raise_if_disk_full(tool, disk, "create branch 'pr-3'")
    assert caught.value.message.startswith("the disk filled while trying to create branch 'pr-3'")
    assert "what was half made has been removed" in caught.value.message
    assert caught.value.__cause__ is tool
    raise_if_disk_full(PostgresError("pg_basebackup failed", hint="timeout"), disk, "x")
