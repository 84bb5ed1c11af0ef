"""One exception hierarchy for everything branchline reports to a user.

Every error carries a message (what was wrong) and a hint (how to fix it).
The CLI is the only place that turns these into output and exit codes; the
rest of the code raises them and never prints.
"""

from __future__ import annotations

import errno
from pathlib import Path


class BranchlineError(Exception):
    """Base of every error branchline reports. Exit code 1: the operation failed."""

    exit_code = 1
    default_hint = "Run again with --debug for details."
    # A word code can decide on (recorded with a failed job): "refused", "closed"...;
    # the message is for people and may change.
    code: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self) -> str:
        return self.message

    def as_dict(self) -> dict[str, object]:
        return {"error": type(self).__name__, "message": self.message, "hint": self.hint}


class UsageError(BranchlineError):
    """The command was called wrongly. Exit code 2."""

    exit_code = 2
    default_hint = "See `branchline --help`."


class ConfigError(UsageError):
    """branchline.toml is wrong. Names the file, the key path and (when known) the line."""

    default_hint = "Fix the key in branchline.toml and run `branchline config check`."

    def __init__(
        self,
        message: str,
        *,
        file: Path | str | None = None,
        key: str | None = None,
        line: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.file = str(file) if file is not None else None
        self.key = key
        self.line = line
        where = self.location()
        super().__init__(f"{where}: {message}" if where else message, hint=hint)
        self.detail = message

    def location(self) -> str:
        parts = []
        if self.file:
            parts.append(self.file + (f":{self.line}" if self.line else ""))
        if self.key:
            parts.append(self.key)
        return ": ".join(parts)

    def as_dict(self) -> dict[str, object]:
        data = super().as_dict()
        data.update({"file": self.file, "key": self.key, "line": self.line})
        return data


class PostgresError(BranchlineError):
    """A Postgres cluster could not be found, created, started or stopped."""

    default_hint = "Look at the cluster's log file named above; run with --debug for details."


class PostgresNotFoundError(PostgresError):
    """No usable Postgres binaries."""

    exit_code = 2
    default_hint = (
        "Install PostgreSQL (for example `apt-get install postgresql`), set BRANCHLINE_PG_BIN "
        "to its bin directory, or `pip install 'branchline[embedded-pg]'` for bundled binaries."
    )


class StoreError(BranchlineError):
    """The control-plane state could not be reached or migrated."""

    default_hint = (
        "Check BRANCHLINE_DATABASE_URL (or the embedded state under .branchline/) "
        "and run `branchline status`."
    )


class StateUnavailableError(StoreError):
    """The state database does not answer right now (restarting, or an external one
    is down): the request may be tried again in a moment."""

    default_hint = (
        "branchline serve restarts the embedded state database by itself (an external "
        "one is waited for); try again in a few seconds, and see `branchline status`."
    )


_EXEC_HINT = (
    "Check that it exists (committed, for code from a branch) and is executable "
    "(`chmod +x`, `git update-index --chmod=+x`), and that the command in branchline.toml "
    "names it rightly: a bare name is looked up on `[security] path`, a relative path "
    "from the service's directory or the project's root."
)


def exec_error(exc: OSError, what: str, argv0: str) -> BranchlineError:
    """The error for a command that could not be started (missing, not executable)."""
    return BranchlineError(f"cannot run the {what} command {argv0!r}: {exc.strerror}",
                           hint=_EXEC_HINT)  # fmt: skip


def from_os_error(exc: BaseException) -> BranchlineError | None:
    """An operating-system failure a user can fix (a program that cannot be started,
    a port in use), said as one with a hint; None for anything else. The last net
    under the CLI: a known failure is never reported as a bug in branchline. (A full
    disk has its own error, with what `db gc` could free.)"""
    if not isinstance(exc, OSError):
        return None
    if exc.errno == errno.EADDRINUSE:
        return BranchlineError(
            f"a port is already in use: {exc.strerror}",
            hint="Stop the program that holds it, or give branchline other ports "
            "(`[edge] port`, `dns_port`, `api_port` in branchline.toml).",
        )
    if isinstance(exc, FileNotFoundError | PermissionError) and exc.filename:
        return BranchlineError(
            f"cannot run or open {str(exc.filename)!r}: {exc.strerror}", hint=_EXEC_HINT
        )
    return None
