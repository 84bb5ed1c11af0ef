"""Finding, reading and loading branchline.toml: `find_config` looks for the file,
`load_config` reads and parses it, interpolates, validates, and turns any problem into
one `ConfigError` with the file, line, dotted key and hint, secrets masked.
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from branchline.config.base import MASK
from branchline.config.interpolation import _interpolate, _Secrets
from branchline.config.locate import _Locator, _translate
from branchline.config.problems import _dotted, _ProblemError
from branchline.config.schema import CONFIG_FILENAME, Config
from branchline.errors import ConfigError


def load_config(path: Path | str, env: Mapping[str, str] | None = None) -> Config:
    """Read, interpolate and validate branchline.toml (a file, or a directory holding one).

    `env` is used for `${VAR}` references (default: os.environ). Raises ConfigError,
    one line plus a hint, for every problem.
    """
    file = Path(path)
    if file.is_dir():
        file = file / CONFIG_FILENAME
    return load_config_text(_read(file), file, env)


def load_config_text(
    text: str,
    file: Path,
    env: Mapping[str, str] | None = None,
    *,
    is_directory: Callable[[str], bool] | None = None,
) -> Config:
    """Like `load_config`, from the text `file` holds (at some commit, say).
    `is_directory` tells whether a service's `path` exists (default: on disk)."""
    raw = _parse_toml(text, file)
    secrets = _Secrets()
    try:
        resolved = _interpolate(raw, (), os.environ if env is None else env, secrets)
        try:
            context: dict[str, object] = {"root": file.resolve().parent}
            if is_directory is not None:
                context["is_directory"] = is_directory
            config = Config.model_validate(resolved, context=context)
        except ValidationError as exc:
            # `from None`: pydantic's exception text includes input values (secrets).
            raise _translate(exc, frozenset(secrets.paths)) from None
    except _ProblemError as problem:
        raise ConfigError(
            _redact(problem.message, secrets.values),
            file=file,
            key=_dotted(problem.loc) or None,
            line=_Locator(text).line_for(problem.loc),
            hint=_redact(problem.hint, secrets.values),
        ) from None
    config._attach(
        file.resolve(), secrets, hashlib.sha256(text.encode()).hexdigest(),
        referenced_variables(text),
    )  # fmt: skip
    return config


def _redact(text: str, secrets: Iterable[str]) -> str:
    """One line, with no secret value in it (a message may quote a bad value)."""
    for value in sorted(secrets, key=len, reverse=True):
        if value:
            text = text.replace(value, MASK)
    return " ".join(text.splitlines())


def find_config(start: Path | str) -> Path:
    """The nearest branchline.toml in `start` or one of its parent directories."""
    here = Path(start).resolve()
    if here.is_file():
        here = here.parent
    for directory in (here, *here.parents):
        candidate = directory / CONFIG_FILENAME
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"no {CONFIG_FILENAME} in {here} or any directory above it",
        hint=f"run `branchline init` in the project's root to create {CONFIG_FILENAME}",
    )


def _read(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{file} does not exist",
            file=file,
            hint=f"run `branchline init` to create {CONFIG_FILENAME}, or pass the right path",
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(
            "the file is not valid UTF-8 text", file=file, hint="save it as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read the file: {exc.strerror}",
            file=file,
            hint="check that the file exists and is readable",
        ) from None


_TOML_POSITION = re.compile(r"^(?P<what>.*?) \(at line (?P<line>\d+), column (?P<column>\d+)\)$")


def _parse_toml(text: str, file: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        reason = str(exc).replace("\n", " ")
        match = _TOML_POSITION.match(reason)
        if match is None:
            raise ConfigError(f"invalid TOML: {reason}", file=file, hint=_TOML_HINT) from None
        what, column = match.group("what"), match.group("column")
        raise ConfigError(
            f"invalid TOML: {what[:1].lower()}{what[1:]} (column {column})",
            file=file,
            line=int(match.group("line")),
            hint=_TOML_HINT,
        ) from None


_TOML_HINT = (
    'check the syntax on that line: strings need quotes (`name = "codex"`), '
    "tables are `[name]` on their own line, arrays are `[1, 2]`"
)


_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


def referenced_variables(text: str) -> frozenset[str]:
    """The environment variables a branchline.toml refers to (`${VAR}`): a commit's
    config may use these and no others (a branch must not read serve's environment)."""
    return frozenset(_REFERENCE.findall(text))
