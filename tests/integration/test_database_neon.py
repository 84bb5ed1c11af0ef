"""The Neon provider's own rules, on the fake Neon (real clusters behind Neon's API,
every exchange checked against Neon's OpenAPI document): a password of its own per
branch, data choices, what gc may and may not delete, a create that finds its branch
already made, Neon's 423/429 and branch limit, refused keys and unknown projects."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from branchline.branchdata import DataPlan
from branchline.errors import UsageError
from branchline.fakes.neon import FakeNeon
from branchline.providers.database import SchemaComparer, schema_diff
from branchline.providers.database.neon import OWNER_KEY, NeonDatabaseProvider
from branchline.providers.database.neon_api import NeonClient, NeonError
from branchline.store import Store
from tests.conftest import new_state_dir, run_cli

T = TypeVar("T")
KEY = "neon-test-key"


@pytest.fixture(scope="module")
def fake(cluster_root: Path) -> Iterator[FakeNeon]:
    state = new_state_dir(cluster_root)
    neon = FakeNeon.start(state, api_key=KEY)
    try:
        yield neon
        assert neon.calls()["validation_failures"] == {"request": 0, "response": 0}
    finally:
        neon.stop()
        shutil.rmtree(state, ignore_errors=True)


def provider_on(
    fake: FakeNeon, store: Store, *, key: str = KEY, project: str | None = None
) -> NeonDatabaseProvider:
    client = NeonClient(base_url=fake.url, api_key=key, project_id=project or fake.project_id)
    return NeonDatabaseProvider(
        project=f"neon{os.urandom(3).hex()}", store=store, client=client, operation_timeout=60
    )


@pytest.fixture
def db(fake: FakeNeon, shared_store: Store) -> Iterator[NeonDatabaseProvider]:
    provider = provider_on(fake, shared_store)
    run(provider, provider.init_root())
    try:
        yield provider
    finally:
        for branch in run(provider, provider.list_branches()):
            if branch.name != provider.root:
                run(provider, provider.delete_branch(branch.name))


def run(db: NeonDatabaseProvider, work: Coroutine[Any, Any, T]) -> T:
    async def main() -> T:
        try:
            return await work
        finally:
            await db.aclose()

    return asyncio.run(main())


def sql(uri: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(uri, autocommit=True, connect_timeout=10) as conn:
        cur = conn.execute(query)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def with_password(uri: str, password: str) -> str:
    parts = urlsplit(uri)
    netloc = f"{parts.username}:{password}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def test_a_branch_has_a_password_of_its_own(db: NeonDatabaseProvider) -> None:
    production = run(db, db.connection_uri(db.root))
    sql(production, "CREATE TABLE IF NOT EXISTS secret_rows (v text)")
    run(db, db.create_branch("pw-1"))
    branch = run(db, db.connection_uri("pw-1"))
    assert urlsplit(branch).password != urlsplit(production).password
    # The branch's password opens its own database, not production's.
    assert sql(branch, "SELECT 1") == [(1,)]
    with pytest.raises(psycopg.OperationalError):
        sql(with_password(production, urlsplit(branch).password or ""), "SELECT 1")


def test_data_choices_schema_only_and_empty(db: NeonDatabaseProvider) -> None:
    production = run(db, db.connection_uri(db.root))
    sql(production, "CREATE TABLE IF NOT EXISTS kept (v text)")
    sql(production, "INSERT INTO kept VALUES ('row')")
    run(db, db.create_branch("schema-1", data=DataPlan(data="schema")))
    schema_only = run(db, db.connection_uri("schema-1"))
    assert sql(schema_only, "SELECT count(*) FROM kept") == [(0,)]
    run(db, db.create_branch("empty-1", data=DataPlan(data="empty")))
    tables = sql(run(db, db.connection_uri("empty-1")),
                 "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")  # fmt: skip
    assert tables == [(0,)]
    # A reset keeps the choice: the parent's rows come back, and go again.
    run(db, db.reset_branch("schema-1"))
    assert sql(run(db, db.connection_uri("schema-1")), "SELECT count(*) FROM kept") == [(0,)]


def test_gc_deletes_only_branchlines_own_leftovers(db: NeonDatabaseProvider) -> None:
    root_id = str(run(db, db.get_branch(db.root)).detail["neon_id"])  # type: ignore[union-attr]

    async def make(name: str, annotation: dict[str, str] | None) -> None:
        _b, ops = await db.client.create_branch(name, root_id, annotation=annotation)
        await db.client.wait(ops, deadline=60, what=name)

    # A crash after Neon made it and before the store knew: branchline's, unrecorded.
    run(db, make("crashed-1", {OWNER_KEY: db.project, "branchline-branch": "crashed-1"}))
    run(db, make("teams-own-1", None))  # the team's: never touched
    run(db, make("other-project-1", {OWNER_KEY: "someone-else"}))
    report = run(db, db.gc())
    assert report.orphan_clusters_removed == ["crashed-1"]
    left = {b.name for b in run(db, db.client.list_branches())}
    assert "crashed-1" not in left and {"teams-own-1", "other-project-1"} <= left
    for name in ("teams-own-1", "other-project-1"):
        found = run(db, db.client.find_branch(name))
        assert found is not None
        run(db, db.client.wait(run(db, db.client.delete_branch(found.id)) or [], deadline=60,
                               what=name))  # fmt: skip


def test_an_expired_branch_is_forgotten_by_gc(db: NeonDatabaseProvider) -> None:
    # Long enough for the copy to be made on a busy machine, then waited out.
    expires = datetime.now(UTC) + timedelta(seconds=8)
    run(db, db.create_branch("short-1", expires=expires))
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.5)
    # Neon deletes an expired branch itself; the store still has it.
    report = run(db, db.gc())
    assert "short-1" in report.stale_rows_removed + report.expired_deleted
    assert run(db, db.get_branch("short-1")) is None


def test_a_create_takes_the_branch_an_earlier_attempt_made(db: NeonDatabaseProvider) -> None:
    root_id = str(run(db, db.get_branch(db.root)).detail["neon_id"])  # type: ignore[union-attr]

    async def earlier_attempt() -> str:
        branch, ops = await db.client.create_branch(
            "adopt-1", root_id, annotation={OWNER_KEY: db.project, "branchline-branch": "adopt-1"}
        )
        await db.client.wait(ops, deadline=60, what="adopt-1")
        return branch.id

    made = run(db, earlier_attempt())
    branch = run(db, db.create_branch("adopt-1"))
    assert branch.detail["neon_id"] == made
    assert [b.name for b in run(db, db.client.list_branches())].count("adopt-1") == 1


def test_a_name_taken_by_someone_else_is_refused_and_left_alone(db: NeonDatabaseProvider) -> None:
    root_id = str(run(db, db.get_branch(db.root)).detail["neon_id"])  # type: ignore[union-attr]

    async def theirs() -> str:
        branch, ops = await db.client.create_branch("taken-1", root_id)
        await db.client.wait(ops, deadline=60, what="taken-1")
        return branch.id

    their_id = run(db, theirs())
    with pytest.raises(UsageError, match="did not make"):
        run(db, db.create_branch("taken-1"))
    assert run(db, db.client.get_branch(their_id)) is not None
    run(db, db.client.wait(run(db, db.client.delete_branch(their_id)) or [], deadline=60,
                           what="taken-1"))  # fmt: skip


def test_locked_and_rate_limited_answers_are_waited_out(
    db: NeonDatabaseProvider, fake: FakeNeon
) -> None:
    fake.inject(423, times=2, method="POST", path=r"/branches$")
    fake.inject(429, times=1, method="POST", path=r"/branches$", retry_after=1)
    began = time.monotonic()
    run(db, db.create_branch("busy-1"))
    assert db.client.count.retries >= 3
    assert time.monotonic() - began >= 1.0, "Retry-After was not honoured"


def test_the_branch_limit_says_what_gc_can_free(db: NeonDatabaseProvider, fake: FakeNeon) -> None:
    run(db, db.create_branch("limit-1"))
    count = len(run(db, db.client.list_branches()))
    fake.settings(branch_limit=count)
    try:
        with pytest.raises(UsageError) as caught:
            run(db, db.create_branch("limit-2"))
    finally:
        fake.settings(branch_limit=10)
    assert f"({count})" in caught.value.message and "branchline made" in caught.value.message
    assert "db gc" in (caught.value.hint or "")
    assert run(db, db.get_branch("limit-2")) is None  # nothing half made is left


def test_a_refused_key_and_an_unknown_project_are_clear(
    fake: FakeNeon, shared_store: Store
) -> None:
    wrong = provider_on(fake, shared_store, key="not-the-key")
    with pytest.raises(NeonError) as caught:
        run(wrong, wrong.init_root())
    assert caught.value.status == 401 and "NEON_API_KEY" in (caught.value.hint or "")
    assert "not-the-key" not in str(caught.value) + (caught.value.hint or "")
    unknown = provider_on(fake, shared_store, project="no-such-project-1")
    with pytest.raises(NeonError, match="no project 'no-such-project-1'"):
        run(unknown, unknown.init_root())


def test_schema_differences_come_from_neon(db: NeonDatabaseProvider) -> None:
    assert isinstance(db, SchemaComparer)
    run(db, db.create_branch("diff-1"))
    sql(run(db, db.connection_uri("diff-1")), "CREATE TABLE only_on_the_branch (id int)")
    diff = run(db, schema_diff(db, db.root, "diff-1"))
    assert "+CREATE TABLE public.only_on_the_branch" in diff
    assert db.client.count.by_route.get("GET /branches/{id}/compare_schema", 0) >= 1


NEON_PROJECT = """\
[project]
name = "codex"
zone = "codex.localhost"

[database]
provider = "neon"
migrate = "true"

[database.neon]
project_id = "{project}"
api_url = "{url}"

[services.api]
path = "api"
run = "true"
"""


@pytest.mark.parametrize(
    ("key", "project", "said"),
    [
        (None, None, "NEON_API_KEY is not set"),
        ("wrong-key", None, "Neon answered 401"),
        (KEY, "no-such-project-2", "no project 'no-such-project-2'"),
        (KEY, None, "ok Neon project"),
    ],
    ids=["missing-key", "refused-key", "unknown-project", "working"],
)
def test_config_check_asks_neon(
    fake: FakeNeon, tmp_path: Path, key: str | None, project: str | None, said: str
) -> None:
    (tmp_path / "api").mkdir()
    (tmp_path / "branchline.toml").write_text(
        NEON_PROJECT.format(project=project or fake.project_id, url=fake.url)
    )
    env = {"NEON_API_KEY": key} if key else {}
    done = run_cli("config", "check", cwd=tmp_path, env=env)
    out = done.stdout + done.stderr
    assert said in out, out
    assert (done.returncode == 0) is said.startswith("ok"), out
    assert "Traceback" not in out and (key is None or key not in out)
    offline = run_cli("config", "check", "--offline", cwd=tmp_path, env=env)
    assert offline.returncode == 0, offline.stdout + offline.stderr
