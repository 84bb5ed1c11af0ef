"""A Procfile (`web: ...`, `release: ...`): what the team already runs in production."""

from __future__ import annotations

import re
import shlex

from branchline.scaffold.model import Findings

_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+?)\s*$")
_PORT = re.compile(r"\$\{PORT\}|\$PORT\b")
_SENTINEL = "BRANCHLINEPORTPLACEHOLDER"  # one token while the line is split
_MIGRATES = re.compile(r"\bmigrate\b|alembic\s+upgrade|db:migrate|prisma\s+migrate")


def entries(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if match and not line.lstrip().startswith("#"):
            found.setdefault(match.group(1), match.group(2))
    return found


def to_argv(command: str) -> list[str]:
    """A Procfile command (a shell line) as an argument list: `$PORT` becomes
    branchline's `{{ port }}`; a line that needs a shell runs in `sh -c` (which
    reads PORT from the environment)."""
    plain = _PORT.sub(_SENTINEL, command)
    try:
        # Unquoted `;&|()<>` come out as tokens of their own.
        lexer = shlex.shlex(plain, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        argv = list(lexer)
    except ValueError:
        return ["sh", "-c", command]
    needs_shell = (
        not argv
        or any(ch in plain for ch in "$`")  # variables, command substitution
        or any(token and set(token) <= set(";&|()<>") for token in argv)
        or "=" in argv[0]  # `FOO=1 cmd` sets a variable
    )
    if needs_shell:
        return ["sh", "-c", command]
    return [token.replace(_SENTINEL, "{{ port }}") for token in argv]


def detect(found: Findings) -> None:
    procfile = found.directory / "Procfile"
    if not procfile.is_file():
        return
    source = found.file("Procfile")
    processes = entries(procfile.read_text(errors="replace"))
    if "web" in processes:
        found.mark("Procfile")
        found.serves = True
        found.run = found.step(
            "run", to_argv(processes["web"]), "the Procfile's web process", source
        )
    if "release" in processes:
        argv = to_argv(processes["release"])
        if _MIGRATES.search(processes["release"]):
            found.migrate = found.step(
                "migrate", argv, "the Procfile's release process runs the migrations", source
            )
        else:
            found.release = found.step("release", argv, "the Procfile's release process", source)
    for kind in sorted(set(processes) - {"web", "release"}):
        found.note(
            kind,
            f"the Procfile's {kind} process is not a web service: not added "
            "(branchline deploys services that answer HTTP)",
            source,
            guessed=True,
        )
