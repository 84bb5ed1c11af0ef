"""Schema diffs between database branches, and schema fingerprints.

Two views of a schema:

- text: `pg_dump --schema-only`, normalised (`normalize_dump`) so that two
  databases with the same schema give byte-identical text whatever order their
  objects were created in. Noise is dropped (the `\\restrict` keys newer
  pg_dump versions emit, version and timestamp comments, `SET` lines, owners,
  privileges), and the dump's top-level blocks are sorted by (type, schema,
  name). That text feeds `unified_diff` (what `branchline db diff` shows) and
  `fingerprint` (recorded per branch after migrations). It is meant for
  comparing, not for restoring: the sorted order ignores dependencies.
- structure: tables, columns, indexes and constraints read from the catalogs
  (`describe_schema`), compared by `diff_schemas` (what `--json` prints).
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import tuple_row

from branchline.errors import BranchlineError

__all__ = [
    "Column",
    "ColumnChange",
    "DefinitionChange",
    "Schema",
    "SchemaDiff",
    "SchemaDumpError",
    "Table",
    "TableChange",
    "describe_schema",
    "diff_schemas",
    "dump_schema",
    "fingerprint",
    "normalize_dump",
    "unified_diff",
]

DUMP_TIMEOUT = 600.0


class SchemaDumpError(BranchlineError):
    """pg_dump could not dump a branch's schema."""

    default_hint = "Check that the branch's database is running and its URI is right."


# -- dumping ----------------------------------------------------------------


def dump_schema(
    uri: str,
    pg_dump: str,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = DUMP_TIMEOUT,
) -> str:
    """Run `pg_dump --schema-only` against `uri` and return its raw output.

    The password never reaches a command line: it is taken out of the URI and
    handed to pg_dump in `PGPASSWORD`. `env` is the environment pg_dump runs
    with (default: this process's). Errors never contain the password.
    """
    try:
        params = conninfo_to_dict(uri)
    except psycopg.ProgrammingError:
        raise SchemaDumpError(
            "the database URI is not valid",
            hint="Expected postgresql://user:password@host:port/dbname.",
        ) from None  # libpq's message may quote the URI, password included
    password = params.pop("password", None)
    run_env = dict(os.environ if env is None else env)
    if password is not None:
        run_env["PGPASSWORD"] = str(password)
    secret = str(password) if password else run_env.get("PGPASSWORD") or None
    target = _describe_target(params)
    args = [
        pg_dump,
        "--schema-only",
        "--no-owner",
        "--no-privileges",
        "--no-tablespaces",
        "--no-subscriptions",  # their connection strings can hold passwords
        "--encoding=UTF8",
        "--no-password",  # never wait for a password prompt
        "--dbname",
        make_conninfo("", **params),
    ]
    try:
        result = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=run_env,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise SchemaDumpError(
            f"pg_dump not found at {pg_dump}",
            hint="Install the PostgreSQL client tools or set BRANCHLINE_PG_BIN.",
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise SchemaDumpError(
            f"pg_dump of {target} did not finish within {timeout:.0f} s",
            hint="Check that nothing holds long locks on the database, then try again.",
        ) from exc
    stderr = result.stderr.decode("utf-8", errors="replace")
    if result.returncode != 0:
        detail = _redact(stderr.strip(), secret)[-800:] or "no output"
        hint = f"pg_dump said: {detail}"
        if "version mismatch" in stderr:
            hint += " (use a pg_dump at least as new as the server: set BRANCHLINE_PG_BIN)"
        raise SchemaDumpError(
            f"pg_dump of {target} failed (exit {result.returncode})",
            hint=hint,
        )
    return result.stdout.decode("utf-8", errors="replace")


def _describe_target(params: Mapping[str, object]) -> str:
    """`host:port/dbname` for messages: never the password or other options."""
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = str(params.get("port") or "5432")
    dbname = str(params.get("dbname") or params.get("user") or "")
    return f"database {dbname!r} at {host}:{port}"


def _redact(text: str, secret: str | None) -> str:
    if not secret:
        return text
    for form in {secret, quote(secret, safe=""), quote(secret)}:
        text = text.replace(form, "***")
    return text


# -- normalising ------------------------------------------------------------

# `-- Name: users; Type: TABLE; Schema: app; Owner: branchline` (optionally
# `; Tablespace: x`); data entries read `-- Data for Name: ...`. Without the
# owner, it is also the header normalize_dump writes (so it is idempotent).
_NAME_RE = re.compile(
    r"^-- (?:Data for )?Name: (?P<name>.*); Type: (?P<type>.*?); "
    r"Schema: (?P<schema>.*?)(?:; Owner:.*)?$"
)
_FOOTER = "-- PostgreSQL database dump complete"
_NOISE_RES = tuple(
    re.compile(pattern)
    for pattern in (
        r"^\\(?:un)?restrict\b.*$",  # random keys, pg_dump >= 17.6/16.10/15.14/...
        r"^\\connect\b.*$",
        r"^SET [A-Za-z_.]+ = .*;$",
        r"^SELECT pg_catalog\.set_config\('search_path', .*\);$",
        r"^-- (?:Started|Completed) on .*$",
        r"^-- Dumped (?:from database|by pg_dump) version .*$",
        r"^-- PostgreSQL database dump(?: complete)?$",
        r"^ALTER [A-Z][A-Z ]* .+ OWNER TO .+;$",
    )
)
# Privileges and data are not schema.
_DROPPED_TYPES = frozenset(
    {"ACL", "DEFAULT ACL", "TABLE DATA", "SEQUENCE SET", "BLOB", "BLOBS", "BLOB DATA"}
)
# Readable, stable order; not a restorable one (see the module docstring).
_TYPE_ORDER = (
    "SCHEMA",
    "EXTENSION",
    "PROCEDURAL LANGUAGE",
    "COLLATION",
    "SHELL TYPE",
    "TYPE",
    "DOMAIN",
    "FUNCTION",
    "PROCEDURE",
    "AGGREGATE",
    "OPERATOR",
    "OPERATOR FAMILY",
    "OPERATOR CLASS",
    "CONVERSION",
    "CAST",
    "TRANSFORM",
    "TEXT SEARCH PARSER",
    "TEXT SEARCH TEMPLATE",
    "TEXT SEARCH DICTIONARY",
    "TEXT SEARCH CONFIGURATION",
    "FOREIGN DATA WRAPPER",
    "SERVER",
    "USER MAPPING",
    "TABLE",
    "FOREIGN TABLE",
    "TABLE ATTACH",
    "SEQUENCE",
    "SEQUENCE OWNED BY",
    "DEFAULT",
    "VIEW",
    "MATERIALIZED VIEW",
    "CONSTRAINT",
    "CHECK CONSTRAINT",
    "INDEX",
    "INDEX ATTACH",
    "STATISTICS",
    "FK CONSTRAINT",
    "RULE",
    "TRIGGER",
    "EVENT TRIGGER",
    "ROW SECURITY",
    "POLICY",
    "PUBLICATION",
    "PUBLICATION TABLE",
    "PUBLICATION TABLES IN SCHEMA",
    "SUBSCRIPTION",
    "COMMENT",
    "SECURITY LABEL",
)
_TYPE_RANK = {name: rank for rank, name in enumerate(_TYPE_ORDER)}


@dataclass(frozen=True, order=True)
class _Block:
    rank: int
    type: str
    schema: str
    name: str
    body: str

    def render(self) -> str:
        if not self.type:  # statements outside any entry: there is no header to give
            return f"{self.body}\n"
        return f"-- Name: {self.name}; Type: {self.type}; Schema: {self.schema}\n{self.body}\n"


def normalize_dump(text: str) -> str:
    """Deterministic, noise-free text of a `pg_dump --schema-only` output.

    Each top-level entry becomes `-- Name: N; Type: T; Schema: S` followed by
    its statements; entries are sorted by (type, schema, name) and separated
    by one blank line. The result ends with a single newline ("" when the dump
    holds no objects).
    """
    lines = _cut_footer([line.rstrip() for line in text.splitlines()])
    blocks: list[_Block] = []
    preamble: list[str] = []
    header: re.Match[str] | None = None
    body: list[str] = []
    i = 0
    while i < len(lines):
        match, end = _match_header(lines, i)
        if match is None:
            body.append(lines[i])
            i += 1
            continue
        if header is None:
            preamble = body
        else:
            blocks.extend(_make_block(header, body))
        header, body, i = match, [], end
    if header is None:
        preamble = body
    else:
        blocks.extend(_make_block(header, body))
    # Before the first entry pg_dump writes only noise; keep anything else.
    leftover = _clean_body(line for line in preamble if not line.startswith("--"))
    if leftover:
        blocks.append(_Block(-1, "", "", "", leftover))
    return "\n".join(block.render() for block in sorted(blocks))


def _cut_footer(lines: list[str]) -> list[str]:
    for index in range(len(lines) - 1, -1, -1):
        if lines[index] == _FOOTER:
            return lines[: index - 1 if index > 0 and lines[index - 1] == "--" else index]
    return lines


def _match_header(lines: list[str], start: int) -> tuple[re.Match[str] | None, int]:
    """An entry header: `--`, comment lines, one of them `-- Name: ...`, `--`.

    A lone `-- Name: ...` line at the start or after a blank line is one too:
    that is how normalised text reads.
    """
    if lines[start] != "--":
        if start == 0 or not lines[start - 1]:
            return _NAME_RE.match(lines[start]), start + 1
        return None, start
    match: re.Match[str] | None = None
    index = start + 1
    while index < len(lines) and lines[index].startswith("-- "):
        match = match or _NAME_RE.match(lines[index])
        index += 1
    if match is None or index >= len(lines) or lines[index] != "--":
        return None, start
    return match, index + 1


def _make_block(header: re.Match[str], body: list[str]) -> list[_Block]:
    kind = header["type"]
    if kind in _DROPPED_TYPES:
        return []
    text = _clean_body(body)
    if not text:
        return []
    rank = _TYPE_RANK.get(kind, len(_TYPE_ORDER)) if kind else -1
    return [_Block(rank, kind, header["schema"], header["name"], text)]


def _clean_body(lines: Iterable[str]) -> str:
    kept = [line for line in lines if not any(noise.match(line) for noise in _NOISE_RES)]
    return "\n".join(kept).strip("\n")


def fingerprint(normalized: str) -> str:
    """The sha256 (hex) of a normalised schema text."""
    return hashlib.sha256(normalized.encode("utf-8")).hexdigest()


def unified_diff(a_text: str, b_text: str, a_name: str, b_name: str, *, context: int = 3) -> str:
    """A unified diff from `a_text` to `b_text`; "" when they are equal."""
    if a_text == b_text:
        return ""
    return "".join(
        difflib.unified_diff(
            _lines(a_text), _lines(b_text), fromfile=a_name, tofile=b_name, n=context
        )
    )


def _lines(text: str) -> list[str]:
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    return lines


# -- structure --------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    name: str
    data_type: str  # format_type(atttypid, atttypmod)
    nullable: bool
    default: str | None = None  # pg_get_expr of the default (or generation) expression
    identity: str | None = None  # "ALWAYS" or "BY DEFAULT" for identity columns
    generated: bool = False  # GENERATED ALWAYS AS (default) STORED


@dataclass(frozen=True)
class Table:
    name: str  # schema.table
    columns: dict[str, Column] = field(default_factory=dict)
    indexes: dict[str, str] = field(default_factory=dict)  # name -> pg_get_indexdef
    constraints: dict[str, str] = field(default_factory=dict)  # name -> pg_get_constraintdef


@dataclass(frozen=True)
class Schema:
    tables: dict[str, Table] = field(default_factory=dict)  # keyed by schema.table


_SYSTEM_SCHEMAS = ["pg_catalog", "information_schema"]
_SYSTEM_SCHEMA_PATTERN = r"^pg_(toast|temp_|toast_temp_)"
_TABLE_KINDS = ["r", "p"]  # ordinary and partitioned tables
_IDENTITY = {"a": "ALWAYS", "d": "BY DEFAULT"}

_TABLES_SQL = """
SELECT c.oid, n.nspname, c.relname
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind::text = ANY(%(kinds)s)
  AND n.nspname <> ALL(%(system)s)
  AND n.nspname !~ %(pattern)s
  AND NOT EXISTS (
      SELECT 1 FROM pg_catalog.pg_depend d
      WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
        AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY n.nspname, c.relname
"""
_COLUMNS_SQL = """
SELECT a.attrelid, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod),
       NOT a.attnotnull, pg_catalog.pg_get_expr(d.adbin, d.adrelid),
       a.attidentity::text, a.attgenerated::text
FROM pg_catalog.pg_attribute a
LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = ANY(%(oids)s::pg_catalog.oid[]) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum
"""
# Indexes that implement a primary key, unique or exclusion constraint are
# reported as constraints only.
_INDEXES_SQL = """
SELECT i.indrelid, ic.relname, pg_catalog.pg_get_indexdef(i.indexrelid)
FROM pg_catalog.pg_index i
JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
WHERE i.indrelid = ANY(%(oids)s::pg_catalog.oid[])
  AND NOT EXISTS (
      SELECT 1 FROM pg_catalog.pg_constraint con
      WHERE con.conindid = i.indexrelid AND con.conrelid = i.indrelid
        AND con.contype IN ('p', 'u', 'x'))
ORDER BY i.indrelid, ic.relname
"""
# NOT NULL constraints (in pg_constraint since Postgres 18) are reported
# through Column.nullable.
_CONSTRAINTS_SQL = """
SELECT con.conrelid, con.conname, pg_catalog.pg_get_constraintdef(con.oid)
FROM pg_catalog.pg_constraint con
WHERE con.conrelid = ANY(%(oids)s::pg_catalog.oid[]) AND con.contype <> 'n'
ORDER BY con.conrelid, con.conname
"""


async def describe_schema(conn: psycopg.AsyncConnection[Any]) -> Schema:
    """Tables, columns, indexes and constraints of every user schema.

    Definitions are read with an empty search_path (as pg_dump does), so
    names are always schema-qualified and two connections agree.
    """
    async with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute("SELECT pg_catalog.current_setting('search_path')")
        saved = await cur.fetchone()
        await cur.execute("SELECT pg_catalog.set_config('search_path', '', true)")
        await cur.execute(
            _TABLES_SQL,
            {"kinds": _TABLE_KINDS, "system": _SYSTEM_SCHEMAS, "pattern": _SYSTEM_SCHEMA_PATTERN},
        )
        keys: dict[int, str] = {}
        for oid, nspname, relname in await cur.fetchall():
            keys[int(oid)] = f"{nspname}.{relname}"
        oids = {"oids": list(keys)}
        columns: dict[int, dict[str, Column]] = {oid: {} for oid in keys}
        await cur.execute(_COLUMNS_SQL, oids)
        for relid, name, data_type, nullable, default, identity, generated in await cur.fetchall():
            columns[int(relid)][name] = Column(
                name=name,
                data_type=data_type,
                nullable=bool(nullable),
                default=default,
                identity=_IDENTITY.get(identity),
                generated=bool(generated),
            )
        indexes: dict[int, dict[str, str]] = {oid: {} for oid in keys}
        await cur.execute(_INDEXES_SQL, oids)
        for relid, name, definition in await cur.fetchall():
            indexes[int(relid)][name] = definition
        constraints: dict[int, dict[str, str]] = {oid: {} for oid in keys}
        await cur.execute(_CONSTRAINTS_SQL, oids)
        for relid, name, definition in await cur.fetchall():
            constraints[int(relid)][name] = definition
        if saved is not None:
            # Leave the caller's (possibly outer) transaction as it was.
            await cur.execute("SELECT pg_catalog.set_config('search_path', %s, true)", (saved[0],))
    return Schema(
        tables={
            key: Table(key, columns[oid], indexes[oid], constraints[oid])
            for oid, key in sorted(keys.items(), key=lambda item: item[1])
        }
    )


# -- structural diff --------------------------------------------------------

_COLUMN_ATTRIBUTES = ("data_type", "nullable", "default", "identity", "generated")


@dataclass(frozen=True)
class ColumnChange:
    column: str
    attribute: str  # one of data_type, nullable, default, identity, generated
    before: str | bool | None
    after: str | bool | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "attribute": self.attribute,
            "from": self.before,
            "to": self.after,
        }


@dataclass(frozen=True)
class DefinitionChange:
    """An index or constraint whose definition differs."""

    name: str
    before: str
    after: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "from": self.before, "to": self.after}


@dataclass(frozen=True)
class TableChange:
    table: str
    columns_added: list[str] = field(default_factory=list)
    columns_removed: list[str] = field(default_factory=list)
    columns_changed: list[ColumnChange] = field(default_factory=list)
    indexes_added: list[str] = field(default_factory=list)
    indexes_removed: list[str] = field(default_factory=list)
    indexes_changed: list[DefinitionChange] = field(default_factory=list)
    constraints_added: list[str] = field(default_factory=list)
    constraints_removed: list[str] = field(default_factory=list)
    constraints_changed: list[DefinitionChange] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not any(
            (
                self.columns_added,
                self.columns_removed,
                self.columns_changed,
                self.indexes_added,
                self.indexes_removed,
                self.indexes_changed,
                self.constraints_added,
                self.constraints_removed,
                self.constraints_changed,
            )
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "columns_added": list(self.columns_added),
            "columns_removed": list(self.columns_removed),
            "columns_changed": [change.as_dict() for change in self.columns_changed],
            "indexes_added": list(self.indexes_added),
            "indexes_removed": list(self.indexes_removed),
            "indexes_changed": [change.as_dict() for change in self.indexes_changed],
            "constraints_added": list(self.constraints_added),
            "constraints_removed": list(self.constraints_removed),
            "constraints_changed": [change.as_dict() for change in self.constraints_changed],
        }


@dataclass(frozen=True)
class SchemaDiff:
    tables_added: list[str] = field(default_factory=list)
    tables_removed: list[str] = field(default_factory=list)
    tables_changed: list[TableChange] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not (self.tables_added or self.tables_removed or self.tables_changed)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able data: what `branchline db diff --json` prints."""
        return {
            "tables_added": list(self.tables_added),
            "tables_removed": list(self.tables_removed),
            "tables_changed": [change.as_dict() for change in self.tables_changed],
        }


def diff_schemas(a: Schema, b: Schema) -> SchemaDiff:
    """What changed from `a` to `b`. Every list is sorted by name."""
    changed = []
    for name in sorted(a.tables.keys() & b.tables.keys()):
        change = _diff_tables(name, a.tables[name], b.tables[name])
        if not change.is_empty:
            changed.append(change)
    return SchemaDiff(
        tables_added=sorted(b.tables.keys() - a.tables.keys()),
        tables_removed=sorted(a.tables.keys() - b.tables.keys()),
        tables_changed=changed,
    )


def _diff_tables(table: str, a: Table, b: Table) -> TableChange:
    column_changes = []
    for name in sorted(a.columns.keys() & b.columns.keys()):
        old, new = a.columns[name], b.columns[name]
        for attribute in _COLUMN_ATTRIBUTES:
            before, after = getattr(old, attribute), getattr(new, attribute)
            if before != after:
                column_changes.append(ColumnChange(name, attribute, before, after))
    indexes_added, indexes_removed, indexes_changed = _diff_definitions(a.indexes, b.indexes)
    constraints_added, constraints_removed, constraints_changed = _diff_definitions(
        a.constraints, b.constraints
    )
    return TableChange(
        table=table,
        columns_added=sorted(b.columns.keys() - a.columns.keys()),
        columns_removed=sorted(a.columns.keys() - b.columns.keys()),
        columns_changed=column_changes,
        indexes_added=indexes_added,
        indexes_removed=indexes_removed,
        indexes_changed=indexes_changed,
        constraints_added=constraints_added,
        constraints_removed=constraints_removed,
        constraints_changed=constraints_changed,
    )


def _diff_definitions(
    a: Mapping[str, str], b: Mapping[str, str]
) -> tuple[list[str], list[str], list[DefinitionChange]]:
    changed = [
        DefinitionChange(name, a[name], b[name])
        for name in sorted(a.keys() & b.keys())
        if a[name] != b[name]
    ]
    return sorted(b.keys() - a.keys()), sorted(a.keys() - b.keys()), changed
