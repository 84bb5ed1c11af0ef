"""Schema dumps, fingerprints and structural diffs against real databases."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

from branchline.errors import BranchlineError
from branchline.postgres import Cluster
from branchline.schemadiff import (
    ColumnChange,
    Schema,
    TableChange,
    describe_schema,
    diff_schemas,
    dump_schema,
    fingerprint,
    normalize_dump,
    unified_diff,
)

pytestmark = pytest.mark.integration

# One schema, written twice in different statement orders (and styles: inline
# constraints vs ALTER TABLE, serial vs an explicit sequence).
SCHEMA_IN_ORDER = [
    "CREATE SCHEMA app",
    "CREATE TYPE app.mood AS ENUM ('sad', 'ok', 'happy')",
    """CREATE TABLE app.users (
        id bigserial PRIMARY KEY,
        email text NOT NULL UNIQUE,
        mood app.mood DEFAULT 'ok',
        created_at timestamptz NOT NULL DEFAULT now()
    )""",
    """CREATE TABLE public.orders (
        id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        user_id bigint NOT NULL REFERENCES app.users (id) ON DELETE CASCADE,
        total numeric(10,2) CHECK (total >= 0),
        note varchar(200),
        created_at timestamptz NOT NULL DEFAULT now()
    )""",
    "CREATE INDEX orders_user_idx ON public.orders (user_id)",
    "CREATE INDEX orders_created_idx ON public.orders (created_at DESC)",
    "COMMENT ON TABLE public.orders IS 'customer orders'",
    "CREATE VIEW public.big_orders AS SELECT id, total FROM public.orders WHERE total > 100",
    """CREATE FUNCTION public.touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.created_at := now();
    RETURN NEW;
END $$""",
    """CREATE TRIGGER users_touch BEFORE UPDATE ON app.users
        FOR EACH ROW EXECUTE FUNCTION public.touch()""",
]

SCHEMA_OTHER_ORDER = [
    """CREATE FUNCTION public.touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.created_at := now();
    RETURN NEW;
END $$""",
    """CREATE TABLE public.orders (
        id integer GENERATED ALWAYS AS IDENTITY,
        user_id bigint NOT NULL,
        total numeric(10,2),
        note varchar(200),
        created_at timestamptz NOT NULL DEFAULT now()
    )""",
    "CREATE INDEX orders_created_idx ON public.orders (created_at DESC)",
    "CREATE VIEW public.big_orders AS SELECT id, total FROM public.orders WHERE total > 100",
    "ALTER TABLE public.orders ADD CONSTRAINT orders_total_check CHECK (total >= 0)",
    "COMMENT ON TABLE public.orders IS 'customer orders'",
    "ALTER TABLE public.orders ADD CONSTRAINT orders_pkey PRIMARY KEY (id)",
    "CREATE SCHEMA app",
    "CREATE TYPE app.mood AS ENUM ('sad', 'ok', 'happy')",
    "CREATE SEQUENCE app.users_id_seq",
    """CREATE TABLE app.users (
        id bigint NOT NULL DEFAULT nextval('app.users_id_seq'),
        email text NOT NULL,
        mood app.mood DEFAULT 'ok',
        created_at timestamptz NOT NULL DEFAULT now()
    )""",
    "ALTER SEQUENCE app.users_id_seq OWNED BY app.users.id",
    """CREATE TRIGGER users_touch BEFORE UPDATE ON app.users
        FOR EACH ROW EXECUTE FUNCTION public.touch()""",
    "ALTER TABLE app.users ADD CONSTRAINT users_email_key UNIQUE (email)",
    "ALTER TABLE app.users ADD CONSTRAINT users_pkey PRIMARY KEY (id)",
    """ALTER TABLE public.orders ADD CONSTRAINT orders_user_id_fkey
        FOREIGN KEY (user_id) REFERENCES app.users (id) ON DELETE CASCADE""",
    "CREATE INDEX orders_user_idx ON public.orders (user_id)",
]

MIGRATION = [
    "ALTER TABLE app.users ADD COLUMN nickname text",
    "DROP INDEX public.orders_created_idx",
    "ALTER TABLE public.orders ALTER COLUMN note TYPE text",
    "ALTER TABLE public.orders ADD CONSTRAINT orders_note_length CHECK (length(note) < 500)",
    "CREATE TABLE public.audit (id bigint PRIMARY KEY, entry jsonb NOT NULL)",
]


@dataclass(frozen=True)
class Databases:
    a: str
    b: str
    names: tuple[str, str]
    pg_dump: str


@pytest.fixture
def two_dbs(pg_cluster: Cluster) -> Iterator[Databases]:
    """Two empty databases in the session cluster, dropped afterwards."""
    names = [f"sd_a_{os.urandom(5).hex()}", f"sd_b_{os.urandom(5).hex()}"]
    created: list[str] = []
    try:
        with psycopg.connect(pg_cluster.uri(), autocommit=True) as conn:
            for name in names:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                created.append(name)
        yield Databases(
            pg_cluster.uri(names[0]),
            pg_cluster.uri(names[1]),
            (names[0], names[1]),
            pg_cluster.binaries.path("pg_dump"),
        )
    finally:
        with psycopg.connect(pg_cluster.uri(), autocommit=True) as conn:
            for name in created:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


def _run(uri: str, statements: list[str]) -> None:
    with psycopg.connect(uri, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def _normalized(dbs: Databases, uri: str) -> str:
    return normalize_dump(dump_schema(uri, dbs.pg_dump))


async def _describe(uri: str) -> Schema:
    async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as conn:
        return await describe_schema(conn)


def test_same_schema_in_another_order_has_the_same_fingerprint(
    two_dbs: Databases, pg_cluster: Cluster
) -> None:
    _run(two_dbs.a, SCHEMA_IN_ORDER)
    _run(two_dbs.b, SCHEMA_OTHER_ORDER)
    raw_a, raw_b = dump_schema(two_dbs.a, two_dbs.pg_dump), dump_schema(two_dbs.b, two_dbs.pg_dump)
    assert raw_a != raw_b  # pg_dump's own order differs (and so do the \restrict keys)
    text_a, text_b = normalize_dump(raw_a), normalize_dump(raw_b)
    assert text_a == text_b, unified_diff(text_a, text_b, "a", "b")
    assert fingerprint(text_a) == fingerprint(text_b)
    assert unified_diff(text_a, text_b, "a", "b") == ""
    assert "CREATE TABLE public.orders (" in text_a
    assert "COMMENT ON TABLE public.orders IS 'customer orders';" in text_a
    # The database name and the password never make it into the schema text.
    for name in two_dbs.names:
        assert name not in raw_a + raw_b
    assert pg_cluster.meta().password not in raw_a + raw_b
    schema_a, schema_b = asyncio.run(_describe(two_dbs.a)), asyncio.run(_describe(two_dbs.b))
    assert schema_a == schema_b
    assert diff_schemas(schema_a, schema_b).is_empty
    assert sorted(schema_a.tables) == ["app.users", "public.orders"]


def test_a_migration_shows_up_in_both_diffs(two_dbs: Databases) -> None:
    _run(two_dbs.a, SCHEMA_IN_ORDER)
    _run(two_dbs.b, SCHEMA_OTHER_ORDER)
    before = asyncio.run(_describe(two_dbs.a))
    _run(two_dbs.b, MIGRATION)
    after = asyncio.run(_describe(two_dbs.b))

    text_a, text_b = _normalized(two_dbs, two_dbs.a), _normalized(two_dbs, two_dbs.b)
    assert fingerprint(text_a) != fingerprint(text_b)
    diff = unified_diff(text_a, text_b, "main", "pr-8")
    changed = [
        line
        for line in diff.splitlines()
        if line[:1] in "+-" and not line.startswith(("---", "+++"))
    ]
    assert "+    nickname text" in changed
    assert "-    note character varying(200)," in changed
    assert "+    note text," in changed
    assert "+    CONSTRAINT orders_note_length CHECK ((length(note) < 500))," in changed
    assert (
        "-CREATE INDEX orders_created_idx ON public.orders USING btree (created_at DESC);"
        in changed
    )
    assert "+CREATE TABLE public.audit (" in changed
    assert "+    ADD CONSTRAINT audit_pkey PRIMARY KEY (id);" in changed
    assert not [line for line in changed if line.startswith("-") and "users" in line]

    result = diff_schemas(before, after)
    assert result.tables_added == ["public.audit"]
    assert result.tables_removed == []
    assert result.tables_changed == [
        TableChange("app.users", columns_added=["nickname"]),
        TableChange(
            "public.orders",
            columns_changed=[
                ColumnChange("note", "data_type", "character varying(200)", "text"),
            ],
            indexes_removed=["orders_created_idx"],
            constraints_added=["orders_note_length"],
        ),
    ]
    assert after.tables["public.orders"].constraints["orders_note_length"] == (
        "CHECK ((length(note) < 500))"
    )
    assert after.tables["public.audit"].columns["entry"].data_type == "jsonb"
    assert not after.tables["public.audit"].columns["entry"].nullable
    reverse = diff_schemas(after, before)
    assert reverse.tables_removed == ["public.audit"]
    assert reverse.tables_changed[0].columns_removed == ["nickname"]


def test_describe_schema_reads_the_catalogs(two_dbs: Databases) -> None:
    _run(two_dbs.a, SCHEMA_IN_ORDER)
    schema = asyncio.run(_describe(two_dbs.a))
    users, orders = schema.tables["app.users"], schema.tables["public.orders"]
    assert list(users.columns) == ["id", "email", "mood", "created_at"]
    assert users.columns["id"].default == "nextval('app.users_id_seq'::regclass)"
    assert users.columns["mood"].data_type == "app.mood"
    assert users.columns["mood"].nullable
    assert users.columns["created_at"].data_type == "timestamp with time zone"
    assert orders.columns["id"].identity == "ALWAYS"
    assert orders.columns["id"].default is None
    assert orders.columns["total"].data_type == "numeric(10,2)"
    # Indexes behind PRIMARY KEY / UNIQUE constraints are listed as constraints.
    assert users.indexes == {}
    assert users.constraints == {
        "users_email_key": "UNIQUE (email)",
        "users_pkey": "PRIMARY KEY (id)",
    }
    assert orders.indexes == {
        "orders_created_idx": "CREATE INDEX orders_created_idx ON public.orders "
        "USING btree (created_at DESC)",
        "orders_user_idx": "CREATE INDEX orders_user_idx ON public.orders USING btree (user_id)",
    }
    assert orders.constraints["orders_user_id_fkey"] == (
        "FOREIGN KEY (user_id) REFERENCES app.users(id) ON DELETE CASCADE"
    )
    assert orders.constraints["orders_total_check"] == "CHECK ((total >= (0)::numeric))"
    assert set(orders.constraints) == {"orders_pkey", "orders_total_check", "orders_user_id_fkey"}
    assert "public.big_orders" not in schema.tables  # a view, not a table


def test_describe_schema_leaves_the_connection_as_it_was(two_dbs: Databases) -> None:
    _run(two_dbs.a, SCHEMA_IN_ORDER)

    async def check() -> tuple[Schema, Schema, str, str]:
        async with await psycopg.AsyncConnection.connect(two_dbs.a) as conn:
            await conn.execute("SET search_path = app, public")
            await conn.commit()
            await conn.execute("CREATE TEMP TABLE scratch (x int)")  # inside the caller's tx
            in_tx = await describe_schema(conn)
            path = await (await conn.execute("SHOW search_path")).fetchone()
            await conn.rollback()
            outside = await describe_schema(conn)
            path2 = await (await conn.execute("SHOW search_path")).fetchone()
            assert path is not None and path2 is not None
            return in_tx, outside, str(path[0]), str(path2[0])

    in_tx, outside, path, path2 = asyncio.run(check())
    assert path == path2 == "app, public"
    # Same answers whatever the caller's search_path; temp tables are not schema.
    assert in_tx == outside == asyncio.run(_describe(two_dbs.a))
    assert in_tx.tables["app.users"].columns["id"].default == (
        "nextval('app.users_id_seq'::regclass)"
    )


def test_dump_schema_with_a_wrong_password(two_dbs: Databases, pg_cluster: Cluster) -> None:
    meta = pg_cluster.meta()
    wrong = "Wr0ng-pa55word-" + os.urandom(4).hex()
    uri = (
        f"postgresql://{meta.superuser}:{quote(wrong, safe='')}@127.0.0.1:{meta.port}/"
        + two_dbs.names[0]
    )
    with pytest.raises(BranchlineError) as caught:
        dump_schema(uri, two_dbs.pg_dump)
    error = caught.value
    shown = " ".join([str(error), error.hint, repr(error), str(error.as_dict())])
    assert "password authentication failed" in error.hint
    assert wrong not in shown
    assert meta.password not in shown


def test_dump_schema_of_an_empty_database(two_dbs: Databases) -> None:
    raw = dump_schema(two_dbs.a, two_dbs.pg_dump)
    assert "PostgreSQL database dump" in raw
    assert normalize_dump(raw) == ""
