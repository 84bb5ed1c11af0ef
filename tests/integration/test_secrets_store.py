"""Secrets on a real state database: values sealed at rest, per-preview generated
values, rotation, deletion, and clear errors for a wrong key or a moved row."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg import sql

from branchline.config import SecretsConfig, SecretScope
from branchline.errors import UsageError
from branchline.postgres import Cluster
from branchline.secrets import SecretError, Secrets, key_id
from branchline.store import Store, locate_state

pytestmark = pytest.mark.integration
T = TypeVar("T")

KEY = os.urandom(32)
CONFIG = SecretsConfig(
    production=SecretScope(names=("DATABASE_PASSWORD", "STRIPE_KEY")),
    preview=SecretScope(names=("AUTH_SECRET", "STRIPE_KEY"), generate=("AUTH_SECRET",)),
    test=SecretScope(names=("TEST_TOKEN",), generate=("TEST_TOKEN",)),
)
VALUE = "sk_live_do-not-leak-0123456789"


@pytest.fixture(scope="module")
def state_url(pg_cluster: Cluster) -> Iterator[str]:
    name = f"t_secrets_{os.urandom(4).hex()}"
    with psycopg.connect(pg_cluster.uri(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield pg_cluster.uri(name)
    with psycopg.connect(pg_cluster.uri(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def store(state_url: str, tmp_path_factory: pytest.TempPathFactory) -> Store:
    state_dir = tmp_path_factory.mktemp("secrets-state")
    store = Store(
        locate_state(
            Path("/"),
            {"BRANCHLINE_DATABASE_URL": state_url, "BRANCHLINE_STATE_DIR": str(state_dir)},
        )
    )
    asyncio.run(store.start())
    return store


@pytest.fixture
def secrets(store: Store) -> Secrets:
    """A project of its own for each test."""
    return Secrets(store, f"p{os.urandom(4).hex()}", CONFIG, KEY)


def run(work: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(work)


def stored_rows(store: Store, project: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(store.url) as conn:
        return conn.execute(
            """SELECT environment, name, nonce, ciphertext, key_id, generated
               FROM branchline.secrets WHERE project = %s ORDER BY environment, name""",
            (project,),
        ).fetchall()


def test_set_get_list_delete(secrets: Secrets) -> None:
    info = run(secrets.set("production", "STRIPE_KEY", VALUE))
    assert (info.environment, info.name, info.generated) == ("production", "STRIPE_KEY", False)
    assert info.key_id == key_id(KEY)
    run(secrets.set("production", "DATABASE_PASSWORD", "hunter2-hunter2"))
    run(secrets.set("test", "TEST_TOKEN", "token-for-tests"))
    assert run(secrets.get_all("production")) == {
        "DATABASE_PASSWORD": "hunter2-hunter2",
        "STRIPE_KEY": VALUE,
    }
    assert run(secrets.get_all("test")) == {"TEST_TOKEN": "token-for-tests"}
    assert run(secrets.get_all("local")) == {}

    listed = run(secrets.list())
    assert [(i.environment, i.name) for i in listed] == [
        ("production", "DATABASE_PASSWORD"),
        ("production", "STRIPE_KEY"),
        ("test", "TEST_TOKEN"),
    ]
    assert VALUE not in repr(listed)
    assert [i.name for i in run(secrets.list("test"))] == ["TEST_TOKEN"]

    # Replacing keeps one row and moves updated_at forward.
    again = run(secrets.set("production", "STRIPE_KEY", VALUE + "-2"))
    assert again.updated_at > info.updated_at
    assert run(secrets.get_all("production"))["STRIPE_KEY"] == VALUE + "-2"

    assert run(secrets.delete("production", "STRIPE_KEY")) is True
    assert run(secrets.delete("production", "STRIPE_KEY")) is False
    assert run(secrets.get_all("production")) == {"DATABASE_PASSWORD": "hunter2-hunter2"}


def test_values_are_sealed_at_rest(secrets: Secrets, store: Store) -> None:
    run(secrets.set("production", "STRIPE_KEY", VALUE))
    run(secrets.set("preview", "STRIPE_KEY", VALUE))
    found = stored_rows(store, secrets.project)
    assert len(found) == 2
    for _env, _name, nonce, ciphertext, stored_key_id, _generated in found:
        assert len(nonce) == 12 and stored_key_id == key_id(KEY)
        assert VALUE.encode() not in bytes(ciphertext)
        assert base64.b64encode(VALUE.encode()) not in bytes(ciphertext)
    assert found[0][2] != found[1][2] and found[0][3] != found[1][3]  # distinct nonces
    with psycopg.connect(store.url) as conn:
        dump = conn.execute(
            "SELECT string_agg(t::text, ' ') FROM branchline.secrets t WHERE project = %s",
            (secrets.project,),
        ).fetchone()
    assert dump is not None and VALUE not in str(dump[0])


def test_preview_values_overlay_the_shared_preview_scope(secrets: Secrets) -> None:
    run(secrets.set("preview", "STRIPE_KEY", "sk_test_shared"))
    run(secrets.set("preview-8", "STRIPE_KEY", "sk_test_only_eight"))
    assert run(secrets.get_all("preview-8")) == {"STRIPE_KEY": "sk_test_only_eight"}
    assert run(secrets.get_all("preview-9")) == {"STRIPE_KEY": "sk_test_shared"}
    assert run(secrets.get_all("preview")) == {"STRIPE_KEY": "sk_test_shared"}


def test_generated_preview_values(secrets: Secrets, store: Store) -> None:
    assert run(secrets.ensure_generated(8)) == ["AUTH_SECRET"]
    first = run(secrets.get_all("preview-8"))["AUTH_SECRET"]
    assert len(first) == 44 and len(base64.b64decode(first, validate=True)) == 32
    # Stable: later calls create nothing and keep the value.
    assert run(secrets.ensure_generated(8)) == []
    assert run(secrets.get_all("preview-8"))["AUTH_SECRET"] == first
    # Per preview: another preview gets a different value.
    run(secrets.ensure_generated(9))
    assert run(secrets.get_all("preview-9"))["AUTH_SECRET"] != first
    info = {(i.environment, i.name): i for i in run(secrets.list())}
    assert info["preview-8", "AUTH_SECRET"].generated is True
    # Dropping the preview removes its values and leaves the others.
    assert run(secrets.drop_preview(8)) == ["AUTH_SECRET"]
    assert run(secrets.get_all("preview-8")) == {}
    assert run(secrets.drop_preview(8)) == []
    assert [r[0] for r in stored_rows(store, secrets.project)] == ["preview-9"]
    # Coming back, the preview gets a new value.
    run(secrets.ensure_generated(8))
    assert run(secrets.get_all("preview-8"))["AUTH_SECRET"] != first


def test_generated_test_values(secrets: Secrets) -> None:
    assert run(secrets.missing("test")) == ["TEST_TOKEN"]
    assert run(secrets.ensure_generated_in("test")) == ["TEST_TOKEN"]
    value = run(secrets.get_all("test"))["TEST_TOKEN"]
    assert len(base64.b64decode(value, validate=True)) == 32
    assert run(secrets.ensure_generated_in("test")) == []
    assert run(secrets.get_all("test")) == {"TEST_TOKEN": value}
    assert run(secrets.missing("test")) == []
    # Production and the shared preview scope are never generated into.
    assert run(secrets.ensure_generated_in("production")) == []
    assert run(secrets.ensure_generated_in("preview")) == []
    assert [i.environment for i in run(secrets.list())] == ["test"]


def test_concurrent_generation_keeps_one_value(secrets: Secrets) -> None:
    async def race() -> list[list[str]]:
        return list(await asyncio.gather(*(secrets.ensure_generated(12) for _ in range(8))))

    created = run(race())
    assert sorted(created, key=len)[-1] == ["AUTH_SECRET"]
    assert sum(len(c) for c in created) == 1
    assert len(run(secrets.get_all("preview-12"))) == 1


def test_a_shared_preview_value_is_not_generated_over(secrets: Secrets) -> None:
    run(secrets.set("preview", "AUTH_SECRET", "shared-auth-secret"))
    assert run(secrets.ensure_generated(3)) == []
    assert run(secrets.get_all("preview-3")) == {"AUTH_SECRET": "shared-auth-secret"}


def test_missing_names(secrets: Secrets) -> None:
    assert run(secrets.missing("production")) == ["DATABASE_PASSWORD", "STRIPE_KEY"]
    assert run(secrets.missing("preview")) == ["STRIPE_KEY"]  # AUTH_SECRET is generated
    assert run(secrets.missing("preview-4")) == ["AUTH_SECRET", "STRIPE_KEY"]
    run(secrets.ensure_generated(4))
    run(secrets.set("preview", "STRIPE_KEY", "sk_test_shared"))
    assert run(secrets.missing("preview-4")) == []
    run(secrets.set("production", "STRIPE_KEY", VALUE))
    assert run(secrets.missing("production")) == ["DATABASE_PASSWORD"]
    assert run(secrets.missing("local")) == []


def test_rotate_replaces_a_generated_value(secrets: Secrets) -> None:
    run(secrets.ensure_generated(8))
    run(secrets.ensure_generated(9))
    before = {pr: run(secrets.get_all(f"preview-{pr}"))["AUTH_SECRET"] for pr in (8, 9)}
    called: list[tuple[str, str]] = []

    async def hook(environment: str, name: str) -> None:
        called.append((environment, name))

    rotation = run(secrets.rotate("preview-8", "AUTH_SECRET", on_rotated=hook))
    assert rotation.environments == ("preview-8",) and rotation.rotated_at is not None
    assert VALUE not in repr(rotation) and before[8] not in repr(rotation)
    assert called == [("preview-8", "AUTH_SECRET")]
    after = run(secrets.get_all("preview-8"))["AUTH_SECRET"]
    assert after != before[8] and len(base64.b64decode(after)) == 32
    assert run(secrets.get_all("preview-9"))["AUTH_SECRET"] == before[9]

    # `preview` rotates it in every preview that has one.
    everywhere = run(secrets.rotate("preview", "AUTH_SECRET"))
    assert everywhere.environments == ("preview-8", "preview-9")
    assert run(secrets.get_all("preview-9"))["AUTH_SECRET"] != before[9]
    # A test scope's generated name is created by rotation when missing.
    assert run(secrets.rotate("test", "TEST_TOKEN")).environments == ("test",)
    assert len(run(secrets.get_all("test"))["TEST_TOKEN"]) == 44


def test_rotate_with_no_preview_values_rotates_nothing(secrets: Secrets) -> None:
    rotation = run(secrets.rotate("preview", "AUTH_SECRET"))
    assert rotation.environments == () and rotation.rotated_at is None


def test_rotate_refuses_production_and_set_values(secrets: Secrets) -> None:
    run(secrets.set("production", "STRIPE_KEY", VALUE))
    with pytest.raises(UsageError) as caught:
        run(secrets.rotate("production", "STRIPE_KEY"))
    assert "production" in caught.value.message
    assert "secret set STRIPE_KEY --env production" in caught.value.hint
    assert run(secrets.get_all("production")) == {"STRIPE_KEY": VALUE}
    with pytest.raises(UsageError, match="not generated"):
        run(secrets.rotate("preview-8", "STRIPE_KEY"))


def test_another_key_is_named(secrets: Secrets, store: Store) -> None:
    run(secrets.set("production", "STRIPE_KEY", VALUE))
    other_key = os.urandom(32)
    other = Secrets(store, secrets.project, CONFIG, other_key)
    with pytest.raises(SecretError) as caught:
        run(other.get_all("production"))
    message = caught.value.message
    assert key_id(KEY) in message and key_id(other_key) in message
    assert VALUE not in f"{message} {caught.value.hint}"
    # Listing and deleting need no key.
    keyless = Secrets(store, secrets.project, CONFIG, None)
    assert [i.name for i in run(keyless.list())] == ["STRIPE_KEY"]
    with pytest.raises(SecretError, match="no secret key"):
        run(keyless.get_all("production"))


def test_a_row_moved_to_another_name_does_not_decrypt(secrets: Secrets, store: Store) -> None:
    run(secrets.set("production", "STRIPE_KEY", VALUE))
    with psycopg.connect(store.url, autocommit=True) as conn:
        conn.execute(
            """UPDATE branchline.secrets SET name = 'DATABASE_PASSWORD'
               WHERE project = %s AND name = 'STRIPE_KEY'""",
            (secrets.project,),
        )
    with pytest.raises(SecretError) as caught:
        run(secrets.get_all("production"))
    assert "DATABASE_PASSWORD" in caught.value.message
    assert "does not decrypt" in caught.value.message
    assert VALUE not in str(caught.value)


def test_projects_do_not_see_each_other(secrets: Secrets, store: Store) -> None:
    run(secrets.set("production", "STRIPE_KEY", VALUE))
    neighbour = Secrets(store, secrets.project + "x", CONFIG, KEY)
    assert run(neighbour.get_all("production")) == {}
    assert run(neighbour.list()) == []


def test_invalid_input_is_refused_before_storage(secrets: Secrets, store: Store) -> None:
    with pytest.raises(UsageError):
        run(secrets.set("staging", "STRIPE_KEY", VALUE))
    with pytest.raises(UsageError):
        run(secrets.set("production", "stripe-key", VALUE))
    with pytest.raises(UsageError, match="empty"):
        run(secrets.set("production", "STRIPE_KEY", ""))
    with pytest.raises(UsageError):
        run(secrets.set("local", "STRIPE_KEY", VALUE))
    assert stored_rows(store, secrets.project) == []
