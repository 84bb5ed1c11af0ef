"""What a new branch holds, on real clusters: production's schema without its rows,
a fresh database, a masked copy; the journal kept, sequences restarted, statistics
and materialized views that would still show production's values dropped; a rule
that does not fit the database fails the creation and leaves nothing behind."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from branchline.branchdata import DataPlan, MaskError, MaskRule
from branchline.config import load_config
from branchline.migrations import run_on_branch
from branchline.providers.database.local import LocalDatabaseProvider
from branchline.schemadiff import normalize_dump
from branchline.store import Store
from branchline.store import branches as branch_rows
from tests.integration.test_database_local import _provider, execute, run, uri

pytestmark = pytest.mark.integration

PEOPLE = [
    ("alice@corp.example", "Alice Liddell", "+44 20 7946 0001", "s3cret-alice"),
    ("bob@corp.example", "Bob Stone", "+44 20 7946 0002", "s3cret-bob"),
    ("carol@corp.example", "Carol Finch", None, "s3cret-carol"),
]
ADDRESSES = [p[0] for p in PEOPLE]
SCHEMA = """
CREATE TABLE schema_migrations (version text PRIMARY KEY);
INSERT INTO schema_migrations VALUES ('001'), ('002');
CREATE TABLE users (
    id serial PRIMARY KEY, email text UNIQUE NOT NULL, name text, phone varchar(40),
    password_hash text NOT NULL, lower_email text GENERATED ALWAYS AS (lower(email)) STORED);
CREATE TABLE sessions (token text PRIMARY KEY, user_id int REFERENCES users);
CREATE SEQUENCE invoice_numbers START 1000;
CREATE TABLE invoices (number int DEFAULT nextval('invoice_numbers'), user_id int);
CREATE MATERIALIZED VIEW mailing AS SELECT email FROM users;
-- A trigger keeps a search column up to date: masking must let it run.
CREATE TABLE profiles (user_id int, contact text);
CREATE FUNCTION copy_contact() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN UPDATE profiles SET contact = NEW.email WHERE user_id = NEW.id; RETURN NEW; END $$;
CREATE TRIGGER users_contact AFTER UPDATE ON users FOR EACH ROW EXECUTE FUNCTION copy_contact();
-- Partitions: row positions (ctid) repeat from one to the next.
CREATE TABLE signups (id int, email text) PARTITION BY RANGE (id);
CREATE TABLE signups_early PARTITION OF signups FOR VALUES FROM (0) TO (100);
CREATE TABLE signups_late PARTITION OF signups FOR VALUES FROM (100) TO (200);
"""
MASKS = (
    MaskRule("users.email", "email"),
    MaskRule("users.name", "name"),
    MaskRule("public.users.phone", "phone"),
    MaskRule("users.password_hash", sql="'masked-' || id"),
    MaskRule("sessions", "truncate"),
    MaskRule("signups.email", "email"),
)


@pytest.fixture(scope="module")
def db(shared_store: Store, cluster_root: Path) -> Iterator[LocalDatabaseProvider]:
    """Production with users, sessions, invoices, a materialized view and statistics."""
    for provider in _provider(shared_store, cluster_root):
        production = uri(provider, "production")
        with psycopg.connect(production, autocommit=True) as conn:
            conn.execute(SCHEMA)
            conn.execute("SELECT setval('users_id_seq', 41)")  # ids are not positions
            for email, name, phone, password in PEOPLE:
                conn.execute(
                    "INSERT INTO users (email, name, phone, password_hash) VALUES (%s, %s, %s, %s)",
                    (email, name, phone, hashlib.sha256(password.encode()).hexdigest()),
                )
            conn.execute("INSERT INTO profiles SELECT id, email FROM users")
            conn.execute("INSERT INTO sessions SELECT 'token-' || id, id FROM users")
            conn.execute("INSERT INTO invoices (user_id) SELECT id FROM users")
            conn.execute("INSERT INTO signups SELECT (id - 41) * 50, email FROM users")
            conn.execute("REFRESH MATERIALIZED VIEW mailing")
            conn.execute("ANALYZE")  # pg_stats now samples the addresses
        yield provider


def leaks(url: str, needles: list[str]) -> list[str]:
    """Every place in the database where one of `needles` can be read by its
    application role: each column of each table and view, and pg_stats."""
    found = []
    with psycopg.connect(url, autocommit=True) as conn:
        relations = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'm', 'v', 'p') "
            "AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
        for schema, name in relations:
            relation = psycopg.sql.Identifier(schema, name)
            query = psycopg.sql.SQL("SELECT t::text FROM {} AS t").format(relation)
            for (row,) in conn.execute(query):
                found += [f"{name}: {needle}" for needle in needles if needle in row]
        stats = conn.execute(
            "SELECT tablename, attname, most_common_vals::text, histogram_bounds::text "
            "FROM pg_stats WHERE schemaname = 'public'"
        ).fetchall()
        for table, column, *values in stats:
            text = " ".join(v for v in values if v)
            found += [f"pg_stats {table}.{column}: {n}" for n in needles if n in text]
    return found


def test_the_probe_sees_production_values(db: LocalDatabaseProvider) -> None:
    """The leak probe is worth something: on an unmasked copy it finds each address
    in the table, the trigger-kept column, the view and the statistics."""
    run(db, db.create_branch("plain-copy"))
    found = leaks(uri(db, "plain-copy"), ADDRESSES)
    for place in ("users", "profiles", "mailing", "pg_stats users.email"):
        assert any(f.startswith(place + ":") for f in found), (place, found)


def test_schema_keeps_the_schema_and_the_journal_and_no_row(db: LocalDatabaseProvider) -> None:
    branch = run(db, db.create_branch("schema-only", data=DataPlan("schema")))
    url = uri(db, "schema-only")
    assert branch.detail["data"]["data"] == "schema"
    # All but the journal; a partitioned table counts once.
    assert branch.detail["shaped"]["tables_emptied"] == 5
    assert execute(url, "SELECT version FROM schema_migrations ORDER BY 1") == [("001",), ("002",)]
    for table in ("users", "sessions", "invoices", "profiles", "mailing", "signups"):
        assert execute(url, f"SELECT count(*) FROM {table}") == [(0,)], table  # noqa: S608
    assert leaks(url, ADDRESSES) == []
    # Sequences start again: the first user is #1, the first invoice 1000.
    assert execute(url, "INSERT INTO users (email, password_hash) VALUES ('a@x', 'x') "
                   "RETURNING id") == [(1,)]  # fmt: skip
    assert execute(url, "INSERT INTO invoices (user_id) VALUES (1) RETURNING number") == [(1000,)]
    same = [normalize_dump(run(db, db.schema_dump(b))) for b in ("schema-only", "production")]
    assert same[0] == same[1]
    # Production is untouched.
    assert execute(uri(db, "production"), "SELECT count(*) FROM users") == [(3,)]


def test_empty_is_a_fresh_database(db: LocalDatabaseProvider) -> None:
    run(db, db.create_branch("fresh", data=DataPlan("empty")))
    url = uri(db, "fresh")
    tables = execute(url, "SELECT relname FROM pg_class c JOIN pg_namespace n ON "
                     "n.oid = c.relnamespace WHERE nspname = 'public'")  # fmt: skip
    assert tables == []
    # Its application role owns it and may build it (what the migrations do).
    execute(url, "CREATE TABLE t (id int); CREATE EXTENSION IF NOT EXISTS pgcrypto")
    owner = "SELECT current_user, pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s"
    assert execute(url, owner, ("app",)) == [("app", "app")]


def test_a_masked_copy_shows_no_production_user(db: LocalDatabaseProvider) -> None:
    began = time.monotonic()
    branch = run(db, db.create_branch("masked", data=DataPlan("copy", MASKS)))
    took = time.monotonic() - began
    url = uri(db, "masked")
    assert leaks(url, ADDRESSES) == []
    assert leaks(url, [p[1] for p in PEOPLE] + [p[2] for p in PEOPLE if p[2]]) == []
    rows = execute(url, "SELECT id, email, name, phone, password_hash, lower_email "
                   "FROM users ORDER BY id")  # fmt: skip
    # Numbered by their primary key: user 42 is user-42 in every branch.
    assert rows == [
        (42, "user-42@example.invalid", "User 42", "+1-555-0000042", "masked-42",
         "user-42@example.invalid"),
        (43, "user-43@example.invalid", "User 43", "+1-555-0000043", "masked-43",
         "user-43@example.invalid"),
        (44, "user-44@example.invalid", "User 44", None, "masked-44", "user-44@example.invalid"),
    ]  # fmt: skip
    # The trigger ran (the derived column follows), the view was computed again, the
    # sessions (production's sign-ins) are gone, the rest is production's.
    assert execute(url, "SELECT contact FROM profiles ORDER BY user_id")[0] == (
        "user-42@example.invalid",
    )
    assert execute(url, "SELECT count(*) FROM mailing") == [(3,)]
    assert execute(url, "SELECT count(*) FROM sessions") == [(0,)]
    assert execute(url, "SELECT count(*) FROM invoices") == [(3,)]
    # No primary key: numbered by position, partition by partition.
    signups = execute(url, "SELECT email FROM signups ORDER BY email")
    assert signups == [(f"user-{n}@example.invalid",) for n in (1, 2, 3)]
    assert sorted(branch.detail["shaped"]["masked"]) == sorted(m.key for m in MASKS)
    print(f"masked copy made in {took:.2f} s, {branch.detail['shaped']['seconds']:.3f} s masking")


def test_reset_masks_again(db: LocalDatabaseProvider) -> None:
    run(db, db.create_branch("masked-reset", data=DataPlan("copy", MASKS)))
    run(db, db.reset_branch("masked-reset"))
    assert leaks(uri(db, "masked-reset"), ADDRESSES) == []
    assert execute(uri(db, "masked-reset"), "SELECT count(*) FROM users") == [(3,)]


def test_hash_keeps_equal_values_equal_and_redact_and_null(db: LocalDatabaseProvider) -> None:
    rules = (MaskRule("profiles.contact", "hash"), MaskRule("users.email", "hash"),
             MaskRule("users.name", "redact"), MaskRule("users.phone", "null"),
             MaskRule("signups.email", "hash"))  # fmt: skip
    run(db, db.create_branch("hashed", data=DataPlan("copy", rules)))
    url = uri(db, "hashed")
    # The trigger copies the hashed e-mail, and profiles' own hash of the same value
    # is the same: equal values stay equal within the branch.
    joined = execute(url, "SELECT count(*) FROM users u JOIN profiles p ON p.contact = u.email")
    assert joined == [(3,)]
    assert execute(url, "SELECT DISTINCT name, phone FROM users") == [("[redacted]", None)]
    assert leaks(url, ADDRESSES) == []


@pytest.mark.parametrize(
    ("rule", "says", "hint"),
    [
        (MaskRule("users.emial", "email"), "table public.users has no column emial",
         "Did you mean `email`?"),
        (MaskRule("user.email", "email"), "production has no table user", "`users`"),
        (MaskRule("users.password_hash", "null"), "is NOT NULL", '"redact"'),
        (MaskRule("users.lower_email", "email"), "is a generated column", "computed from"),
        (MaskRule("users", "truncate"), "cannot truncate a table referenced in a foreign key",
         "truncate"),
        (MaskRule("users.email", "redact"), "duplicate key value", "must stay unique"),
        (MaskRule("users.email", sql="nonsense("), "syntax error", "[database.mask]"),
    ],
)  # fmt: skip
def test_a_rule_that_does_not_fit_fails_clearly_and_leaves_nothing(
    db: LocalDatabaseProvider, rule: MaskRule, says: str, hint: str
) -> None:
    with pytest.raises(MaskError) as failed:
        run(db, db.create_branch("misfit", data=DataPlan("copy", (rule,))))
    assert failed.value.message.startswith(f"[database.mask] {rule.describe()}: ")
    assert says in failed.value.message and hint in failed.value.hint, failed.value.as_dict()
    for address in ADDRESSES:  # Postgres' DETAIL would quote the row: never shown
        assert address not in failed.value.message
    assert run(db, db.get_branch("misfit")) is None
    assert not db.cluster("misfit").home.exists()


def test_shaping_costs_little(db: LocalDatabaseProvider, shared_store: Store) -> None:
    """Measured: a plain copy, the schema only and a masked copy, one after another."""
    times = {}
    for name, plan in (("t-copy", None), ("t-schema", DataPlan("schema")),
                       ("t-masked", DataPlan("copy", MASKS))):  # fmt: skip
        began = time.monotonic()
        run(db, db.create_branch(name, data=plan))
        times[name] = time.monotonic() - began

    async def shaped(name: str) -> float:
        async with shared_store.connect() as conn:
            row = await branch_rows.get(conn, db.project, name)
        assert row is not None
        return float(row.detail.get("shaped", {}).get("seconds", 0.0))

    shaping = {n: run(db, shaped(n)) for n in times}
    print("create:", {n: f"{t:.2f} s" for n, t in times.items()},
          "shaping:", {n: f"{t:.3f} s" for n, t in shaping.items()})  # fmt: skip
    assert shaping["t-schema"] < 1.0 and shaping["t-masked"] < 1.0


def test_a_hook_past_its_time_limit_is_stopped_with_its_children(
    db: LocalDatabaseProvider, tmp_path: Path
) -> None:
    """A seed or predestroy that hangs is killed, its whole process group too."""
    (tmp_path / "branchline.toml").write_text(
        '[project]\nname = "hang"\nzone = "hang.localhost"\n[database]\nmigrate = "true"\n'
    )
    config = load_config(tmp_path / "branchline.toml", env={})
    marker = tmp_path / "child.pid"
    # The child sleeps in the background; the hook itself waits on it.
    hang = ["sh", "-c", f"sleep 60 & echo $! > {marker}; echo started; wait"]
    code, seconds, tail = run(db, run_on_branch(config, db, "production", hang, timeout=1.0,
                                                what="seed"))  # fmt: skip
    assert code == -9 and 1.0 <= seconds < 10
    assert tail == ["started", "seed: timed out after 1s; its processes were stopped"]
    child = int(marker.read_text())
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (
        not Path(f"/proc/{child}").exists()
        or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
    )
