"""Where a problem is and how to say it: line numbers of TOML keys (`_Locator`, read
from the text itself) and the translation of pydantic's first `ValidationError` into
one problem with its key path, our own message and a hint with an example value
(`_translate`); pydantic's messages are never shown.
"""

from __future__ import annotations

import re
import types
from datetime import timedelta
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from branchline.config.base import is_secret_name
from branchline.config.durations import format_duration
from branchline.config.problems import Loc, _describe, _did_you_mean, _dotted, _ProblemError
from branchline.config.schema import Config

# -------------------------------------------------------------------------- locator

_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_DOTTED_KEY = rf"{_KEY_PART}(?:\s*\.\s*{_KEY_PART})*"
_HEADER = re.compile(rf"^\s*\[\[?\s*(?P<key>{_DOTTED_KEY})\s*\]\]?\s*(?:#.*)?$")
_PAIR = re.compile(rf"^\s*(?P<key>{_DOTTED_KEY})\s*=")
_INLINE_PAIR = re.compile(rf"[{{,]\s*(?P<key>{_DOTTED_KEY})\s*=")


def _split_key(text: str) -> tuple[str, ...]:
    return tuple(part.strip("\"'") for part in re.findall(_KEY_PART, text))


class _Locator:
    """Best-effort line numbers for key paths, from the TOML text itself."""

    def __init__(self, text: str) -> None:
        self._lines: dict[tuple[str, ...], int] = {}
        self._scan(text)

    def line_for(self, loc: Loc) -> int | None:
        """The line of the key, else of the nearest enclosing table that has one."""
        keys: list[str] = []
        for part in loc:
            if isinstance(part, int):  # array items: point at the array's key
                break
            keys.append(part)
        while keys:
            line = self._lines.get(tuple(keys))
            if line is not None:
                return line
            keys.pop()
        return None

    def _scan(self, text: str) -> None:
        table: tuple[str, ...] = ()
        open_quote: str | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            if open_quote is not None:  # inside a multi-line string
                if line.count(open_quote) % 2 == 1:
                    open_quote = None
                continue
            header = _HEADER.match(line)
            if header:
                table = _split_key(header.group("key"))
                self._remember(table, number)
                continue
            pair = _PAIR.match(line)
            if pair is None:
                continue
            full = (*table, *_split_key(pair.group("key")))
            for end in range(len(table) + 1, len(full) + 1):  # a.b = 1 also defines a
                self._remember(full[:end], number)
            rest = line[pair.end() :]
            if rest.lstrip().startswith("{"):
                for inline in _INLINE_PAIR.finditer(rest):
                    self._remember((*full, *_split_key(inline.group("key"))), number)
            for quote in ('"""', "'''"):
                if rest.count(quote) % 2 == 1:
                    open_quote = quote

    def _remember(self, keys: tuple[str, ...], number: int) -> None:
        self._lines.setdefault(keys, number)


# ---------------------------------------------------------------- error translation

_EXAMPLES = {
    "name": '"codex"',
    "zone": '"codex.localhost"',
    "github_repository": '"owner/name"',
    "migrate": '["python", "-m", "app.migrate"]',
    "run": '"python -m app"',
    "build": '"python -m compileall -q ."',
    "command": '"python -m pytest -q"',
    "pg_bin": '"/usr/lib/postgresql/16/bin"',
    "project_id": '"your-project-id"',
    "account_id": '"your-account-id"',
    "zone_id": '"your-zone-id"',
    "api_key": '"${NEON_API_KEY}"',
    "api_token": '"${CLOUDFLARE_API_TOKEN}"',
    "token": '"${GITHUB_TOKEN}"',
    "webhook_secret": '"${GITHUB_WEBHOOK_SECRET}"',
    "metrics_token": '"${BRANCHLINE_METRICS_TOKEN}"',
    "bind": '"127.0.0.1"',
    "service": '"api"',
    "names": '["AUTH_SECRET"]',
    "env": '{ LOG_LEVEL = "info" }',
}


def _unwrap(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The model a field holds, and whether it is a table of them (`services`)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _unwrap(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        for arg in get_args(annotation):
            if arg is not type(None):
                return _unwrap(arg)
    if origin is dict:
        model, _ = _unwrap(get_args(annotation)[1])
        return model, model is not None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    return None, False


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The model class of the table at `loc`, None when it is not a table we know."""
    model: type[BaseModel] = Config
    parts = list(loc)
    while parts:
        field = model.model_fields.get(str(parts.pop(0)))
        if field is None:
            return None
        inner, is_mapping = _unwrap(field.annotation)
        if inner is None or (is_mapping and not parts):
            return None
        if is_mapping:
            parts.pop(0)  # the user's name for the entry, e.g. the service name
        model = inner
    return model


def _field_at(loc: Loc) -> FieldInfo | None:
    if not loc or not isinstance(loc[-1], str):
        return None
    model = _model_at(loc[:-1])
    return model.model_fields.get(loc[-1]) if model else None


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, timedelta):
        return f'"{format_duration(value)}"'
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def _example(loc: Loc) -> str:
    """A plausible value for the key at `loc`, in TOML syntax."""
    key = str(loc[-1]) if loc else ""
    field = _field_at(loc)
    if field is not None and field.default not in (PydanticUndefined, None):
        return _toml(field.default)
    if key == "path" and len(loc) >= 2 and loc[0] == "services":
        return f'"services/{loc[1]}"'
    return _EXAMPLES.get(key, '"..."')


def _table_name(loc: Loc) -> str:
    return f"`[{_dotted(loc)}]`" if loc else "the top of the file"


def _translate(error: ValidationError, masked: frozenset[Loc]) -> _ProblemError:
    """Turn pydantic's first error into our message and hint."""
    details = error.errors()[0]
    loc: Loc = tuple(part for part in details["loc"] if part != "[key]")
    kind, ctx = details["type"], details.get("ctx") or {}
    if kind == "branchline":
        loc = (*loc, *ctx["loc"])
        key = next((str(part) for part in reversed(loc) if isinstance(part, str)), "value")
        return _ProblemError(loc, ctx["message"], ctx["hint"].replace("{key}", key))
    key = str(loc[-1]) if loc else ""
    hidden = any(isinstance(p, str) and is_secret_name(p) for p in loc) or any(
        loc[: len(path)] == path for path in masked
    )
    got = "a secret value" if hidden else _describe(details["input"])
    write = f"write `{key} = {_example(loc)}`"
    if loc and isinstance(loc[-1], int):  # an item of an array
        array = _dotted(loc[:-1])
        write = f'write every item of `{array}` as a quoted string, e.g. `["prog", "3"]`'

    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        allowed = list(model.model_fields) if model else []
        where = f" in {_table_name(loc[:-1])}" if loc[:-1] else ""
        return _ProblemError(loc, f"unknown key `{key}`{where}", _did_you_mean(key, allowed))
    if kind == "missing":
        return _missing(loc)
    messages = {
        "int": "expected a whole number",
        "bool": "expected true or false",
        "string": "expected a string",
        "literal": f"expected {ctx.get('expected', 'one of the allowed values')}",
        "dict": "expected a table",
        "model": "expected a table",
        "tuple": "expected an array",
        "list": "expected an array",
    }
    family = kind.split("_")[0]
    if family in messages:
        if family in ("dict", "model"):
            write = f"write `[{_dotted(loc)}]` as a table of keys"
        return _ProblemError(loc, f"{messages[family]}, got {got}", write)
    if kind in ("greater_than_equal", "greater_than"):
        bound = ctx.get("ge", ctx.get("gt"))
        relation = "at least" if kind == "greater_than_equal" else "more than"
        return _ProblemError(loc, f"must be {relation} {bound}, got {got}", write)
    message = str(details["msg"])
    return _ProblemError(loc, message[:1].lower() + message[1:], write)


def _missing(loc: Loc) -> _ProblemError:
    key = str(loc[-1])
    field = _field_at(loc)
    model = _unwrap(field.annotation)[0] if field else None
    if model is not None:
        required = [name for name, info in model.model_fields.items() if info.is_required()]
        keys = ", ".join(f"`{name}`" for name in required)
        return _ProblemError(
            loc,
            f"missing required table `[{_dotted(loc)}]`",
            f"add a `[{_dotted(loc)}]` table" + (f" with {keys}" if keys else ""),
        )
    return _ProblemError(
        loc,
        f"missing required key `{key}`",
        f"add `{key} = {_example(loc)}` under {_table_name(loc[:-1])}",
    )
