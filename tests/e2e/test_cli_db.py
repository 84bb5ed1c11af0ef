"""`branchline db` end to end: the real command, real clusters, a real migrate tool."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from branchline.postgres import reflink
from tests.conftest import run_cli

CONFIG = """\
[project]
name = "shop"
zone = "shop.localhost"

[database]
migrate = [{python}, "migrate.py"]

[services.api]
path = "api"
run = "python -m api"
"""

# A tiny migration tool with a journal table, like most real ones.
MIGRATE_PY = """\
import os, pathlib, psycopg
with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
    conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version text PRIMARY KEY)")
    done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
    for path in sorted(pathlib.Path("migrations").glob("*.sql")):
        if path.stem in done:
            continue
        print("applying", path.stem, flush=True)
        with conn.transaction():
            conn.execute(path.read_text())
            conn.execute("INSERT INTO schema_migrations VALUES (%s)", (path.stem,))
"""


@pytest.fixture
def project(tmp_path: Path, state_dir: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    (tmp_path / "api").mkdir()
    (tmp_path / "migrations").mkdir()
    # The migrate tool runs with this interpreter, which has psycopg.
    (tmp_path / "branchline.toml").write_text(CONFIG.format(python=json.dumps(sys.executable)))
    (tmp_path / "migrate.py").write_text(MIGRATE_PY)
    (tmp_path / "migrations" / "001_products.sql").write_text(
        "CREATE TABLE products (id serial PRIMARY KEY, name text NOT NULL);"
    )
    env = {"BRANCHLINE_STATE_DIR": str(state_dir)}
    result = run_cli("db", "init", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    yield tmp_path, env


def cli_json(project: tuple[Path, dict[str, str]], *args: str) -> object:
    root, env = project
    result = run_cli("--json", *args, cwd=root, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_branch_lifecycle_through_the_cli(project: tuple[Path, dict[str, str]]) -> None:
    root, env = project
    state = Path(env["BRANCHLINE_STATE_DIR"])
    method = "clone" if reflink.can_clone(state / "probe") else "copy"
    spares = next(state.glob("projects/*/spares"), None) if method == "copy" else None
    if spares is not None:  # `db gc` prepares a spare, `db init` no longer waits for one
        assert not (spares / "production.next").exists()
    cli_json(project, "db", "gc")
    created = cli_json(project, "db", "branches", "create", "pr-8", "--expires", "2h")
    assert isinstance(created, dict)
    assert created["name"] == "pr-8" and created["parent"] == "production"
    assert created["expires_at"] is not None and created["status"] == "ready"
    assert created["detail"]["made_by"] == {"copy": "spare", "clone": "clone"}[method]
    # The command returned when its branch was ready: it refilled no spare on the way.
    assert not list(state.glob("projects/*/spares/production.next"))
    again = cli_json(project, "db", "branches", "create", "pr-8")
    assert isinstance(again, dict) and again["port"] == created["port"]
    listed = cli_json(project, "db", "branches", "list")
    assert isinstance(listed, list)
    assert [b["name"] for b in listed] == ["production", "pr-8"]
    human = run_cli("db", "branches", "list", cwd=root, env=env)
    assert "pr-8" in human.stdout and "production" in human.stdout
    assert f"new branches are made by: {method}" in human.stdout
    status = cli_json(project, "status")
    assert isinstance(status, dict) and status["storage"]["branching"] == method
    url = cli_json(project, "db", "url", "pr-8")
    assert isinstance(url, dict)
    with psycopg.connect(str(url["uri"])) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("app",)
    assert cli_json(project, "db", "branches", "delete", "pr-8") == {
        "name": "pr-8",
        "deleted": True,
    }
    gone = cli_json(project, "db", "branches", "delete", "pr-8")
    assert gone == {"name": "pr-8", "deleted": False}


def test_hostile_name_is_refused_with_exit_2(project: tuple[Path, dict[str, str]]) -> None:
    root, env = project
    result = run_cli("db", "branches", "create", "pr-8'; DROP TABLE x;--", cwd=root, env=env)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "hint: " in result.stderr
    assert "Traceback" not in result.stderr


def test_migrate_diff_and_preflight(project: tuple[Path, dict[str, str]]) -> None:
    root, env = project
    cli_json(project, "db", "branches", "create", "pr-9")
    migrated = run_cli("db", "migrate", "pr-9", cwd=root, env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert "applying 001_products" in migrated.stdout
    listed = cli_json(project, "db", "branches", "list")
    assert isinstance(listed, list)
    pr9 = next(b for b in listed if b["name"] == "pr-9")
    assert pr9["detail"]["migrations"] == ["001_products"]
    assert len(pr9["detail"]["schema_fingerprint"]) == 64

    diff = cli_json(project, "db", "diff", "production", "pr-9")
    assert isinstance(diff, dict)
    assert "public.products" in diff["changes"]["tables_added"]
    assert "+CREATE TABLE public.products" in diff["diff"]

    good = cli_json(project, "db", "preflight")
    assert isinstance(good, dict) and good["ok"] is True
    assert "public.products" in good["schema_changes"]["tables_added"]

    # A breaking migration: preflight fails, names the statement, production untouched.
    cli_json(project, "db", "migrate", "production")
    (root / "migrations" / "002_bad.sql").write_text(
        "ALTER TABLE products ADD COLUMN price int NOT NULL DEFAULT 0;\n"
        "ALTER TABLE products ADD CONSTRAINT positive CHECK (price > 0);"
    )
    url = cli_json(project, "db", "url", "production")
    assert isinstance(url, dict)
    with psycopg.connect(str(url["uri"]), autocommit=True) as conn:
        conn.execute("INSERT INTO products (name) VALUES ('widget')")
    bad = run_cli("db", "preflight", cwd=root, env=env)
    assert bad.returncode == 1
    assert "check constraint" in bad.stderr and "ALTER TABLE products ADD CONSTRAINT" in bad.stderr
    with psycopg.connect(str(url["uri"])) as conn:
        columns = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'products'"
        ).fetchall()
    assert {c[0] for c in columns} == {"id", "name"}
    listed = cli_json(project, "db", "branches", "list")
    assert isinstance(listed, list)
    assert not [b for b in listed if b["name"].startswith("preflight-")]


def test_restore_to_a_moment_through_the_cli(project: tuple[Path, dict[str, str]]) -> None:
    root, env = project
    url = cli_json(project, "db", "url", "production")
    assert isinstance(url, dict)
    with psycopg.connect(str(url["uri"]), autocommit=True) as conn:
        conn.execute("CREATE TABLE ledger (amount int)")
        conn.execute("INSERT INTO ledger VALUES (10), (20)")
        time.sleep(0.2)
        (moment,) = conn.execute("SELECT now()").fetchone()  # type: ignore[misc]
        time.sleep(0.2)
        conn.execute("DELETE FROM ledger")
    restored = cli_json(project, "db", "restore", "--to", moment.isoformat(), "--name", "rescue-1")
    assert isinstance(restored, dict) and restored["name"] == "rescue-1"
    rescue = cli_json(project, "db", "url", "rescue-1")
    assert isinstance(rescue, dict)
    with psycopg.connect(str(rescue["uri"])) as conn:
        assert conn.execute("SELECT sum(amount) FROM ledger").fetchone() == (30,)
    bad = run_cli("db", "restore", "--to", "a while back", cwd=root, env=env)
    assert bad.returncode == 2 and "minutes ago" in bad.stderr


def test_gc_through_the_cli(project: tuple[Path, dict[str, str]]) -> None:
    report = cli_json(project, "db", "gc")
    assert isinstance(report, dict)
    assert report["expired_deleted"] == [] and report["orphan_clusters_removed"] == []
