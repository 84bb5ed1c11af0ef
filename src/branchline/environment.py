"""The Environment value: `production`, `preview-<pr>` or `local`, parsed once.

An environment binds one database branch, one deployment per service, host names
and a secrets scope. Text from a user, a URL, a form or the store becomes an
`Environment` through `Environment.parse` (the one parser); everything past that
boundary passes the value, never the string, so no caller re-parses a name.

Secrets live in *secret targets*, which are not all environments: `production`,
`preview` (shared by every preview), `test` (testing runs) and `preview-<pr>`
(one preview's own values, laid over `preview`). `secret_target` validates one;
`secret_layers` says which targets an environment reads, in overlay order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from branchline import naming
from branchline.errors import UsageError

__all__ = [
    "LOCAL",
    "PRODUCTION",
    "SECRET_SCOPES",
    "Environment",
    "secret_layers",
    "secret_scope",
    "secret_target",
]

Kind = Literal["production", "preview", "local"]
PRODUCTION = "production"
LOCAL = "local"
PREVIEW_PREFIX = "preview-"
TEST = "test"
SHARED_PREVIEW = "preview"
SECRET_SCOPES = (PRODUCTION, SHARED_PREVIEW, TEST)
"""The `[secrets.<scope>]` tables of branchline.toml."""

# preview-<n>: no sign, no leading zero; the number is checked against MAX_PR after.
_PREVIEW = re.compile(r"preview-([1-9][0-9]{0,9})")
_HINT = "Environments are `production`, `local` or `preview-<pr>` (like `preview-8`)."
_TARGET_HINT = (
    "secrets belong to `production`, `preview` (every preview), `test`, "
    "or one preview (`preview-8`)"
)


def _shown(text: object, limit: int = 40) -> str:
    shown = text if isinstance(text, str) else repr(text)
    return repr(shown if len(shown) <= limit else shown[: limit - 3] + "...")


@dataclass(frozen=True, order=True)
class Environment:
    """Where services run. Build it with `parse`, `preview`, `production` or `local`."""

    kind: Kind
    pr: int | None = None

    def __post_init__(self) -> None:
        if self.kind == "preview":
            naming.branch_for_pr(self.pr)  # type: ignore[arg-type]  # a valid PR, or UsageError
        elif self.pr is not None:
            raise ValueError("only a preview environment has a pull request")
        if self.kind not in ("production", "preview", "local"):
            raise ValueError(f"no environment is of kind {self.kind!r}")

    # -- making one -------------------------------------------------------------

    @classmethod
    def parse(cls, text: str) -> Environment:
        """`production`, `local` or `preview-<pr>`; anything else (`preview-0`,
        `preview-08`, other casing) is a UsageError that says what is accepted."""
        if text == PRODUCTION:
            return cls("production")
        if text == LOCAL:
            return cls("local")
        match = _PREVIEW.fullmatch(text) if isinstance(text, str) else None
        if match and int(match.group(1)) <= naming.MAX_PR:
            return cls("preview", int(match.group(1)))
        raise UsageError(f"Unknown environment {_shown(text, 80)}.", hint=_HINT)

    @classmethod
    def production(cls) -> Environment:
        return cls("production")

    @classmethod
    def local(cls) -> Environment:
        return cls("local")

    @classmethod
    def preview(cls, pr: int) -> Environment:
        return cls("preview", pr)

    # -- what it is -------------------------------------------------------------

    @property
    def name(self) -> str:
        return f"{PREVIEW_PREFIX}{self.pr}" if self.kind == "preview" else self.kind

    def __str__(self) -> str:
        return self.name

    @property
    def is_production(self) -> bool:
        return self.kind == "production"

    @property
    def is_preview(self) -> bool:
        return self.kind == "preview"

    def branch(self, production_branch: str) -> str | None:
        """The database branch this environment uses by default: `pr-<n>` for a
        preview, `production_branch` for production, none for `local`. (Production
        may have been pointed elsewhere by a restore: the kit knows.)"""
        if self.pr is not None:
            return naming.branch_for_pr(self.pr)
        return production_branch if self.is_production else None

    @property
    def secret_layers(self) -> tuple[str, ...]:
        """The secret targets read for this environment, later ones overriding."""
        return secret_layers(self.name)

    @property
    def secret_scope(self) -> str | None:
        """The `[secrets.<scope>]` table that declares this environment's names."""
        return None if self.kind == "local" else secret_scope(self.name)

    def worker_name(self, service: str) -> str:
        """The deployed unit of `service` here: `api-preview-8`, `api-production`."""
        return naming.worker_name(service, self)

    def host_name(self, subdomain: str, zone: str) -> str:
        """`api.<zone>` in production, `api-preview-8.<zone>` for a preview."""
        return naming.host_name(subdomain, self, zone)


# -- secret targets ------------------------------------------------------------------


def secret_target(text: str, *, reading: bool = False) -> str:
    """`text` when secrets can live there: production, preview, test, preview-<n>
    (and `local`, which holds none, when only `reading`)."""
    if reading and text == LOCAL:
        return text
    if text in SECRET_SCOPES:
        return text
    with_pr = _PREVIEW.fullmatch(text) if isinstance(text, str) else None
    if with_pr and int(with_pr.group(1)) <= naming.MAX_PR:
        return text
    raise UsageError(f"{_shown(text)} is not an environment secrets belong to", hint=_TARGET_HINT)


def secret_scope(target: str) -> str:
    """The `[secrets.<scope>]` table a target's names are declared in."""
    return SHARED_PREVIEW if target.startswith(PREVIEW_PREFIX) else target


def secret_layers(target: str) -> tuple[str, ...]:
    """The targets whose values `target` sees, in overlay order: a preview reads the
    shared `preview` values, then its own; `local` reads none."""
    if target == LOCAL:
        return ()
    if target.startswith(PREVIEW_PREFIX):
        return (SHARED_PREVIEW, target)
    return (target,)
