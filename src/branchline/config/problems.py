"""How a problem in branchline.toml is described before its file and line are known.

A check anywhere in the schema raises `_invalid(message, hint)`, which pydantic carries
through to `locate._translate`; interpolation raises `_ProblemError` itself. Both name
the offending key by its path (`Loc`), shown dotted (`services.api.run[2]`); values are
described briefly (`_describe`) and unknown names get a suggestion (`_did_you_mean`).
"""

from __future__ import annotations

import difflib
import re

from pydantic_core import PydanticCustomError

# A key path: table and key names, and array indexes.
Loc = tuple[str | int, ...]


class _ProblemError(Exception):
    """A config problem found before the file name and line are known."""

    def __init__(self, loc: Loc, message: str, hint: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message
        self.hint = hint


def _invalid(message: str, hint: str, loc: Loc = ()) -> PydanticCustomError:
    """A validation error that carries our own message and hint through pydantic.

    `loc` is added to the location pydantic reports (for model-level checks);
    `{key}` in the hint is replaced by the name of the offending key.
    """
    return PydanticCustomError(
        "branchline", "{message}", {"message": message, "hint": hint, "loc": loc}
    )


def _describe(value: object) -> str:
    """A short, single-line description of a TOML value for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    return type(value).__name__


def _dotted(loc: Loc) -> str:
    """`('services', 'api', 'run', 2)` -> `services.api.run[2]`."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            name = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else f'"{part}"'
            text += f".{name}" if text else name
    return text


def _did_you_mean(word: str, allowed: list[str], *, noun: str = "keys") -> str:
    close = difflib.get_close_matches(word, allowed, n=1, cutoff=0.6)
    if close:
        return f"did you mean `{close[0]}`?"
    if not allowed:
        return f"there are no {noun} here"
    return f"allowed {noun}: " + ", ".join(f"`{name}`" for name in allowed)
