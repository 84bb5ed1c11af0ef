"""Which Postgres binaries branchline picks, and what it says when there are none."""

from __future__ import annotations

from pathlib import Path

import pytest

from branchline.errors import PostgresNotFoundError
from branchline.postgres import binaries
from branchline.postgres.binaries import REQUIRED, find_binaries


def _bindir(path: Path, names: tuple[str, ...] = REQUIRED) -> Path:
    path.mkdir(parents=True)
    for name in names:
        exe = path / name
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    return path


def test_env_variable_wins(tmp_path: Path) -> None:
    bindir = _bindir(tmp_path / "bin")
    found = find_binaries({"BRANCHLINE_PG_BIN": str(bindir)})
    assert found.bindir == bindir and found.source == "env"


def test_incomplete_env_directory_is_an_error_naming_what_lacks(tmp_path: Path) -> None:
    bindir = _bindir(tmp_path / "bin", ("initdb", "pg_ctl"))
    with pytest.raises(PostgresNotFoundError) as info:
        find_binaries({"BRANCHLINE_PG_BIN": str(bindir)})
    assert "postgres" in info.value.message and "pg_basebackup" in info.value.message
    assert "BRANCHLINE_PG_BIN" in info.value.hint


def test_pg_config_before_pgserver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = _bindir(tmp_path / "system")
    wheel = _bindir(tmp_path / "wheel")
    monkeypatch.setattr(binaries, "_from_pg_config", lambda: system)
    monkeypatch.setattr(binaries, "_from_pgserver", lambda: wheel)
    assert find_binaries({}).source == "pg_config"
    monkeypatch.setattr(binaries, "_from_pg_config", lambda: None)
    found = find_binaries({})
    assert (found.bindir, found.source) == (wheel, "pgserver")


def test_nothing_found_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(binaries, "_from_pg_config", lambda: None)
    monkeypatch.setattr(binaries, "_from_pgserver", lambda: None)
    with pytest.raises(PostgresNotFoundError) as info:
        find_binaries({})
    assert info.value.exit_code == 2
    assert "embedded-pg" in info.value.hint and "BRANCHLINE_PG_BIN" in info.value.hint


def test_real_binaries_report_a_version() -> None:
    major, _ = find_binaries().version
    assert major >= 13
