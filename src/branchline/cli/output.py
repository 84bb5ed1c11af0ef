"""Everything the CLI prints goes through here: rich for people, JSON for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from branchline.errors import BranchlineError

if TYPE_CHECKING:  # rich is imported when something is printed: `--version` stays quick
    from rich.console import Console


def _default(value: object) -> object:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def to_json(data: object) -> str:
    return json.dumps(data, indent=2, default=_default, ensure_ascii=False)


def _console(*, stderr: bool) -> Console:
    from rich.console import Console

    # Piped output is read by scripts and logs: do not fold tables at 80 columns.
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else 200
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=width)


@dataclass
class Output:
    json: bool = False
    debug: bool = False

    @cached_property
    def out(self) -> Console:
        return _console(stderr=False)

    @cached_property
    def err(self) -> Console:
        return _console(stderr=True)

    def emit(self, data: Any, human: Callable[[Console], None]) -> None:
        """Print `data` as JSON with --json, else let `human` render it."""
        if self.json:
            sys.stdout.write(to_json(data) + "\n")
        else:
            human(self.out)

    def progress(self, message: str) -> None:
        """A line about long work; on stderr so that --json output stays clean."""
        if not self.json:
            self.err.print(f"[dim]{message}[/dim]")

    def notice(self, message: str) -> None:
        """Something the user must know even with --json (it goes to stderr)."""
        self.err.print(message, markup=False, highlight=False)

    def error(self, exc: BranchlineError) -> None:
        if self.json:
            sys.stderr.write(to_json(exc.as_dict()) + "\n")
            return
        from rich.markup import escape

        self.err.print(f"[bold red]error:[/bold red] {escape(exc.message)}")
        if exc.hint:
            self.err.print(f"[yellow]hint:[/yellow] {escape(exc.hint)}")
