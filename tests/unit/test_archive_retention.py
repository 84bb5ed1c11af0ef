"""Retention of production's restore history without clusters: the settings
`wal_retention` and `max_archive_size`, their errors, which backups age keeps, when
a fresh backup is worth taking, and the clone estimate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from branchline.config.sizes import SizeSpec
from branchline.errors import ConfigError
from branchline.postgres import space
from branchline.postgres.copy import BaseBackup
from branchline.providers.database.local_retention import (
    DEFAULT_LIMIT,
    ArchiveUsage,
    fresh_backup_helps,
    kept_by_age,
)
from tests.unit.test_config import BASE, load

MB = 1024**2
GB = 1024**3
NOW = datetime(2026, 12, 4, 12, tzinfo=UTC)


def test_the_defaults(tmp_path: Path) -> None:
    local = load(tmp_path, BASE).database.local
    assert local.wal_retention == timedelta(days=7)
    assert local.archive_limit is None  # the provider's default: 10% of the filesystem
    assert SizeSpec(fraction=0.10) == DEFAULT_LIMIT


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('"3d"', timedelta(days=3)),
        ('"12h"', timedelta(hours=12)),
        ("3600", timedelta(hours=1)),
        ('"0s"', timedelta(0)),
    ],
)
def test_wal_retention_is_a_duration(tmp_path: Path, text: str, expected: timedelta) -> None:
    config = load(tmp_path, BASE + f"\n[database.local]\nwal_retention = {text}\n")
    assert config.database.local.wal_retention == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('"4GB"', SizeSpec(bytes=4 * GB)),
        ('"10%"', SizeSpec(fraction=0.1)),
        ("1073741824", SizeSpec(bytes=GB)),
    ],
)
def test_max_archive_size_is_a_size_or_a_share(
    tmp_path: Path, text: str, expected: SizeSpec
) -> None:
    config = load(tmp_path, BASE + f"\n[database.local]\nmax_archive_size = {text}\n")
    assert config.database.local.archive_limit == expected


@pytest.mark.parametrize("text", ['"a week"', '"-1d"', '"7 days"', "true"])
def test_a_bad_wal_retention_says_what_to_write(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, BASE + f"\n[database.local]\nwal_retention = {text}\n")
    assert "wal_retention" in caught.value.message
    assert "duration" in caught.value.message


@pytest.mark.parametrize(
    ("text", "said", "hint"),
    [
        ('"lots"', "not a size", "a size such as"),
        ('"150%"', "more than the whole disk", "10%"),
        ('"0GB"', "no room for even one base backup", "4GB"),
        ("0", "no room", "4GB"),
    ],
)
def test_a_bad_max_archive_size_says_what_to_write(
    tmp_path: Path, text: str, said: str, hint: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, BASE + f"\n[database.local]\nmax_archive_size = {text}\n")
    assert "max_archive_size" in caught.value.message and said in caught.value.message
    assert hint in caught.value.hint


def test_the_provider_is_given_the_settings(tmp_path: Path) -> None:
    from branchline.providers.database.local import LocalDatabaseProvider
    from branchline.providers.registry import database_provider
    from branchline.store import Store
    from branchline.store.state import StateLocation

    config = load(
        tmp_path,
        BASE + '\n[database.local]\nwal_retention = "2d"\nmax_archive_size = "3GB"\n',
    )
    provider = database_provider(config, Store(StateLocation(tmp_path / "state")))
    assert isinstance(provider, LocalDatabaseProvider)
    assert provider.retention.age == timedelta(days=2)
    assert provider.retention.size == SizeSpec(bytes=3 * GB)


def _backup(hours_ago: float) -> BaseBackup:
    end = NOW - timedelta(hours=hours_ago)
    return BaseBackup(Path(f"/b/{hours_ago}"), "0" * 24, start_time=end, end_time=end)


def test_age_keeps_the_backup_a_restore_to_the_oldest_kept_moment_starts_from() -> None:
    backups = [_backup(h) for h in (240, 200, 170, 100, 30, 1)]  # oldest first
    # 7 days back is 168 h: the one of 170 h ago is where a restore to then starts.
    assert kept_by_age(backups, NOW, timedelta(days=7)) == 2
    assert kept_by_age(backups, NOW, timedelta(days=30)) == 0
    assert kept_by_age(backups, NOW, timedelta(0)) == 5  # always the newest
    assert kept_by_age(backups[-1:], NOW, timedelta(0)) == 0


def _usage(wal: int, backup: int, limit: int) -> ArchiveUsage:
    return ArchiveUsage(wal, backup, limit, 1, NOW)


def test_a_fresh_backup_is_taken_only_where_it_shrinks_the_archive() -> None:
    # 3 GB of WAL after a 100 MB backup, limit 1 GB: a fresh backup leaves ~130 MB.
    assert fresh_backup_helps(100 * MB, _usage(3 * GB, 100 * MB, GB))
    # Little WAL: a fresh backup would take what it frees.
    assert not fresh_backup_helps(100 * MB, _usage(20 * MB, 100 * MB, 110 * MB))
    # The data alone is over the limit: only when it frees at least half.
    assert not fresh_backup_helps(2 * GB, _usage(GB, 2 * GB, GB))
    assert fresh_backup_helps(2 * GB, _usage(3 * GB, 2 * GB, GB))


def test_the_usage_is_reported_against_its_limit() -> None:
    usage = _usage(3 * GB, GB, 4 * GB - 1)
    assert usage.over and usage.total == 4 * GB
    shown = usage.as_dict()
    assert shown["bytes"] == 4 * GB and shown["limit_bytes"] == 4 * GB - 1
    assert shown["oldest_restorable"] == NOW.isoformat()
    assert usage.describe() == "4.0 GB of 4.0 GB"


def test_a_clone_is_estimated_at_its_metadata_and_a_few_segments(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for d in range(3):
        (data / "base" / str(d)).mkdir(parents=True)
        for i in range(10):
            (data / "base" / str(d) / str(i)).write_bytes(b"x" * 100_000)
    files = 1 + 3 + 30  # base/, its three directories and their files
    assert space.file_count(data) == files
    estimate = space.clone_estimate(data)
    assert estimate == files * space.CLONE_FILE_COST + 6 * space.WAL_SEGMENT
    assert estimate < space.copy_estimate(data)


def _storage() -> dict[str, object]:
    usage = ArchiveUsage(3 * GB, GB, 8 * GB, 2, NOW)
    return {
        "disk": {
            "path": "/srv",
            "total_bytes": 80 * GB,
            "free_bytes": 40 * GB,
            "reserve_bytes": GB,
        },
        "archive": None,
        "history": usage.as_dict(),
    }


def test_status_and_metrics_show_the_archive_against_its_limit() -> None:
    from rich.console import Console

    from branchline.cli.status import _render_storage
    from branchline.server.metrics import storage_lines

    metrics = storage_lines(_storage())
    assert f"branchline_wal_archive_size_bytes {4 * GB}" in metrics
    assert f"branchline_wal_archive_limit_bytes {8 * GB}" in metrics
    console = Console(record=True, width=200)
    _render_storage(console, _storage())
    shown = console.export_text()
    assert "4.0 GB of 8.0 GB" in shown and "max_archive_size" in shown
    assert f"restorable from {NOW.isoformat()}" in shown


def test_gc_says_what_was_pruned_and_where_the_archive_stands() -> None:
    from branchline.cli.db import _archive_line

    line = _archive_line(ArchiveUsage(3 * GB, GB, 8 * GB, 2, NOW).as_dict())
    assert line.startswith("4.0 GB of 8.0 GB (max_archive_size), 2 base backup(s)")
    assert line.endswith(f"restorable from {NOW.isoformat()}")
