"""The base of every table, and which of its values are secret.

`_Model` makes unknown keys errors and tables immutable, and shows every secret value
as `MASK`, in its repr and in `display_dict()`. A value is secret when it is a
`SecretStr`, sits under a key that looks like it holds a secret (`is_secret_name`), or
came from such a `${VAR}`: `_assign_masks` gives every nested table the masked key
paths below it, and `_collect_secrets` gathers the values to hide in logs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import timedelta
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, PrivateAttr, SecretStr

from branchline.config.durations import format_duration
from branchline.config.problems import Loc

MASK = "***"

_SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASS|KEY|PRIVATE", re.IGNORECASE)


def is_secret_name(name: str) -> bool:
    """True when a variable or key name looks like it holds a secret (its value is masked)."""
    return _SECRET_NAME.search(name) is not None


class _Model(BaseModel):
    """Base of every table: unknown keys are errors; secrets never reach repr()."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Key paths (relative to this table) whose values are secrets and must be masked.
    _masked: frozenset[Loc] = PrivateAttr(default_factory=frozenset)

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, (value if name is None else _masked_copy(value, (name,), self._masked))

    def display_dict(self) -> dict[str, Any]:
        """Plain JSON-able data: durations as "30s", commands as lists, secrets as "***"."""
        return cast(dict[str, Any], _plain(self, (), self._masked))


def _masked_copy(value: Any, loc: Loc, masked: frozenset[Loc]) -> Any:
    if loc in masked:
        return MASK
    if not any(path[: len(loc)] == loc for path in masked):
        return value
    if isinstance(value, dict):
        return {key: _masked_copy(item, (*loc, key), masked) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_masked_copy(item, (*loc, i), masked) for i, item in enumerate(value))
    return value


def _plain(value: Any, loc: Loc, masked: frozenset[Loc]) -> Any:
    if loc in masked or isinstance(value, SecretStr):
        return MASK
    if isinstance(value, BaseModel):
        fields = type(value).model_fields
        return {name: _plain(getattr(value, name), (*loc, name), masked) for name in fields}
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, dict):
        return {str(key): _plain(item, (*loc, key), masked) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item, (*loc, i), masked) for i, item in enumerate(value)]
    return value


def _assign_masks(model: _Model, masked: frozenset[Loc]) -> None:
    """Give every nested table the masked paths relative to itself (for its repr)."""
    model._masked = masked
    for name in type(model).model_fields:
        below = _below(masked, name)
        value = getattr(model, name)
        if isinstance(value, _Model):
            _assign_masks(value, below)
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, _Model):
                    _assign_masks(item, _below(below, key))


def _below(masked: frozenset[Loc], key: str | int) -> frozenset[Loc]:
    return frozenset(path[1:] for path in masked if len(path) > 1 and path[0] == key)


def _collect_secrets(value: Any, loc: Loc, masked: frozenset[Loc], found: set[str]) -> None:
    if isinstance(value, SecretStr):
        found.add(value.get_secret_value())
    elif loc in masked and isinstance(value, str):
        found.add(value)
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            _collect_secrets(getattr(value, name), (*loc, name), masked, found)
    elif isinstance(value, dict):
        for key, item in value.items():
            _collect_secrets(item, (*loc, key), masked, found)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _collect_secrets(item, (*loc, index), masked, found)
