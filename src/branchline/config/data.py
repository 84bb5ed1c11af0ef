"""What a test or preview branch holds, and how a copy of production is masked.

`data` (under `[tests.<job>]` and `[preview]`):

- `"copy"`   production's data (the default), with `[database.mask]` applied;
- `"schema"` production's schema and no rows (the migration journal kept);
- `"empty"`  a fresh database that the migrations build from nothing;
- `"seed"`   like `"schema"`, then the `seed` command runs after the migrations.

`[database.mask]` maps `"table.column"` (or `"schema.table.column"`) to a masker
name, or to `{ sql = "..." }`, an SQL expression over the row's columns; and
`"table"` (or `"schema.table"`) to `"truncate"`, for tables whose rows are secrets
in themselves (sessions, tokens, audit trails). The rules are checked here; at
branch creation a missing table or column is an error naming its rule.
"""

from __future__ import annotations

import re
from typing import Literal

from branchline.config.base import _Model
from branchline.config.problems import _describe, _did_you_mean, _invalid

DataChoice = Literal["copy", "schema", "empty", "seed"]

# Each masker keeps NULLs NULL; the numbered ones give every row its own value (<n>:
# its integer primary key, else its position), so unique columns stay unique.
MASKERS: dict[str, str] = {
    "email": "user-<n>@example.invalid",
    "name": "User <n>",
    "phone": "+1-555-<n, 7 digits>",
    "null": "NULL (the column must allow it)",
    "hash": "md5 of a random salt and the value: equal values stay equal",
    "redact": "'[redacted]'",
}
TRUNCATE = "truncate"  # the one rule for a whole table

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")
_MASK_HINT = (
    'write `"users.email" = "email"` (maskers: '
    + ", ".join(f"`{name}`" for name in MASKERS)
    + '), `"users.bio" = { sql = "\'bio of \' || id" }`, or `"sessions" = "truncate"`'
)


class SqlMask(_Model):
    """`{ sql = "..." }`: an SQL expression giving each row's new value."""

    sql: str


MaskValue = str | SqlMask


def check_seed(data: str, seed: object, *, where: str) -> None:
    """`data = "seed"` is the schema plus a seed command: there must be one."""
    if data == "seed" and seed is None:
        raise _invalid(
            '`data = "seed"` needs a `seed` command',
            f'add `seed = ["python", "seed.py"]` (run after the migrations) under {where}, '
            'or choose another `data` ("copy", "schema", "empty")',
            loc=("seed",),
        )


def split_target(key: str) -> tuple[str, ...]:
    """`"users.email"` -> ("users", "email"); the parts are exact catalog names."""
    return tuple(key.split("."))


def check_mask_rules(rules: dict[str, object]) -> dict[str, MaskValue]:
    """`[database.mask]`, checked: keys are 1 to 3 identifiers joined by dots, column
    rules name a masker or an expression, table rules say `truncate`."""
    checked: dict[str, MaskValue] = {}
    for key, value in rules.items():
        parts = split_target(key)
        if not 1 <= len(parts) <= 3 or not all(_IDENTIFIER.fullmatch(p) for p in parts):
            raise _invalid(
                f"`{key}` is not a table or a column: write `table.column`, "
                "`schema.table.column`, or `table` (with `truncate`)",
                "use the names as the database has them, unquoted: letters, digits and "
                'underscores, e.g. `"users.email" = "email"`',
                loc=(key,),
            )
        checked[key] = _check_value(key, value, len(parts))
    return checked


def is_table_rule(value: MaskValue) -> bool:
    return value == TRUNCATE


def _check_expression(key: str, sql: str) -> str:
    if not sql.strip():
        raise _invalid("the SQL expression is empty", _MASK_HINT, loc=(key, "sql"))
    if ";" in sql:
        raise _invalid(
            "the SQL expression contains `;`: a mask is one expression, not statements",
            "write a single expression such as `'user ' || id` (chr(59) stands for `;`)",
            loc=(key, "sql"),
        )
    return sql


def _check_value(key: str, value: object, parts: int) -> MaskValue:
    if isinstance(value, dict):
        if set(value) != {"sql"} or not isinstance(value["sql"], str):
            raise _invalid(
                f'expected `{{ sql = "..." }}`, got a table with keys {sorted(value)}',
                _MASK_HINT,
                loc=(key,),
            )
        value = SqlMask(sql=_check_expression(key, value["sql"]))
    elif not isinstance(value, str):
        raise _invalid(f"expected a masker name, got {_describe(value)}", _MASK_HINT, loc=(key,))
    elif value == TRUNCATE:
        if parts == 3:
            raise _invalid(
                f"`{key}` names a column, and `truncate` empties a whole table",
                f'write `"{key.rsplit(".", 1)[0]}" = "truncate"`, or mask the column with '
                "a masker (`null`, `redact`, ...)",
                loc=(key,),
            )
        return value
    elif value not in MASKERS:
        raise _invalid(
            f"unknown masker `{value}`",
            _did_you_mean(value, [*MASKERS, TRUNCATE], noun="maskers")
            + ' (or an SQL expression: `{ sql = "..." }`)',
            loc=(key,),
        )
    if parts == 1:
        raise _invalid(
            f"`{key}` names a table: a masker or an expression needs a column",
            f'write `"{key}.<column>" = ...`, or `"{key}" = "truncate"` to empty the table',
            loc=(key,),
        )
    return value
