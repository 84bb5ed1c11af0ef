"""Data choices through the real pipelines (clusters, sandboxed commands, services
behind the edge), with tests/apps/accounts.py, an app with users and sessions:

- its suite makes the first superuser: it passes on `data = "schema"` while
  production has a user already, and fails on a copy of production;
- a masked preview holds no production e-mail address anywhere (every column of
  every table, the planner's statistics), accepts no production password or
  session, though the PR's migration copies the addresses as soon as it runs;
- the seed runs after the PR's migration, once; predestroy runs before teardown.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from branchline import migrations
from branchline.edge import daemon
from branchline.kit import Kit
from branchline.store import runs as run_rows
from tests.codex_project import NOTHING, commit_on, git, leftovers
from tests.conftest import TESTS, eventually
from tests.integration.test_branch_data import leaks
from tests.integration.test_pipelines import pipelines, runs_of, story

pytestmark = pytest.mark.integration

PEOPLE = {"alice@corp.example": "alice-password", "bob@corp.example": "bob-password"}
CONFIG = """
[project]
name = "accounts"
zone = "accounts.localhost"

[database]
migrate = ["python", "accounts.py", "migrate"]

[security]
# Declared, not inherited: the app's `python` is the tests' own, which has psycopg.
path = [{python_bin}, "/usr/bin", "/bin"]

[services.web]
path = "."
run = ["python", "accounts.py", "serve"]
health_path = "/health"
"""
USERS = """
CREATE TABLE users (id serial PRIMARY KEY, email text UNIQUE NOT NULL, password_hash text,
                    is_superuser boolean NOT NULL DEFAULT false);
CREATE TABLE sessions (token text PRIMARY KEY, user_id int NOT NULL REFERENCES users);
"""
# The pull request's migration copies every address the moment it runs: had the
# masking come after it, the copies would hold production's.
FEATURE_MIGRATION = """
ALTER TABLE users ADD COLUMN nickname text;
CREATE TABLE mailing AS SELECT email FROM users;
"""
FIRST_SUPERUSER = """
[tests.first-superuser]
command = ["python", "accounts.py", "first-superuser"]
database = true
data = "schema"

[tests.on-a-copy]
command = ["python", "accounts.py", "first-superuser"]
database = true
own_branch = true
"""
SEEDED_AND_FRESH = """
[tests.seeded]
command = ["python", "accounts.py", "expect-users", "demo@example.invalid"]
database = true
data = "seed"
seed = ["python", "accounts.py", "seed"]

[tests.fresh]
command = ["python", "accounts.py", "expect-users"]
database = true
own_branch = true
data = "empty"
"""
PREVIEW = """
[database.mask]
"users.email" = "email"
"users.password_hash" = "null"
"sessions" = "truncate"

[preview]
data = "copy"
seed = ["python", "accounts.py", "seed"]
predestroy = ["python", "accounts.py", "predestroy"]

[tests.quick]
command = ["python", "-c", "print('quick test ok')"]
"""


def make_accounts(dest: Path, config: str) -> Path:
    dest.mkdir(parents=True)
    shutil.copy(TESTS / "apps" / "accounts.py", dest / "accounts.py")
    (dest / "migrations").mkdir()
    (dest / "migrations" / "001_users.sql").write_text(USERS)
    python_bin = json.dumps(str(Path(sys.executable).parent))
    (dest / "branchline.toml").write_text(CONFIG.replace("{python_bin}", python_bin) + config)
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", ".")
    git(dest, "commit", "-qm", "accounts")
    return dest


@pytest.fixture
def environ(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("BRANCHLINE_STATE_DIR", str(state_dir))
    try:
        yield state_dir
    finally:
        daemon.stop(state_dir)


async def production_with_users(kit: Kit) -> None:
    """Production migrated, with users who can sign in and a live session each."""
    result = await migrations.migrate(kit.config, kit.database, "production", sandbox=kit.sandbox)
    assert result.ok, result.output_tail
    url = await kit.database.connection_uri("production")
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for email, password in PEOPLE.items():
            digest = hashlib.sha256(password.encode()).hexdigest()
            await conn.execute(
                "INSERT INTO users (email, password_hash, is_superuser) VALUES (%s, %s, true)",
                (email, digest),
            )
        await conn.execute("INSERT INTO sessions SELECT 'prod-token-' || id, id FROM users")
        await conn.execute("ANALYZE")  # its statistics sample the addresses


async def job_logs(kit: Kit, run_id: int) -> dict[str, str]:
    """Each job's log of a run, by job name."""
    async with kit.store.connect() as conn:
        names = {job.id: job.name for job in await run_rows.jobs_of(conn, run_id)}
        chunks = await run_rows.logs_after(conn, run_id, 0, limit=100_000)
    logs: dict[str, str] = {}
    for chunk in chunks:
        name = names.get(chunk.job_id, "") if chunk.job_id is not None else ""
        logs[name] = logs.get(name, "") + chunk.content + "\n"
    return logs


def get(port: int, host: str, path: str) -> tuple[int, object]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read() or b"null")


def test_first_superuser_passes_on_the_schema_and_fails_on_a_copy(
    environ: Path, tmp_path: Path
) -> None:
    root = make_accounts(tmp_path / "accounts", FIRST_SUPERUSER)
    commit_on(root, "feature", {"README": "a change\n"}, "a change")

    async def test() -> None:
        async with pipelines(root) as p:
            await production_with_users(p.kit)
            await p.kit.forge.open_pr("feature")
            await p.run_until_settled()
            testing = (await runs_of(p.kit))["testing"][-1]
            async with p.kit.store.connect() as conn:
                jobs = {j.name: j.status for j in await run_rows.jobs_of(conn, testing.id)}
            assert jobs["first-superuser"] == "success", await job_logs(p.kit, testing.id)
            assert jobs["on-a-copy"] == "failure", jobs
            logs = await job_logs(p.kit, testing.id)
            # A clean slate: no row, and the sequences start again (the first user is #1).
            assert "superuser #1 created" in logs["first-superuser"]
            assert "holds production's schema, no rows" in logs["database"]
            assert "FAILED: 2 users exist already" in logs["on-a-copy"]
            # Production still has its users; the test branches are gone.
            url = await p.kit.database.connection_uri("production")
            async with await psycopg.AsyncConnection.connect(url) as conn:
                cur = await conn.execute("SELECT count(*) FROM users")
                assert await cur.fetchone() == (2,)
            assert {b.name for b in await p.kit.database.list_branches()} == {"production"}

    asyncio.run(test())


def test_test_jobs_on_a_seeded_branch_and_on_a_fresh_database(
    environ: Path, tmp_path: Path
) -> None:
    root = make_accounts(tmp_path / "accounts", SEEDED_AND_FRESH)
    commit_on(root, "feature", {"migrations/002_nickname.sql": FEATURE_MIGRATION}, "nicknames")

    async def test() -> None:
        async with pipelines(root) as p:
            await production_with_users(p.kit)
            await p.kit.forge.open_pr("feature")
            await p.run_until_settled()
            testing = (await runs_of(p.kit))["testing"][-1]
            assert testing.status == "success", await story(p.kit)
            logs = await job_logs(p.kit, testing.id)
            # Production's schema (its journal says 001 is applied), the PR's
            # migration, then the seed (which sets the column that migration adds).
            database = logs["database"]
            assert "holds production's schema, no rows" in database
            assert "applied 001_users.sql" not in database
            assert database.index("applied 002_nickname.sql") < database.index("seeded: demo@")
            assert "the users are ['demo@example.invalid'], as expected" in logs["seeded"]
            # A fresh database: every migration runs, from the first.
            fresh = logs["fresh"]
            assert "holds a fresh database" in fresh
            assert fresh.index("applied 001_users.sql") < fresh.index("applied 002_nickname.sql")
            assert "the users are [], as expected" in fresh

    asyncio.run(test())


def test_a_masked_preview_seeded_once_and_predestroyed(environ: Path, tmp_path: Path) -> None:
    root = make_accounts(tmp_path / "accounts", PREVIEW)
    commit_on(root, "feature", {"migrations/002_nickname.sql": FEATURE_MIGRATION}, "nicknames")
    host = "web-preview-1.accounts.localhost"

    async def test() -> None:
        async with pipelines(root) as p:
            kit = p.kit
            await production_with_users(kit)
            await kit.forge.open_pr("feature")
            await p.run_until_settled()
            assert [r.status for r in (await runs_of(kit)).get("preview", [])] == ["success"], (
                await story(kit)
            )
            assert kit.edge_port is not None
            port = kit.edge_port
            users = eventually(lambda: get(port, host, "/users")[1] or None)
            assert users == ["user-1@example.invalid", "user-2@example.invalid",
                             "demo@example.invalid"]  # fmt: skip

            # No production address anywhere a preview's code could read one, though
            # the PR's migration copied them into `mailing` when it ran.
            url = await kit.database.connection_uri("pr-1")
            assert await asyncio.to_thread(leaks, url, list(PEOPLE)) == []
            mailing = await asyncio.to_thread(leaks, url, ["user-1@example.invalid"])
            assert "mailing: user-1@example.invalid" in mailing
            # No production credential works: neither a password, nor a session.
            for email, password in PEOPLE.items():
                assert get(port, host, f"/login?email={email}&password={password}")[0] == 403
            alice = PEOPLE["alice@corp.example"]
            assert (
                get(port, host, f"/login?email=user-1@example.invalid&password={alice}")[0] == 403
            )
            assert get(port, host, "/me?token=prod-token-1")[0] == 403
            # The seeded user can sign in (the check above is not vacuous).
            assert get(port, host, "/login?email=demo@example.invalid&password=demo")[0] == 200

            # The seed ran after the PR's migration (it sets the column that adds).
            preview_run = (await runs_of(kit))["preview"][-1].id
            log = (await job_logs(kit, preview_run))["preview"]
            assert log.index("applied 002_nickname.sql") < log.index("seeded: demo@example.invalid")
            assert 'masked: "users.email" = "email"' in log
            async with await psycopg.AsyncConnection.connect(url) as conn:
                cur = await conn.execute("SELECT nickname FROM users WHERE email LIKE 'demo@%'")
                assert await cur.fetchall() == [("demo",)]

            # A new commit migrates again but does not seed again.
            note = {"migrations/003_note.sql": "ALTER TABLE users ADD COLUMN note text;\n"}
            commit_on(root, "feature", note, "a note")
            await kit.forge.sync_pr(1)
            await p.run_until_settled()
            assert [r.status for r in (await runs_of(kit))["preview"]] == ["success", "success"]
            log = (await job_logs(kit, (await runs_of(kit))["preview"][-1].id))["preview"]
            assert "applied 003_note.sql" in log and "was seeded at" in log
            assert "seeded: demo" not in log
            async with await psycopg.AsyncConnection.connect(url) as conn:
                cur = await conn.execute("SELECT count(*) FROM users WHERE nickname = 'demo'")
                assert await cur.fetchone() == (1,)

            # Closing: predestroy reads the preview's database before anything goes.
            await kit.forge.close_pr(1)
            await p.run_until_settled()
            cleanup = (await runs_of(kit))["cleanup"][-1]
            assert cleanup.status == "success"
            log = (await job_logs(kit, cleanup.id))["cleanup"]
            said = log.index("predestroy: 3 users in the preview's database")
            assert said < log.index("removed services: web")
            assert said < log.index("removed branches: pr-1")
            assert await leftovers(kit, 1) == NOTHING

    asyncio.run(test())
