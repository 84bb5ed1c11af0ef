"""What a new test or preview branch holds, made before any code of the change runs.

A branch starts as a copy of production (a promoted standby in ~0.1 s, or a clone).
Then, still inside its creation (a crash leaves a `creating` branch that gc removes,
and its URI is handed to nobody before), the `DataPlan` shapes it:

- "copy":   `[database.mask]` rewrites the named columns and empties the named
            tables, as the application role (an expression runs with the rights the
            change's code gets anyway), in one transaction; then the planner's
            statistics of those tables (they sample column values) are rebuilt and
            materialized views refreshed;
- "schema" and "seed": every table but the migration journals is emptied (one
  TRUNCATE ... RESTART IDENTITY), free-standing sequences restart, materialized
  views are refreshed, large objects and statistics are dropped;
- "empty":  the database is dropped and made afresh, for the migrations to build.

Why truncate a copy rather than `pg_dump --schema-only` into a new cluster: the copy
is there already, TRUNCATE swaps each table's files for empty ones (milliseconds per
table, whatever the size), and the result is production's schema exactly (owners,
grants, extensions, the journal's rows, so the migrations apply only what the change
adds), where a dump and a restore take seconds and lose the journal's rows.

Error messages carry Postgres' primary message only: its DETAIL may quote a row.
"""

from __future__ import annotations

import difflib
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from branchline.config import Config
from branchline.config.data import MASKERS, TRUNCATE, SqlMask, split_target
from branchline.errors import UsageError

# Journal tables of common migration tools, and the column naming each migration:
# "schema" keeps their rows, so the migrations do not run again from the start.
JOURNALS = {
    "schema_migrations": "version",  # Rails, golang-migrate, dbmate, many hand-rolled
    "alembic_version": "version_num",  # Alembic
    "django_migrations": "name",  # Django
    "_prisma_migrations": "migration_name",  # Prisma
    "flyway_schema_history": "version",  # Flyway
    "knex_migrations": "name",  # Knex
}
ROWS = ("copy", "schema", "empty")  # what a branch's tables hold; "seed" is "schema"
_SYSTEM = ("pg_catalog", "information_schema", "pg_toast")
_ROW = "_branchline_row"  # names no application column is likely to have
_PART = "_branchline_part"
_N = "_branchline_n"


class MaskError(UsageError):
    """A `[database.mask]` rule does not fit the database."""

    default_hint = "Fix the rule under [database.mask] in branchline.toml."


@dataclass(frozen=True)
class MaskRule:
    """One `[database.mask]` rule: `key` as written, and what it does."""

    key: str
    masker: str | None = None  # a name of config.data.MASKERS, or "truncate"
    sql: str | None = None  # an SQL expression over the row's columns

    @property
    def truncates(self) -> bool:
        return self.masker == TRUNCATE

    @property
    def table(self) -> tuple[str | None, str]:
        """(schema or None, table)."""
        parts = split_target(self.key)
        if self.truncates:
            return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])
        return (parts[0], parts[1]) if len(parts) == 3 else (None, parts[0])

    @property
    def column(self) -> str:
        return split_target(self.key)[-1]

    def describe(self) -> str:
        return f'"{self.key}" = ' + (
            f'{{ sql = "{self.sql}" }}' if self.sql else f'"{self.masker}"'
        )


@dataclass(frozen=True)
class DataPlan:
    """What a branch is made to hold (`data`) and how a copy is masked."""

    data: str = "copy"
    masks: tuple[MaskRule, ...] = ()

    @property
    def rows(self) -> str:
        return "schema" if self.data == "seed" else self.data

    @property
    def changes_anything(self) -> bool:
        return self.rows != "copy" or bool(self.masks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "data": self.data,
            "masks": [{"key": m.key, "masker": m.masker, "sql": m.sql} for m in self.masks],
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> DataPlan:
        if not raw:
            return cls()
        masks = tuple(
            MaskRule(str(m["key"]), m.get("masker"), m.get("sql")) for m in raw.get("masks", ())
        )
        return cls(str(raw.get("data", "copy")), masks)

    def describe(self) -> str:
        if self.rows == "empty":
            return "a fresh database (no tables until the migrations make them)"
        if self.rows == "schema":
            return "production's schema, no rows"
        if not self.masks:
            return "production's data"
        return "production's data, masked: " + ", ".join(m.describe() for m in self.masks)


def plan_for(config: Config, data: str) -> DataPlan:
    """The plan a test job's or a preview's `data` means under `config`: a copy is
    masked by `[database.mask]`; the other choices hold no production rows. The
    masks are a rule of production's: take them from the production branch's config
    (the kit's), never from the change's own, which could drop them."""
    if data not in (*ROWS, "seed"):
        raise UsageError(f"unknown data choice {data!r}", hint='Use "copy", "schema", "empty" '
                         'or "seed".')  # fmt: skip
    if data != "copy":
        return DataPlan(data)
    return DataPlan(data, tuple(_rule(key, value) for key, value in config.database.mask.items()))


def _rule(key: str, value: str | SqlMask) -> MaskRule:
    return MaskRule(key, sql=value.sql) if isinstance(value, SqlMask) else MaskRule(key, value)


@dataclass
class ShapeReport:
    """What shaping a branch did, for its record and the run's log."""

    seconds: float = 0.0
    emptied: int = 0  # tables emptied ("schema")
    masked: list[str] = field(default_factory=list)  # rule keys applied
    rows_masked: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 3),
            "tables_emptied": self.emptied,
            "masked": self.masked,
            "rows_masked": self.rows_masked,
        }


Conn = psycopg.Connection[tuple[Any, ...]]


# -- "schema": production's schema, no rows ----------------------------------------------


def _user_relations(kinds: str, *, partitions: bool = True) -> sql.Composed:
    """Relations of the given kinds that the application made: not the system's, not
    an extension's (PostGIS' spatial_ref_sys holds reference data, not user data);
    without `partitions`, a partitioned table stands for its partitions."""
    return sql.SQL(
        "SELECT c.oid, n.nspname, c.relname FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind = ANY({kinds}) AND n.nspname <> ALL({system}) "
        "AND n.nspname NOT LIKE 'pg\\_temp\\_%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%' "
        "AND (NOT c.relispartition OR {partitions}) "
        "AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass "
        "AND d.objid = c.oid AND d.deptype = 'e') ORDER BY c.oid"
    ).format(
        kinds=sql.Literal(list(kinds)), system=sql.Literal(list(_SYSTEM)),
        partitions=sql.Literal(partitions),
    )  # fmt: skip


def clear_rows(conn: Conn) -> int:
    """Empty every table but the journals, as the application role (their owner: no
    trigger runs with more rights than the application has); the number emptied."""
    tables = [
        (schema, name)
        for _oid, schema, name in conn.execute(_user_relations("rp", partitions=False))
        if name not in JOURNALS
    ]
    try:
        with conn.transaction():
            if tables:
                conn.execute(
                    sql.SQL("TRUNCATE TABLE {} RESTART IDENTITY").format(
                        sql.SQL(", ").join(sql.Identifier(s, t) for s, t in tables)
                    )
                )
            # Sequences no column owns (RESTART IDENTITY resets those that one does).
            for schema, name in conn.execute(_free_sequences()).fetchall():
                conn.execute(
                    sql.SQL("ALTER SEQUENCE {} RESTART").format(sql.Identifier(schema, name))
                )
            conn.execute(
                "SELECT lo_unlink(oid) FROM pg_largeobject_metadata "
                "WHERE lomowner = current_user::regrole"
            )
        refresh_views(conn)
    except psycopg.Error as exc:
        raise UsageError(
            f"cannot empty the branch's tables: {exc.diag.message_primary or exc}",
            hint="Every table must belong to the application role (the one migrations "
            "run as); see `branchline db branches list` for the branch.",
        ) from None
    return len(tables)


def _free_sequences() -> sql.Composed:
    return sql.SQL(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind = 'S' AND n.nspname <> ALL({system}) AND NOT EXISTS ("
        "SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid "
        "AND d.deptype IN ('a', 'i', 'e'))"
    ).format(system=sql.Literal(list(_SYSTEM)))


def forget_statistics(conn: Conn, tables: Sequence[int] | None) -> None:
    """As a superuser: planner statistics hold samples of column values (pg_stats'
    most common values, which a table's owner reads), so those of `tables` go (None:
    of every user table)."""
    if tables is not None and not tables:
        return
    chosen = (
        sql.SQL("SELECT oid FROM ({}) AS r").format(_user_relations("rpm"))
        if tables is None
        else sql.SQL("SELECT unnest({}::oid[])").format(sql.Literal(list(tables)))
    )
    conn.execute(sql.SQL("DELETE FROM pg_statistic WHERE starelid IN ({})").format(chosen))
    conn.execute(
        sql.SQL(
            "DELETE FROM pg_statistic_ext_data WHERE stxoid IN "
            "(SELECT oid FROM pg_statistic_ext WHERE stxrelid IN ({}))"
        ).format(chosen)
    )
    # Query texts with their literal values, kept across the copy when the module is on.
    if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'").fetchone():
        conn.execute("SELECT pg_stat_statements_reset()")


def refresh_views(conn: Conn) -> list[int]:
    """Materialized views hold rows of their own: computed again from what is left
    (those never populated stay so), oldest first, as later ones may read earlier
    ones. Returns their oids."""
    views = conn.execute(
        sql.SQL(
            "SELECT c.oid, n.nspname, c.relname FROM ({}) AS r JOIN pg_class c ON c.oid = r.oid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relispopulated ORDER BY r.oid"
        ).format(_user_relations("m"))
    ).fetchall()
    for _oid, schema, name in views:
        conn.execute(sql.SQL("REFRESH MATERIALIZED VIEW {}").format(sql.Identifier(schema, name)))
    return [int(oid) for oid, _s, _n in views]


# -- "empty": a fresh database ---------------------------------------------------------


def recreate_database(conn: Conn, database: str, owner: str) -> None:
    """Drop `database` and make it again, owned by `owner`; `conn` is a superuser's,
    to another database of the cluster."""
    name, role = sql.Identifier(database), sql.Identifier(owner)
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
    conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(name, role))


# -- "copy": masking -------------------------------------------------------------------


@dataclass(frozen=True)
class _Table:
    oid: int
    schema: str
    name: str
    columns: Mapping[str, tuple[bool, str]]  # column -> (NOT NULL, generated kind)
    key: str | None = None  # its primary key, when that is one integer column

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)


def apply_masks(conn: Conn, rules: Sequence[MaskRule], report: ShapeReport) -> list[int]:
    """Apply `rules` in one transaction, as the branch's application role: columns
    first (triggers run, as they would for any update: a column they keep follows the
    masked one), then the tables to empty. Returns the oids of every table written,
    by the rules or by triggers (their statistics must go)."""
    by_table: dict[int, tuple[_Table, list[MaskRule]]] = {}
    truncated: dict[int, tuple[_Table, MaskRule]] = {}
    for rule in rules:
        table = _find_table(conn, rule)
        if rule.truncates:
            truncated[table.oid] = (table, rule)
        else:
            _check_column(table, rule)
            by_table.setdefault(table.oid, (table, []))[1].append(rule)
    salt = secrets.token_hex(16)  # "hash": equal values stay equal in this branch only
    with conn.transaction():
        conn.execute("SET LOCAL statement_timeout = 0")
        for table, column_rules in by_table.values():
            try:
                cur = conn.execute(_update(table, column_rules, salt))
            except psycopg.Error as exc:
                raise _failed(column_rules, exc) from None
            report.rows_masked += max(cur.rowcount, 0)
            report.masked += [r.key for r in column_rules]
        if truncated:
            try:
                conn.execute(
                    sql.SQL("TRUNCATE TABLE {} RESTART IDENTITY").format(
                        sql.SQL(", ").join(t.ident for t, _r in truncated.values())
                    )
                )
            except psycopg.Error as exc:
                raise _failed([r for _t, r in truncated.values()], exc) from None
            report.masked += [r.key for _t, r in truncated.values()]
        # Every table this transaction wrote, triggers' writes elsewhere included.
        written = conn.execute(
            "SELECT relid FROM pg_stat_xact_user_tables WHERE n_tup_ins + n_tup_upd + n_tup_del > 0"
        ).fetchall()
    return sorted({*by_table, *truncated, *(int(r[0]) for r in written)})


def analyze(conn: Conn, tables: Sequence[int]) -> None:
    """Gather `tables`' statistics again, from what they hold now."""
    for oid in tables:
        conn.execute(sql.SQL("ANALYZE {}").format(_qualified(conn, oid)))


def _qualified(conn: Conn, oid: int) -> sql.Identifier:
    row = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE c.oid = %s",
        (oid,),
    ).fetchone()
    assert row is not None, f"relation {oid} vanished"
    return sql.Identifier(str(row[0]), str(row[1]))


def _find_table(conn: Conn, rule: MaskRule) -> _Table:
    schema, name = rule.table
    found = conn.execute(
        "SELECT c.oid, n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relname = %s AND c.relkind IN ('r', 'p') AND (%s::text IS NULL OR n.nspname = %s) "
        "AND n.nspname <> ALL(%s) ORDER BY n.nspname",
        (name, schema, schema, list(_SYSTEM)),
    ).fetchall()
    if not found:
        known = [
            str(r[0])
            for r in conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind IN ('r', 'p') AND n.nspname <> ALL(%s)",
                (list(_SYSTEM),),
            ).fetchall()
        ]
        where = f" in schema {schema}" if schema else ""
        raise MaskError(
            f"[database.mask] {rule.describe()}: production has no table {name}{where}",
            hint=_close(name, known, "tables")
            + " Fix or remove the rule under [database.mask] in branchline.toml.",
        )
    if len(found) > 1:
        schemas = ", ".join(str(r[1]) for r in found)
        raise MaskError(
            f"[database.mask] {rule.describe()}: a table {name} is in several schemas ({schemas})",
            hint=f'Name the schema: `"{found[0][1]}.{rule.key}"`.',
        )
    oid, schema_name = int(found[0][0]), str(found[0][1])
    columns = {
        str(col): (bool(not_null), str(generated))
        for col, not_null, generated in conn.execute(
            "SELECT attname, attnotnull, attgenerated FROM pg_attribute "
            "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped",
            (oid,),
        ).fetchall()
    }
    key = conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = i.indkey[0] WHERE i.indrelid = %s AND i.indisprimary "
        "AND i.indnatts = 1 AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)",
        (oid,),
    ).fetchone()
    return _Table(oid, schema_name, name, columns, str(key[0]) if key else None)


def _check_column(table: _Table, rule: MaskRule) -> None:
    column = rule.column
    if column not in table.columns:
        raise MaskError(
            f"[database.mask] {rule.describe()}: table {table.schema}.{table.name} has no "
            f"column {column}",
            hint=_close(column, list(table.columns), "columns")
            + " Fix or remove the rule under [database.mask] in branchline.toml.",
        )
    not_null, generated = table.columns[column]
    if generated:
        raise MaskError(
            f"[database.mask] {rule.describe()}: {table.name}.{column} is a generated column",
            hint="Mask the columns it is computed from; it follows them.",
        )
    if rule.masker == "null" and not_null:
        raise MaskError(
            f'[database.mask] {rule.describe()}: {table.name}.{column} is NOT NULL, so "null" '
            "cannot mask it",
            hint='Use "redact" (a fixed text), "hash", or an expression such as '
            "`{ sql = \"'x'\" }`.",
        )


def _close(word: str, known: Iterable[str], noun: str) -> str:
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f"Did you mean `{close[0]}`?" if close else f"It has no {noun} of that name."


def _failed(rules: Sequence[MaskRule], exc: psycopg.Error) -> MaskError:
    message = exc.diag.message_primary or type(exc).__name__  # never DETAIL: it quotes rows
    described = "; ".join(r.describe() for r in rules)
    hint = "Fix the rule under [database.mask] in branchline.toml."
    if isinstance(exc, psycopg.errors.UniqueViolation):
        hint = 'The column must stay unique: use "email", "name", "phone" or "hash" on it.'
    elif isinstance(exc, psycopg.errors.FeatureNotSupported | psycopg.errors.ForeignKeyViolation):
        hint = 'Also empty the tables that refer to it (`"<table>" = "truncate"`).'
    return MaskError(f"[database.mask] {described}: {message}", hint=hint)


def _update(table: _Table, rules: Sequence[MaskRule], salt: str) -> sql.Composed:
    """One UPDATE of `table` setting every masked column. Numbered maskers take the
    row's integer primary key (user-42 is user 42 in every branch), or else its
    position (by physical order, the same in every copy of one state; a row of a
    partitioned table known by its partition and its place there), which costs a
    sort and a join: about twice the time."""
    row = sql.Identifier("t")
    numbered = any(r.masker in ("email", "name", "phone") for r in rules)
    by_position = numbered and table.key is None
    n = (
        sql.SQL("m.{}").format(sql.Identifier(_N))
        if by_position
        else sql.SQL("t.{}").format(sql.Identifier(table.key or ""))
    )
    sets = []
    for rule in rules:
        column = sql.SQL("{}.{}").format(row, sql.Identifier(rule.column))
        value = _masked_value(rule, column, n, salt)
        sets.append(sql.SQL("{} = {}").format(sql.Identifier(rule.column), value))
    update = sql.SQL("UPDATE {} AS t SET {}").format(table.ident, sql.SQL(", ").join(sets))
    if not by_position:
        return update
    return sql.SQL(
        "{} FROM (SELECT tableoid AS {part}, ctid AS {row}, "
        "row_number() OVER (ORDER BY tableoid, ctid) AS {n} FROM {table}) AS m "
        "WHERE t.tableoid = m.{part} AND t.ctid = m.{row}"
    ).format(update, part=sql.Identifier(_PART), row=sql.Identifier(_ROW), n=sql.Identifier(_N),
             table=table.ident)  # fmt: skip


def _masked_value(
    rule: MaskRule, column: sql.Composable, n: sql.Composable, salt: str
) -> sql.Composable:
    if rule.sql is not None:
        return sql.SQL("({})").format(sql.SQL(rule.sql))  # the user's own expression
    assert rule.masker in MASKERS, rule.masker
    if rule.masker == "null":
        return sql.SQL("NULL")
    fake = {
        "email": sql.SQL("'user-' || {} || '@example.invalid'").format(n),
        "name": sql.SQL("'User ' || {}").format(n),
        "phone": sql.SQL("'+1-555-' || lpad({}::text, 7, '0')").format(n),
        "hash": sql.SQL("md5({} || {}::text)").format(sql.Literal(salt), column),
        "redact": sql.SQL("'[redacted]'"),
    }[rule.masker]
    return sql.SQL("CASE WHEN {} IS NULL THEN NULL ELSE {} END").format(column, fake)
