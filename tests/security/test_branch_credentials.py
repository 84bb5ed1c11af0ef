"""A branch's DATABASE_URL opens its own database and nothing else: not production,
not another branch, not the state database; and its role cannot run programs on
the server or make itself a superuser."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from branchline.postgres import Cluster
from tests.conftest import run_cli

CONFIG = """\
[project]
name = "shop"
zone = "shop.localhost"

[database]
migrate = "true"
"""


@pytest.fixture
def project(tmp_path: Path, state_dir: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    (tmp_path / "branchline.toml").write_text(CONFIG)
    env = {"BRANCHLINE_STATE_DIR": str(state_dir)}
    result = run_cli("db", "init", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    yield tmp_path, env


def url(project: tuple[Path, dict[str, str]], branch: str) -> str:
    root, env = project
    result = run_cli("--json", "db", "url", branch, cwd=root, env=env)
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["uri"])


def refused(conninfo: str) -> str:
    """The server's refusal: a login that succeeds fails the test."""
    with pytest.raises(psycopg.OperationalError) as caught:
        psycopg.connect(conninfo, connect_timeout=5).close()
    return str(caught.value)


def test_a_preview_url_opens_only_its_own_branch(
    project: tuple[Path, dict[str, str]], state_dir: Path
) -> None:
    root, env = project
    for name in ("pr-8", "pr-9"):
        created = run_cli("db", "branches", "create", name, cwd=root, env=env)
        assert created.returncode == 0, created.stderr
    preview, other, production = (
        url(project, "pr-8"),
        url(project, "pr-9"),
        url(project, "production"),
    )
    mine = conninfo_to_dict(preview)
    assert mine["user"] == "app"  # the application role, never the superuser
    with psycopg.connect(preview) as conn:
        conn.execute("CREATE TABLE mine (id int)")  # it owns its database
    # The same credentials against production, another branch, the state database.
    for target in (production, other):
        port = urlsplit(target).port
        assert "password authentication failed" in refused(make_conninfo(preview, port=port))
    state = Cluster(state_dir / "postgres").meta()
    for database in ("postgres", "branchline"):
        failed = refused(make_conninfo(preview, port=state.port, dbname=database))
        assert "password authentication failed" in failed or "does not exist" in failed
    # Every cluster has passwords of its own: none shares its superuser's with another.
    homes = sorted((state_dir / "projects" / "shop" / "branches").iterdir())
    passwords = {Cluster(home).meta().password for home in homes}
    apps = {Cluster(home).meta().app_password for home in homes}
    assert len(passwords) == len(homes) == len(apps) == 3
    assert mine["password"] not in passwords


def test_the_application_role_cannot_escape_its_database(
    project: tuple[Path, dict[str, str]],
) -> None:
    root, env = project
    assert run_cli("db", "branches", "create", "pr-8", cwd=root, env=env).returncode == 0
    with psycopg.connect(url(project, "pr-8"), autocommit=True) as conn:
        for attack in (
            "COPY (SELECT 1) TO PROGRAM 'id'",
            "SELECT pg_read_file('/etc/passwd')",
            "CREATE ROLE intruder SUPERUSER LOGIN PASSWORD 'x'",
            "ALTER ROLE app SUPERUSER",
            "CREATE DATABASE other",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(attack)
        with pytest.raises(psycopg.OperationalError):
            # The maintenance database is branchline's.
            psycopg.connect(make_conninfo(url(project, "pr-8"), dbname="postgres")).close()


def test_no_login_without_a_password_anywhere(
    project: tuple[Path, dict[str, str]], state_dir: Path
) -> None:
    assert project  # a root branch exists, and the state database
    homes = [*(state_dir / "projects" / "shop" / "branches").iterdir(), state_dir / "postgres"]
    for home in homes:
        hba = (Cluster(home).data_dir / "pg_hba.conf").read_text().splitlines()
        rules = [line.split() for line in hba if line.strip() and not line.startswith("#")]
        assert rules and all(rule[-1] == "scram-sha-256" for rule in rules), (home, rules)
