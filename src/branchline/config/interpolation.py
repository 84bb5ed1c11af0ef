"""`${VAR}` interpolation: every string value of the file, before validation, gets
`${VAR}` and `${VAR:-default}` replaced from the environment and `$$` turned into `$`;
`_Secrets` records where values from secret-looking variables went, and the values, so
that they are masked from then on.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from typing import Any

from branchline.config.base import is_secret_name
from branchline.config.problems import Loc, _describe, _ProblemError

_REFERENCE = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}|\$\{"
)
_REFERENCE_HINT = "write `${NAME}` or `${NAME:-default}`, and `$$` for a literal `$`"


class _Secrets:
    """What interpolation saw of secret-looking variables: where, and their values."""

    def __init__(self) -> None:
        self.paths: set[Loc] = set()
        self.values: set[str] = set()


def _interpolate(value: Any, loc: Loc, env: Mapping[str, str], secrets: _Secrets) -> Any:
    """Replace `${VAR}` references in every string, recursively; note secret ones."""
    if isinstance(value, str):
        return _interpolate_text(value, loc, env, secrets)
    if isinstance(value, dict):
        return {key: _interpolate(item, (*loc, key), env, secrets) for key, item in value.items()}
    if isinstance(value, list):
        return [_interpolate(item, (*loc, i), env, secrets) for i, item in enumerate(value)]
    return value


def _interpolate_text(text: str, loc: Loc, env: Mapping[str, str], secrets: _Secrets) -> str:
    def replace(match: re.Match[str]) -> str:
        whole, name, default = match.group(0), match.group("name"), match.group("default")
        if whole == "$$":
            return "$"
        if name is None or (default is not None and "${" in default):
            raise _ProblemError(
                loc, f"malformed variable reference in {_describe(text)}", _REFERENCE_HINT
            )
        value = env.get(name)
        if default is not None and not value:
            value = default
        if value is None:
            raise _ProblemError(
                loc,
                f"`${{{name}}}` is not set in the environment",
                f"export {name}=... or write `${{{name}:-default}}`",
            )
        if is_secret_name(name):  # whatever came from a secret-looking variable stays hidden
            secrets.paths.add(loc)
            secrets.values.add(value)
        return value

    return _REFERENCE.sub(replace, text)


def references(text: str) -> list[tuple[str, bool]]:
    """The variables a branchline.toml's values refer to (comments do not count), in
    order, once each: (name, whether every reference has a default). What a CI
    workflow must provide."""
    found: dict[str, bool] = {}

    def walk(value: Any) -> None:
        if isinstance(value, str):
            for match in _REFERENCE.finditer(value):
                name = match.group("name")
                if name is not None:
                    found[name] = found.get(name, True) and match.group("default") is not None
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(tomllib.loads(text))
    return list(found.items())
