"""Reading the failing statement out of a Postgres server log."""
# ruff: noqa: E501 - a verbatim server log

from __future__ import annotations

from branchline.migrations import database_env, failing_statement

LOG = """\
2026-11-27 23:28:31.077 UTC [23679] LOG:  checkpoint complete: wrote 927 buffers
2026-11-27 23:28:33.251 UTC [23700] ERROR:  relation "nope" does not exist at character 15
2026-11-27 23:28:33.251 UTC [23700] STATEMENT:  SELECT * FROM nope
2026-11-27 23:30:32.949 UTC [23701] ERROR:  check constraint "positive" of relation "products" is violated by some row
2026-11-27 23:30:32.949 UTC [23701] STATEMENT:  ALTER TABLE products ADD COLUMN price int NOT NULL DEFAULT 0;
\tALTER TABLE products ADD CONSTRAINT positive CHECK (price > 0);
2026-11-27 23:30:33.000 UTC [23679] LOG:  checkpoint starting: time
"""


def test_the_last_error_and_its_whole_statement() -> None:
    error, statement = failing_statement(LOG)
    assert error == 'check constraint "positive" of relation "products" is violated by some row'
    assert statement == (
        "ALTER TABLE products ADD COLUMN price int NOT NULL DEFAULT 0; "
        "ALTER TABLE products ADD CONSTRAINT positive CHECK (price > 0);"
    )


def test_an_error_without_statement_and_a_clean_log() -> None:
    assert failing_statement("2026-11-27 23:28:33.251 UTC [1] ERROR:  boom\n") == ("boom", None)
    assert failing_statement("2026-11-27 23:28:33.251 UTC [1] LOG:  ok\n") == (None, None)


def test_database_env_gives_libpq_variables() -> None:
    env = database_env("postgresql://bob:s3cret@127.0.0.1:5433/shop")
    assert env == {
        "DATABASE_URL": "postgresql://bob:s3cret@127.0.0.1:5433/shop",
        "PGHOST": "127.0.0.1",
        "PGPORT": "5433",
        "PGUSER": "bob",
        "PGPASSWORD": "s3cret",
        "PGDATABASE": "shop",
    }
