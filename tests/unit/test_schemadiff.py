"""Tests for branchline.schemadiff: dump normalisation, text diffs and the
structural diff model. No database: the dumps below are trimmed real
`pg_dump --schema-only` outputs (pg_dump 15.20), and pg_dump itself is
replaced by a small fake script where the command line matters."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from branchline.errors import BranchlineError
from branchline.schemadiff import (
    Column,
    ColumnChange,
    DefinitionChange,
    Schema,
    SchemaDiff,
    Table,
    TableChange,
    diff_schemas,
    dump_schema,
    fingerprint,
    normalize_dump,
    unified_diff,
)

# `pg_dump --verbose --schema-only` (owners and privileges kept): TOC entries,
# start/end timestamps, a \restrict key, ALTER ... OWNER TO and GRANT lines.
VERBOSE_DUMP = r"""--
-- PostgreSQL database dump
--

\restrict oovnmaziKmIG9RIxWOO2o3dZsRIaSQwnnOhSp5V80N3CXr8oKli3xc6UcVuNfbN

-- Dumped from database version 15.20 (Debian 15.20-0+deb12u1)
-- Dumped by pg_dump version 15.20 (Debian 15.20-0+deb12u1)

-- Started on 2026-11-27 23:21:30 UTC

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

--
-- TOC entry 7 (class 2615 OID 16385)
-- Name: app; Type: SCHEMA; Schema: -; Owner: branchline
--

CREATE SCHEMA app;


ALTER SCHEMA app OWNER TO branchline;

--
-- TOC entry 881 (class 1247 OID 16424)
-- Name: mood; Type: TYPE; Schema: app; Owner: branchline
--

CREATE TYPE app.mood AS ENUM (
    'sad',
    'ok',
    'happy'
);


ALTER TYPE app.mood OWNER TO branchline;

--
-- TOC entry 232 (class 1255 OID 16462)
-- Name: touch(); Type: FUNCTION; Schema: public; Owner: branchline
--

CREATE FUNCTION public.touch() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
-- keep the audit column fresh

    NEW.created_at := now();
    RETURN NEW;
END $$;


ALTER FUNCTION public.touch() OWNER TO branchline;

SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- TOC entry 216 (class 1259 OID 16432)
-- Name: users; Type: TABLE; Schema: app; Owner: branchline
--

CREATE TABLE app.users (
    id bigint NOT NULL,
    email text NOT NULL,
    mood app.mood DEFAULT 'ok'::app.mood,
    created_at timestamp with time zone DEFAULT now() NOT NULL
);


ALTER TABLE app.users OWNER TO branchline;

--
-- TOC entry 215 (class 1259 OID 16431)
-- Name: users_id_seq; Type: SEQUENCE; Schema: app; Owner: branchline
--

CREATE SEQUENCE app.users_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


ALTER TABLE app.users_id_seq OWNER TO branchline;

--
-- TOC entry 3398 (class 0 OID 0)
-- Dependencies: 215
-- Name: users_id_seq; Type: SEQUENCE OWNED BY; Schema: app; Owner: branchline
--

ALTER SEQUENCE app.users_id_seq OWNED BY app.users.id;


--
-- TOC entry 218 (class 1259 OID 16444)
-- Name: orders; Type: TABLE; Schema: public; Owner: branchline
--

CREATE TABLE public.orders (
    id integer NOT NULL,
    user_id bigint NOT NULL,
    total numeric(10,2),
    note character varying(200),
    CONSTRAINT orders_total_check CHECK ((total >= (0)::numeric))
);


ALTER TABLE public.orders OWNER TO branchline;

--
-- TOC entry 3401 (class 0 OID 0)
-- Dependencies: 218
-- Name: TABLE orders; Type: COMMENT; Schema: public; Owner: branchline
--

COMMENT ON TABLE public.orders IS 'customer orders';


--
-- TOC entry 3245 (class 2604 OID 16435)
-- Name: users id; Type: DEFAULT; Schema: app; Owner: branchline
--

ALTER TABLE ONLY app.users ALTER COLUMN id SET DEFAULT nextval('app.users_id_seq'::regclass);


--
-- TOC entry 3255 (class 2606 OID 16441)
-- Name: users users_pkey; Type: CONSTRAINT; Schema: app; Owner: branchline
--

ALTER TABLE ONLY app.users
    ADD CONSTRAINT users_pkey PRIMARY KEY (id);


--
-- TOC entry 3258 (class 1259 OID 16458)
-- Name: orders_user_idx; Type: INDEX; Schema: public; Owner: branchline
--

CREATE INDEX orders_user_idx ON public.orders USING btree (user_id);


--
-- TOC entry 3261 (class 2620 OID 16463)
-- Name: users users_touch; Type: TRIGGER; Schema: app; Owner: branchline
--

CREATE TRIGGER users_touch BEFORE UPDATE ON app.users FOR EACH ROW EXECUTE FUNCTION public.touch();


--
-- TOC entry 3260 (class 2606 OID 16452)
-- Name: orders orders_user_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: branchline
--

ALTER TABLE ONLY public.orders
    ADD CONSTRAINT orders_user_id_fkey FOREIGN KEY (user_id) REFERENCES app.users(id);


--
-- TOC entry 3399 (class 0 OID 0)
-- Dependencies: 7
-- Name: SCHEMA app; Type: ACL; Schema: -; Owner: branchline
--

GRANT USAGE ON SCHEMA app TO reader;


--
-- TOC entry 3402 (class 0 OID 0)
-- Dependencies: 218
-- Name: TABLE orders; Type: ACL; Schema: public; Owner: branchline
--

GRANT SELECT ON TABLE public.orders TO reader;


--
-- TOC entry 2082 (class 826 OID 16470)
-- Name: DEFAULT PRIVILEGES FOR TABLES; Type: DEFAULT ACL; Schema: app; Owner: branchline
--

ALTER DEFAULT PRIVILEGES FOR ROLE branchline IN SCHEMA app GRANT SELECT ON TABLES  TO reader;


-- Completed on 2026-11-27 23:21:30 UTC

--
-- PostgreSQL database dump complete
--

\unrestrict oovnmaziKmIG9RIxWOO2o3dZsRIaSQwnnOhSp5V80N3CXr8oKli3xc6UcVuNfbN

"""

# The same schema dumped with --no-owner --no-privileges by another pg_dump
# version from a database whose objects were created in another order (so
# pg_dump emits them in another order), with another \restrict key.
PERMUTED_DUMP = r"""--
-- PostgreSQL database dump
--

\restrict T3d8Zciq1chYL95F0gNarXEwe86pIK1WwUOcnWCbKOjp64KMdRxCBGo0lSCaLCk

-- Dumped from database version 15.14 (Debian 15.14-1.pgdg120+1)
-- Dumped by pg_dump version 15.14 (Debian 15.14-1.pgdg120+1)

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

--
-- Name: app; Type: SCHEMA; Schema: -; Owner: -
--

CREATE SCHEMA app;


--
-- Name: touch(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.touch() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
-- keep the audit column fresh

    NEW.created_at := now();
    RETURN NEW;
END $$;


--
-- Name: mood; Type: TYPE; Schema: app; Owner: -
--

CREATE TYPE app.mood AS ENUM (
    'sad',
    'ok',
    'happy'
);


SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: orders; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.orders (
    id integer NOT NULL,
    user_id bigint NOT NULL,
    total numeric(10,2),
    note character varying(200),
    CONSTRAINT orders_total_check CHECK ((total >= (0)::numeric))
);


--
-- Name: TABLE orders; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.orders IS 'customer orders';


--
-- Name: users; Type: TABLE; Schema: app; Owner: -
--

CREATE TABLE app.users (
    id bigint NOT NULL,
    email text NOT NULL,
    mood app.mood DEFAULT 'ok'::app.mood,
    created_at timestamp with time zone DEFAULT now() NOT NULL
);


--
-- Name: users_id_seq; Type: SEQUENCE; Schema: app; Owner: -
--

CREATE SEQUENCE app.users_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: users_id_seq; Type: SEQUENCE OWNED BY; Schema: app; Owner: -
--

ALTER SEQUENCE app.users_id_seq OWNED BY app.users.id;


--
-- Name: users id; Type: DEFAULT; Schema: app; Owner: -
--

ALTER TABLE ONLY app.users ALTER COLUMN id SET DEFAULT nextval('app.users_id_seq'::regclass);


--
-- Name: orders_user_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX orders_user_idx ON public.orders USING btree (user_id);


--
-- Name: users users_pkey; Type: CONSTRAINT; Schema: app; Owner: -
--

ALTER TABLE ONLY app.users
    ADD CONSTRAINT users_pkey PRIMARY KEY (id);


--
-- Name: orders orders_user_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.orders
    ADD CONSTRAINT orders_user_id_fkey FOREIGN KEY (user_id) REFERENCES app.users(id);


--
-- Name: users users_touch; Type: TRIGGER; Schema: app; Owner: -
--

CREATE TRIGGER users_touch BEFORE UPDATE ON app.users FOR EACH ROW EXECUTE FUNCTION public.touch();


--
-- PostgreSQL database dump complete
--

\unrestrict T3d8Zciq1chYL95F0gNarXEwe86pIK1WwUOcnWCbKOjp64KMdRxCBGo0lSCaLCk

"""

# An empty database, as pg_dump 15.20 dumps it.
EMPTY_DUMP = r"""--
-- PostgreSQL database dump
--

\restrict Zq1yEwBqBnbsm7Qpjd3r9Pda4UzKc0dHjiQwuzqcHJY4DyUhDSbXsy2fGZRxvWe

-- Dumped from database version 15.20 (Debian 15.20-0+deb12u1)
-- Dumped by pg_dump version 15.20 (Debian 15.20-0+deb12u1)

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

--
-- PostgreSQL database dump complete
--

\unrestrict Zq1yEwBqBnbsm7Qpjd3r9Pda4UzKc0dHjiQwuzqcHJY4DyUhDSbXsy2fGZRxvWe

"""


# -- normalize_dump ---------------------------------------------------------


@pytest.mark.parametrize("dump", [VERBOSE_DUMP, PERMUTED_DUMP], ids=["verbose", "permuted"])
def test_normalisation_drops_noise(dump: str) -> None:
    text = normalize_dump(dump)
    for noise in (
        "restrict",
        "Dumped from",
        "Dumped by",
        "15.20",
        "15.14",
        "Started on",
        "Completed on",
        "2026-11-27",
        "TOC entry",
        "Dependencies:",
        "OID",
        "Owner",
        "OWNER TO",
        "branchline",
        "GRANT",
        "reader",
        "PostgreSQL database dump",
        "set_config",
    ):
        assert noise not in text, noise
    assert not [line for line in text.splitlines() if line.startswith("SET ")]
    assert "\n\n\n" not in text


def test_normalisation_keeps_every_statement() -> None:
    text = normalize_dump(VERBOSE_DUMP)
    for statement in (
        "CREATE SCHEMA app;",
        "CREATE TYPE app.mood AS ENUM (\n    'sad',\n    'ok',\n    'happy'\n);",
        "    email text NOT NULL,\n",
        "    CONSTRAINT orders_total_check CHECK ((total >= (0)::numeric))\n);",
        "COMMENT ON TABLE public.orders IS 'customer orders';",
        "ALTER SEQUENCE app.users_id_seq OWNED BY app.users.id;",
        "nextval('app.users_id_seq'::regclass);",
        "    ADD CONSTRAINT users_pkey PRIMARY KEY (id);",
        "CREATE INDEX orders_user_idx ON public.orders USING btree (user_id);",
        "CREATE TRIGGER users_touch BEFORE UPDATE ON app.users",
        "REFERENCES app.users(id);",
    ):
        assert statement in text, statement
    # A function body is kept verbatim: its own comments and blank lines too.
    assert "BEGIN\n-- keep the audit column fresh\n\n    NEW.created_at := now();" in text


def test_headers_name_type_and_schema_without_owner() -> None:
    text = normalize_dump(VERBOSE_DUMP)
    headers = [line for line in text.splitlines() if line.startswith("-- Name: ")]
    assert "-- Name: users; Type: TABLE; Schema: app" in headers
    assert "-- Name: orders orders_user_id_fkey; Type: FK CONSTRAINT; Schema: public" in headers
    assert "-- Name: app; Type: SCHEMA; Schema: -" in headers
    assert not [h for h in headers if "ACL" in h]
    assert len(headers) == 13  # 16 entries, minus 3 privilege entries


def test_blocks_are_sorted_by_type_then_schema_then_name() -> None:
    text = normalize_dump(PERMUTED_DUMP)
    headers = [line for line in text.splitlines() if line.startswith("-- Name: ")]
    assert headers == [
        "-- Name: app; Type: SCHEMA; Schema: -",
        "-- Name: mood; Type: TYPE; Schema: app",
        "-- Name: touch(); Type: FUNCTION; Schema: public",
        "-- Name: users; Type: TABLE; Schema: app",
        "-- Name: orders; Type: TABLE; Schema: public",
        "-- Name: users_id_seq; Type: SEQUENCE; Schema: app",
        "-- Name: users_id_seq; Type: SEQUENCE OWNED BY; Schema: app",
        "-- Name: users id; Type: DEFAULT; Schema: app",
        "-- Name: users users_pkey; Type: CONSTRAINT; Schema: app",
        "-- Name: orders_user_idx; Type: INDEX; Schema: public",
        "-- Name: orders orders_user_id_fkey; Type: FK CONSTRAINT; Schema: public",
        "-- Name: users users_touch; Type: TRIGGER; Schema: app",
        "-- Name: TABLE orders; Type: COMMENT; Schema: public",
    ]


def test_permuted_dumps_normalise_to_identical_text() -> None:
    verbose, permuted = normalize_dump(VERBOSE_DUMP), normalize_dump(PERMUTED_DUMP)
    assert verbose == permuted
    assert fingerprint(verbose) == fingerprint(permuted)
    assert unified_diff(verbose, permuted, "a", "b") == ""


def test_output_shape() -> None:
    text = normalize_dump(PERMUTED_DUMP)
    assert text.endswith(";\n")
    assert not text.endswith("\n\n")
    assert text.startswith("-- Name: app; Type: SCHEMA; Schema: -\nCREATE SCHEMA app;\n\n")
    assert normalize_dump(PERMUTED_DUMP.replace("\n", "\r\n")) == text


@pytest.mark.parametrize("dump", [VERBOSE_DUMP, PERMUTED_DUMP, EMPTY_DUMP])
def test_normalisation_is_idempotent(dump: str) -> None:
    once = normalize_dump(dump)
    assert normalize_dump(once) == once
    loose = normalize_dump("CREATE TABLE loose (id int);\n" + dump)
    assert loose.startswith("CREATE TABLE loose (id int);\n")
    assert normalize_dump(loose) == loose


def test_a_name_line_inside_a_body_is_not_a_header() -> None:
    dump = PERMUTED_DUMP.replace(
        "BEGIN\n-- keep the audit column fresh\n",
        "BEGIN\n-- Name: x; Type: TABLE; Schema: public\n",
    )
    text = normalize_dump(dump)
    assert "BEGIN\n-- Name: x; Type: TABLE; Schema: public\n\n    NEW.created_at" in text


def test_empty_database_normalises_to_empty_text() -> None:
    assert normalize_dump(EMPTY_DUMP) == ""
    assert normalize_dump("") == ""


def test_a_real_difference_survives_normalisation() -> None:
    changed = PERMUTED_DUMP.replace(
        "    note character varying(200),\n", "    note text,\n    shipped boolean,\n"
    )
    assert changed != PERMUTED_DUMP
    before, after = normalize_dump(PERMUTED_DUMP), normalize_dump(changed)
    assert before != after
    assert fingerprint(before) != fingerprint(after)
    diff = unified_diff(before, after, "main", "pr-8")
    lines = diff.splitlines()
    assert lines[0] == "--- main"
    assert lines[1] == "+++ pr-8"
    assert "-    note character varying(200)," in lines
    assert "+    note text," in lines
    assert "+    shipped boolean," in lines
    assert len([line for line in lines if line[:1] in "+-" and line[:3] not in ("---", "+++")]) == 3


def test_content_outside_known_entries_is_kept() -> None:
    # Not something pg_dump writes, but never silently dropped either.
    text = normalize_dump("SET lock_timeout = 0;\nCREATE TABLE loose (id int);\n")
    assert text == "CREATE TABLE loose (id int);\n"
    both = normalize_dump("CREATE TABLE loose (id int);\n" + PERMUTED_DUMP)
    assert both.startswith("CREATE TABLE loose (id int);\n\n-- Name: app; Type: SCHEMA;")


def test_fingerprint_is_sha256_hex() -> None:
    assert fingerprint("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert fingerprint("a\n") != fingerprint("a")


def test_unified_diff_of_texts_without_final_newline() -> None:
    diff = unified_diff("x\ny", "x\nz", "a", "b")
    assert diff.endswith("-y\n+z\n")


# -- diff model -------------------------------------------------------------


def _users(**overrides: Column) -> Table:
    columns = {
        "id": Column("id", "bigint", False, "nextval('app.users_id_seq'::regclass)"),
        "email": Column("email", "text", False),
        "mood": Column("mood", "app.mood", True, "'ok'::app.mood"),
    }
    columns.update(overrides)
    return Table(
        "app.users",
        columns=columns,
        indexes={"users_mood_idx": "CREATE INDEX users_mood_idx ON app.users USING btree (mood)"},
        constraints={"users_pkey": "PRIMARY KEY (id)"},
    )


def _orders() -> Table:
    return Table(
        "public.orders",
        columns={"id": Column("id", "integer", False, identity="ALWAYS")},
        constraints={"orders_pkey": "PRIMARY KEY (id)"},
    )


def test_identical_schemas_have_an_empty_diff() -> None:
    a = Schema({"app.users": _users(), "public.orders": _orders()})
    b = Schema({"app.users": _users(), "public.orders": _orders()})
    diff = diff_schemas(a, b)
    assert diff.is_empty
    assert diff == SchemaDiff()
    assert diff.as_dict() == {"tables_added": [], "tables_removed": [], "tables_changed": []}


def test_tables_added_and_removed_are_sorted() -> None:
    a = Schema({"public.orders": _orders(), "public.zeta": Table("public.zeta")})
    b = Schema(
        {
            "public.orders": _orders(),
            "app.users": _users(),
            "public.audit": Table("public.audit"),
        }
    )
    diff = diff_schemas(a, b)
    assert diff.tables_added == ["app.users", "public.audit"]
    assert diff.tables_removed == ["public.zeta"]
    assert diff.tables_changed == []
    assert not diff.is_empty
    assert diff_schemas(b, a).tables_removed == ["app.users", "public.audit"]


def test_column_changes() -> None:
    old = _users()
    new_columns = dict(old.columns)
    del new_columns["mood"]
    new_columns["email"] = Column("email", "character varying(320)", True)
    new_columns["nickname"] = Column("nickname", "text", True)
    new_columns["id"] = Column("id", "bigint", False, None, identity="BY DEFAULT")
    new = Table("app.users", new_columns, old.indexes, old.constraints)
    diff = diff_schemas(Schema({"app.users": old}), Schema({"app.users": new}))
    assert diff.tables_added == diff.tables_removed == []
    [change] = diff.tables_changed
    assert change.table == "app.users"
    assert change.columns_added == ["nickname"]
    assert change.columns_removed == ["mood"]
    assert change.columns_changed == [
        ColumnChange("email", "data_type", "text", "character varying(320)"),
        ColumnChange("email", "nullable", False, True),
        ColumnChange("id", "default", "nextval('app.users_id_seq'::regclass)", None),
        ColumnChange("id", "identity", None, "BY DEFAULT"),
    ]
    assert change.indexes_added == change.indexes_removed == []
    assert change.indexes_changed == []
    assert change.constraints_added == change.constraints_removed == []
    assert change.constraints_changed == []


def test_index_and_constraint_changes() -> None:
    old = _users()
    new = Table(
        "app.users",
        columns=old.columns,
        indexes={
            "users_email_idx": "CREATE INDEX users_email_idx ON app.users USING btree (email)",
        },
        constraints={
            "users_pkey": "PRIMARY KEY (id, email)",
            "users_email_check": "CHECK ((email ~~ '%@%'::text))",
        },
    )
    a, b = Schema({"app.users": old}), Schema({"app.users": new})
    [change] = diff_schemas(a, b).tables_changed
    assert change.columns_added == change.columns_removed == []
    assert change.columns_changed == []
    assert change.indexes_added == ["users_email_idx"]
    assert change.indexes_removed == ["users_mood_idx"]
    assert change.constraints_added == ["users_email_check"]
    assert change.constraints_removed == []
    assert change.constraints_changed == [
        DefinitionChange("users_pkey", "PRIMARY KEY (id)", "PRIMARY KEY (id, email)")
    ]
    [back] = diff_schemas(b, a).tables_changed
    assert back.indexes_added == ["users_mood_idx"]
    assert back.constraints_removed == ["users_email_check"]


def test_changed_index_definition() -> None:
    old = _users()
    new = Table(
        "app.users",
        old.columns,
        {"users_mood_idx": "CREATE INDEX users_mood_idx ON app.users USING hash (mood)"},
        old.constraints,
    )
    [change] = diff_schemas(Schema({"t": old}), Schema({"t": new})).tables_changed
    assert change.table == "t"
    assert change.indexes_changed == [
        DefinitionChange(
            "users_mood_idx",
            "CREATE INDEX users_mood_idx ON app.users USING btree (mood)",
            "CREATE INDEX users_mood_idx ON app.users USING hash (mood)",
        )
    ]


def test_only_changed_tables_are_listed() -> None:
    changed = _users(mood=Column("mood", "app.mood", False, "'ok'::app.mood"))
    a = Schema({"app.users": _users(), "public.orders": _orders()})
    b = Schema({"app.users": changed, "public.orders": _orders()})
    diff = diff_schemas(a, b)
    assert [change.table for change in diff.tables_changed] == ["app.users"]
    assert not diff.is_empty


def test_as_dict_is_json_with_from_and_to() -> None:
    change = TableChange(
        "app.users",
        columns_added=["nickname"],
        columns_changed=[ColumnChange("email", "nullable", False, True)],
        indexes_removed=["users_mood_idx"],
        constraints_changed=[DefinitionChange("users_pkey", "PRIMARY KEY (id)", "UNIQUE (id)")],
    )
    diff = SchemaDiff(tables_added=["public.audit"], tables_changed=[change])
    data = json.loads(json.dumps(diff.as_dict()))
    assert data == {
        "tables_added": ["public.audit"],
        "tables_removed": [],
        "tables_changed": [
            {
                "table": "app.users",
                "columns_added": ["nickname"],
                "columns_removed": [],
                "columns_changed": [
                    {"column": "email", "attribute": "nullable", "from": False, "to": True}
                ],
                "indexes_added": [],
                "indexes_removed": ["users_mood_idx"],
                "indexes_changed": [],
                "constraints_added": [],
                "constraints_removed": [],
                "constraints_changed": [
                    {"name": "users_pkey", "from": "PRIMARY KEY (id)", "to": "UNIQUE (id)"}
                ],
            }
        ],
    }
    assert TableChange("x").is_empty
    assert not change.is_empty


# -- dump_schema, with a fake pg_dump -----------------------------------------

FAKE_PG_DUMP = """\
import json, os, sys
with open(os.environ["FAKE_RECORD"], "w") as fh:
    json.dump({"argv": sys.argv[1:], "password": os.environ.get("PGPASSWORD")}, fh)
if os.environ.get("FAKE_FAIL"):
    sys.stderr.write("pg_dump: error: could not connect using " + sys.argv[-1] + " "
                     + os.environ.get("PGPASSWORD", "") + "\\n")
    sys.exit(1)
sys.stdout.write("-- fake dump\\n")
"""

SECRET = "s3cr%t p@ss/word"
URI = "postgresql://alice:s3cr%25t%20p%40ss%2Fword@127.0.0.1:6543/pr-8?sslmode=disable"


@pytest.fixture
def fake_pg_dump(tmp_path: Path) -> tuple[str, Path]:
    script = tmp_path / "pg_dump"
    script.write_text(f"#!{sys.executable}\n{FAKE_PG_DUMP}")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script), tmp_path / "record.json"


def test_dump_schema_passes_the_password_in_the_environment_only(
    fake_pg_dump: tuple[str, Path],
) -> None:
    script, record = fake_pg_dump
    env = {**os.environ, "FAKE_RECORD": str(record)}
    env.pop("PGPASSWORD", None)
    assert dump_schema(URI, script, env=env) == "-- fake dump\n"
    seen = json.loads(record.read_text())
    assert seen["password"] == SECRET
    argv = seen["argv"]
    assert not [arg for arg in argv if "s3cr" in arg or "p@ss" in arg or "ss/w" in arg]
    for flag in ("--schema-only", "--no-owner", "--no-privileges", "--no-password"):
        assert flag in argv
    conninfo = argv[argv.index("--dbname") + 1]
    assert "host=127.0.0.1" in conninfo
    assert "port=6543" in conninfo
    assert "dbname=pr-8" in conninfo
    assert "user=alice" in conninfo
    assert "sslmode=disable" in conninfo
    assert "password" not in conninfo


def test_dump_schema_failure_never_shows_the_password(fake_pg_dump: tuple[str, Path]) -> None:
    script, record = fake_pg_dump
    env = {**os.environ, "FAKE_RECORD": str(record), "FAKE_FAIL": "1"}
    with pytest.raises(BranchlineError) as caught:
        dump_schema(URI, script, env=env)
    error = caught.value
    shown = json.dumps(error.as_dict()) + str(error) + repr(error)
    assert "pr-8" in str(error)
    assert "could not connect" in error.hint
    assert SECRET not in shown
    assert "s3cr%25t" not in shown


def test_dump_schema_with_a_missing_pg_dump(tmp_path: Path) -> None:
    with pytest.raises(BranchlineError, match="pg_dump not found"):
        dump_schema(URI, str(tmp_path / "nope" / "pg_dump"))


def test_dump_schema_rejects_a_malformed_uri_without_echoing_it(
    fake_pg_dump: tuple[str, Path],
) -> None:
    script, _ = fake_pg_dump
    with pytest.raises(BranchlineError) as caught:
        dump_schema("postgresql://alice:hunter2@h:1/db?nonsense=1", script)
    assert "hunter2" not in str(caught.value) + caught.value.hint
    assert caught.value.__cause__ is None
