"""Running the project's migrations against a branch, and trying them first.

`migrate` runs the project's own command (from `[database] migrate`) with the
branch's DATABASE_URL and the libpq variables, streaming its output with the
password masked. `run_on_branch` is that step for any command of the project's
(a seed, a preview's pre-destroy hook): the same sandbox, the same environment.
`preflight` is the reference guide's "test migration safely" recipe as one call:
copy production, migrate the copy, report, delete the copy.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import re
import secrets as secrets_module
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from branchline import processes
from branchline.branchdata import JOURNALS
from branchline.config import Config
from branchline.config.limits import human_duration
from branchline.errors import BranchlineError, UsageError
from branchline.masking import LineMasker
from branchline.providers.database import DatabaseProvider, ServerLogs
from branchline.sandbox import Box, Sandbox
from branchline.schemadiff import describe_schema, diff_schemas, fingerprint, normalize_dump

OnLine = Callable[[str], None]


class CommandTimeoutError(BranchlineError):
    """A project command (migrate, a hook) ran past its deadline and was stopped."""

    code = "timed_out"


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
    secrets: Mapping[str, str] | None = None,
) -> MigrateResult:
    """Run the project's migrate command against `branch`, streaming masked output.
    It runs at the project root (read-only, its `.branchline/` hidden), or in `cwd`
    (a checkout of the commit being tested, writable), in `sandbox` when given.
    `secrets` are the environment's (never printed: masked in every line).
    `fingerprint=False` skips the schema dump behind `schema_fingerprint` (about a
    tenth of a second), which pipelines, diffing schemas later anyway, do not need."""
    exit_code, seconds, tail = await run_on_branch(
        config, provider, branch, config.database.migrate, on_line=on_line, cwd=cwd,
        sandbox=sandbox, readable=readable, what="migrate", secrets=secrets,
        timeout=config.database.migrate_timeout.total_seconds(),
        timeout_setting="migrate_timeout",
    )  # fmt: skip
    result = MigrateResult(branch, exit_code, seconds, tail)
    if result.ok:
        uri = await provider.connection_uri(branch)
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


async def run_on_branch(
    config: Config,
    provider: DatabaseProvider,
    branch: str,
    argv: Sequence[str],
    *,
    on_line: OnLine | None = None,
    cwd: Path | None = None,
    sandbox: Sandbox | None = None,
    readable: tuple[Path, ...] = (),
    timeout: float | None = None,
    what: str = "command",
    secrets: Mapping[str, str] | None = None,
    timeout_setting: str | None = None,
) -> tuple[int, float, list[str]]:
    """Run the project's command `argv` against `branch` as the migrate step runs:
    at the project root (read-only) or in `cwd` (a checkout, writable), in `sandbox`
    when given, with only the sandbox's base environment and the branch's variables,
    and the environment's `secrets`, its output streamed masked. Past `timeout`
    seconds its whole process tree is killed: with `timeout_setting` (the key that
    sets it) that raises CommandTimeoutError, without it the exit code is -9. A cancel of
    the calling task kills the tree too. Returns (exit code, seconds, the last 200
    lines)."""
    uri = await provider.connection_uri(branch)
    password = str(conninfo_to_dict(uri).get("password") or "")
    began = time.monotonic()
    # Declared only: the branch, never branchline's own state or environment.
    box = sandbox or Sandbox.configure(
        enabled=False, protected=(), path=os.environ.get("PATH", os.defpath).split(os.pathsep)
    )
    # The environment's secrets (an API key a data migration needs), masked in output.
    env = {**box.base_env(own=cwd), **(secrets or {}), **database_env(uri)}
    # Its tree tag: how its processes are found even after they left its group.
    tree = f"{what}.{secrets_module.token_hex(6)}"
    env[processes.TREE_VARIABLE] = tree
    workdir = cwd or config.root
    shown = (
        Box(writable=(workdir,), readable=readable)
        if cwd is not None
        else Box(readable=(workdir, *readable))
    )
    command = box.wrap(list(argv), shown, cwd=workdir)
    try:
        process = await asyncio.create_subprocess_exec(
            *command,
            cwd=workdir,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its whole group goes on a timeout or a cancel
        )
    except OSError as exc:
        raise UsageError(
            f"cannot run the {what} command {command[0]!r}: {exc.strerror}",
            hint="Check `[database] migrate` in branchline.toml."
            if what == "migrate"
            else f"Check the {what} command in branchline.toml.",
        ) from exc
    tail: list[str] = []

    def shown_line(line: str) -> None:
        nonlocal tail
        tail = [*tail[-199:], line]
        if on_line is not None:
            on_line(line)

    async def stream() -> None:
        assert process.stdout is not None
        # Chunked reads: a line longer than the stream's limit must not end the command.
        masker = LineMasker([*([password] if password else []), *(secrets or {}).values()])
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while chunk := await process.stdout.read(65536):
            for line in masker.feed(decoder.decode(chunk)):
                shown_line(line)
        for line in masker.flush():
            shown_line(line)

    started = processes.start_time_of(process.pid)
    whole = processes.ProcessId(process.pid, started if started is not None else -1, tree)
    try:
        await asyncio.wait_for(stream(), timeout)
    except TimeoutError:
        await _stop_tree(process, whole)
        took = human_duration(timeout or 0)
        why = f"timed out after {took}" + (f" ({timeout_setting})" if timeout_setting else "")
        shown_line(f"{what}: {why}; its processes were stopped")
        if timeout_setting is not None:
            raise CommandTimeoutError(
                f"{what} {why}",
                hint=f"Raise `{timeout_setting}` in branchline.toml if it needs longer, or "
                "find what it waits for (its last lines are in the log).",
            ) from None
    except BaseException:
        # Cancelled (a `runs cancel`, a step's deadline) or failing: nothing it
        # started may outlive it.
        await asyncio.shield(_stop_tree(process, whole))
        raise
    exit_code = await process.wait()
    return exit_code, time.monotonic() - began, tail


async def _stop_tree(process: asyncio.subprocess.Process, whole: processes.ProcessId) -> None:
    """Kill the command's process group and whatever of its tree left the group
    (found by its tree tag; it may hold the output pipe open), then collect the
    leader here (asyncio's child watcher must be the one to reap it)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    await asyncio.to_thread(_kill_tagged, whole)
    await process.wait()


def _kill_tagged(whole: processes.ProcessId) -> None:
    for member, _env in processes.with_environment(f"{processes.TREE_VARIABLE}={whole.tree}"):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(member.pid, signal.SIGKILL)


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
