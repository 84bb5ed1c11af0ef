"""What `init` learns about a project, and from which file.

Every command it puts in branchline.toml carries a `Note`: detected (a file says
so) or guessed (nothing did; the user should check it), with the file that told it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Note:
    guessed: bool
    subject: str  # "run", "build", "migrate", "tests", ...
    text: str
    source: str = ""  # the file that told it, relative to the project root
    service: str = ""  # the service it is about, if any

    def line(self) -> str:
        where = f" (from {self.source})" if self.source else ""
        about = f"{self.service} {self.subject}" if self.service else self.subject
        return f"{about}: {self.text}{where}"

    def as_dict(self) -> dict[str, str]:
        return {
            "service": self.service,
            "subject": self.subject,
            "what": self.text,
            "file": self.source,
        }


@dataclass(frozen=True)
class Step:
    """A command for branchline.toml and the note that explains it."""

    argv: tuple[str, ...]
    note: Note


@dataclass(frozen=True)
class TestJob:
    name: str
    step: Step
    database: bool
    createdb: bool = False  # Django's test runner creates its own database
    service: str | None = None


@dataclass(frozen=True)
class DetectedService:
    name: str
    path: str  # relative to the project root, with forward slashes
    marker: str  # the file that marked the directory as a service
    run: Step
    build: Step | None = None
    health_path: str = "/health"
    release: Step | None = None
    comments: tuple[str, ...] = ()  # extra lines for the toml, already commented
    runtime: str = "process"  # "worker": no run command, workerd serves its bundle


@dataclass(frozen=True)
class Detection:
    services: list[DetectedService]
    migrate: Step
    tests: list[TestJob]
    notes: list[Note]  # everything, in the order it was learnt

    def detected(self) -> list[Note]:
        return [n for n in self.notes if not n.guessed]

    def guessed(self) -> list[Note]:
        return [n for n in self.notes if n.guessed]


def in_dir(path: str, argv: list[str]) -> tuple[str, ...]:
    """`argv` run from `path` by a command that starts at the project root (migrate,
    tests). The directory is an argument of the shell, never part of its script."""
    if path == ".":
        return tuple(argv)
    return ("sh", "-c", 'cd "$1" && shift && exec "$@"', "sh", path, *argv)


@dataclass
class Findings:
    """What one directory says; the first detector to set a field wins, so the
    more explicit files (a Procfile) are asked before the guesses (a framework)."""

    root: Path
    directory: Path
    marker: str | None = None
    serves: bool = False  # a server was found, not just a marker file
    runtime: str = "process"  # "worker": a Cloudflare Worker (its wrangler config)
    run: Step | None = None
    build: Step | None = None
    health_path: str | None = None
    migrate: Step | None = None
    release: Step | None = None
    tests: list[tuple[Step, bool, bool]] = field(default_factory=list)  # step, db, createdb
    notes: list[Note] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)

    @property
    def path(self) -> str:
        return self.directory.relative_to(self.root).as_posix()

    def file(self, name: str) -> str:
        """`name` (a file of this directory) relative to the project root."""
        return (self.directory / name).relative_to(self.root).as_posix()

    def note(self, subject: str, text: str, source: str = "", *, guessed: bool = False) -> Note:
        made = Note(guessed, subject, text, source)
        self.notes.append(made)
        return made

    def step(
        self,
        subject: str,
        argv: list[str] | tuple[str, ...],
        text: str,
        source: str,
        *,
        guessed: bool = False,
    ) -> Step:
        return Step(tuple(argv), self.note(subject, text, source, guessed=guessed))

    def mark(self, marker: str) -> None:
        if self.marker is None:
            self.marker = marker
