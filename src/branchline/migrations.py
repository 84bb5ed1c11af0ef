"""Running the project's migrations against a branch, and trying them first.

`migrate` runs the project's own command (from `[database] migrate`) with the
branch's DATABASE_URL and the libpq variables, streaming its output with the
password masked. `preflight` is the reference guide's "test migration safely"
recipe as one call: copy production, migrate the copy, report, delete the copy.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from branchline.config import Config
from branchline.errors import BranchlineError, UsageError
from branchline.masking import LineMasker
from branchline.providers.database import DatabaseProvider, ServerLogs
from branchline.sandbox import Box, Sandbox
from branchline.schemadiff import describe_schema, diff_schemas, fingerprint, normalize_dump

# Journal tables of common migration tools, and the column naming each migration.
JOURNALS = {
    "schema_migrations": "version",  # Rails, golang-migrate, dbmate, many hand-rolled
    "alembic_version": "version_num",  # Alembic
    "django_migrations": "name",  # Django
    "_prisma_migrations": "migration_name",  # Prisma
    "flyway_schema_history": "version",  # Flyway
    "knex_migrations": "name",  # Knex
}

OnLine = Callable[[str], None]


@dataclass
class MigrateResult:
    branch: str
    exit_code: int
    seconds: float
    output_tail: list[str] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)  # from the journal table, if any
    schema_fingerprint: str | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def database_env(uri: str) -> dict[str, str]:
    """DATABASE_URL plus the libpq variables, for tools that want those instead."""
    parts = conninfo_to_dict(uri)
    env = {"DATABASE_URL": uri}
    for key, var in (
        ("host", "PGHOST"),
        ("port", "PGPORT"),
        ("user", "PGUSER"),
        ("password", "PGPASSWORD"),
        ("dbname", "PGDATABASE"),
    ):
        if parts.get(key) is not None:
            env[var] = str(parts[key])
    return env


async def migrate(
    config: Config,
    provider: DatabaseProvider,
    branch: str,
    *,
    on_line: OnLine | None = None,
    cwd: Path | None = None,
    fingerprint: bool = True,
    sandbox: Sandbox | None = None,
    readable: tuple[Path, ...] = (),
) -> MigrateResult:
    """Run the project's migrate command against `branch`, streaming masked output.
    It runs at the project root (read-only, its `.branchline/` hidden), or in `cwd`
    (a checkout of the commit being tested, writable), in `sandbox` when given.
    `fingerprint=False` skips the schema dump behind `schema_fingerprint` (about a
    tenth of a second), which pipelines, diffing schemas later anyway, do not need."""
    uri = await provider.connection_uri(branch)
    password = str(conninfo_to_dict(uri).get("password") or "")
    began = time.monotonic()
    # Declared only: the branch, never branchline's own state or environment.
    box = sandbox or Sandbox.configure(
        enabled=False, protected=(), path=os.environ.get("PATH", os.defpath).split(os.pathsep)
    )
    env = {**box.base_env(), **database_env(uri)}
    workdir = cwd or config.root
    shown = (
        Box(writable=(workdir,), readable=readable)
        if cwd is not None
        else Box(readable=(workdir, *readable))
    )
    command = box.wrap(list(config.database.migrate), shown, cwd=workdir)
    try:
        process = await asyncio.create_subprocess_exec(
            *command,
            cwd=workdir,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError as exc:
        raise UsageError(
            f"cannot run the migrate command {command[0]!r}: {exc.strerror}",
            hint="Check `[database] migrate` in branchline.toml.",
        ) from exc
    tail: list[str] = []
    assert process.stdout is not None
    # Chunked reads: a line longer than the stream's limit must not end the command.
    masker = LineMasker([password] if password else [])
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while chunk := await process.stdout.read(65536):
        for line in masker.feed(decoder.decode(chunk)):
            tail = [*tail[-199:], line]
            if on_line is not None:
                on_line(line)
    for line in masker.flush():
        tail = [*tail[-199:], line]
        if on_line is not None:
            on_line(line)
    exit_code = await process.wait()
    result = MigrateResult(branch, exit_code, time.monotonic() - began, tail)
    if result.ok:
        result.applied = await asyncio.to_thread(read_journal, uri)
        if fingerprint:
            result.schema_fingerprint = await _fingerprint(provider, branch)
        detail: dict[str, object] = {
            "migrations": result.applied,
            "migrated_at": datetime.now(UTC).isoformat(),
        }
        if result.schema_fingerprint is not None:
            detail["schema_fingerprint"] = result.schema_fingerprint
        await provider.annotate(branch, detail)
    return result


def read_journal(uri: str) -> list[str]:
    """The migrations a branch has, from the first known journal table it holds."""
    with psycopg.connect(uri, autocommit=True) as conn:
        for table, column in JOURNALS.items():
            found = conn.execute(
                "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relname = %s AND c.relkind = 'r' "
                "AND n.nspname NOT IN ('pg_catalog', 'information_schema') LIMIT 1",
                (table,),
            ).fetchone()
            if found is None:
                continue
            query = psycopg.sql.SQL("SELECT {col}::text FROM {schema}.{table} ORDER BY 1").format(
                col=psycopg.sql.Identifier(column),
                schema=psycopg.sql.Identifier(str(found[0])),
                table=psycopg.sql.Identifier(table),
            )
            try:
                return [str(row[0]) for row in conn.execute(query).fetchall()]
            except psycopg.Error:
                return []  # a table of that name that is not a journal
    return []


async def _fingerprint(provider: DatabaseProvider, branch: str) -> str:
    return fingerprint(normalize_dump(await provider.schema_dump(branch)))


@dataclass
class PreflightResult:
    ok: bool
    branch: str
    migrate: MigrateResult
    failing_statement: str | None = None
    error: str | None = None
    schema_changes: dict[str, Any] | None = None
    check: Any = None  # what the caller's check of the migrated copy returned

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "branch": self.branch,
            "exit_code": self.migrate.exit_code,
            "seconds": round(self.migrate.seconds, 3),
            "error": self.error,
            "failing_statement": self.failing_statement,
            "applied": self.migrate.applied,
            "schema_changes": self.schema_changes,
            "output_tail": self.migrate.output_tail[-20:],
        }


_ERROR = re.compile(r"\bERROR:\s+(.*)")
_STATEMENT = re.compile(r"\bSTATEMENT:\s+(.*)")
_NEW_ENTRY = re.compile(r"^\d{4}-\d\d-\d\d ")  # log_line_prefix starts with a timestamp


def failing_statement(server_log: str) -> tuple[str | None, str | None]:
    """The last error and the statement that caused it, from a Postgres server log.
    A multi-line statement continues on the lines that do not start a new entry."""
    error: str | None = None
    statement: list[str] | None = None
    collecting = False
    for line in server_log.splitlines():
        if _NEW_ENTRY.match(line):
            collecting = False
            if m := _ERROR.search(line):
                error, statement = m.group(1).strip(), None
            elif (m := _STATEMENT.search(line)) and error is not None:
                statement, collecting = [m.group(1).strip()], True
        elif collecting and statement is not None:
            statement.append(line.strip())
    text = " ".join(part for part in statement or [] if part)
    return error, text or None


async def preflight(
    config: Config,
    provider: DatabaseProvider,
    *,
    on_line: OnLine | None = None,
    cwd: Path | None = None,
    check: Callable[[str], Awaitable[Any]] | None = None,
    parent: str | None = None,
    sandbox: Sandbox | None = None,
    readable: tuple[Path, ...] = (),
) -> PreflightResult:
    """Migrate a throw-away copy of production; report; always delete the copy.
    `check(branch)` runs on the migrated copy before it goes (the production pipeline
    starts the live release against it)."""
    parent = parent or config.database.parent
    name = "preflight-" + datetime.now(UTC).strftime("%Y%m%d%H%M%S%f")
    # An expiry, so that gc removes the copy even if this process dies.
    expires = datetime.now(UTC) + timedelta(hours=1)
    await provider.create_branch(name, parent, expires=expires)
    try:
        result = await migrate(
            config, provider, name, on_line=on_line, cwd=cwd, sandbox=sandbox, readable=readable
        )
        error = statement = None
        changes = checked = None
        if not result.ok:
            if isinstance(provider, ServerLogs):
                error, statement = failing_statement(await provider.server_log(name))
            error = error or (result.output_tail[-1] if result.output_tail else None)
        else:
            changes = await _changes(provider, parent, name)
            if check is not None:
                checked = await check(name)
        return PreflightResult(result.ok, name, result, statement, error, changes, checked)
    finally:
        with contextlib.suppress(BranchlineError):  # else the expiry makes gc remove it
            await provider.delete_branch(name)


async def _changes(provider: DatabaseProvider, before: str, after: str) -> dict[str, Any]:
    schemas = []
    for branch in (before, after):
        uri = await provider.connection_uri(branch)
        async with await psycopg.AsyncConnection.connect(uri) as conn:
            schemas.append(await describe_schema(conn))
    return diff_schemas(schemas[0], schemas[1]).as_dict()
