"""branchline.toml: its schema, its loader, and errors that say how to fix them.

`load_config()` reads the file with tomllib, replaces `${VAR}` references from the
environment, validates the result with the pydantic models below and returns a
`Config`. Every problem becomes one `ConfigError` (exit code 2) naming the file,
the dotted key path (`services.api.run`), the line when it can be found, what is
wrong and how to fix it. pydantic's own messages are never shown.

Interpolation, applied to every string value before validation:

- `${VAR}` is the value of VAR; an undefined VAR is an error;
- `${VAR:-default}` is `default` when VAR is unset or empty;
- `$$` is a literal `$`; any other `$` is left as it is (so `$PORT` reaches a shell).

Commands (`migrate`, `build`, `run`, a test job's `command`) are either a string,
split with `shlex.split` and never run through a shell, or an array of strings.
Interpolation happens before splitting: use the array form to keep a value with
spaces in one argument. Whoever needs pipes, `&&` or `$PORT` expansion writes the
shell explicitly: `run = ["sh", "-c", "exec app --port $PORT"]`. Services read
PORT and DATABASE_URL from their environment at run time; they are not known
when the file is loaded.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import shlex
import tomllib
import types
from collections.abc import Iterable, Mapping
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, Self, Union, cast, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError, PydanticUndefined

from branchline.errors import ConfigError

__all__ = [
    "CLOUD_HEALTH_DEFAULTS",
    "CONFIG_FILENAME",
    "LOCAL_HEALTH_DEFAULTS",
    "MASK",
    "CloudflareComputeConfig",
    "CloudflareDnsConfig",
    "ComputeConfig",
    "Config",
    "DatabaseConfig",
    "DnsConfig",
    "ForgeConfig",
    "GithubForgeConfig",
    "HealthConfig",
    "JobConfig",
    "LocalDatabaseConfig",
    "NeonConfig",
    "PreviewConfig",
    "ProjectConfig",
    "SecretScope",
    "SecretsConfig",
    "ServiceConfig",
    "find_config",
    "format_duration",
    "is_secret_name",
    "load_config",
    "parse_duration",
]

CONFIG_FILENAME = "branchline.toml"
MASK = "***"

# A key path: table and key names, and array indexes.
Loc = tuple[str | int, ...]

_SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASS|KEY|PRIVATE", re.IGNORECASE)


def is_secret_name(name: str) -> bool:
    """True when a variable or key name looks like it holds a secret (its value is masked)."""
    return _SECRET_NAME.search(name) is not None


# --------------------------------------------------------------------------- errors


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


# ------------------------------------------------------------------------ durations

_DURATION_TEXT = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_HINT = (
    'write a number of seconds or a string such as `{key} = "30s"` '
    '(units ms, s, m, h, d; combined like "1h30m")'
)


def parse_duration(value: object) -> timedelta:
    """Parse seconds (a number) or a string like "500ms", "30s", "5m", "1h30m", "2d".

    Raises ValueError with a readable message for anything else or a negative value.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _duration_text_seconds(value)
    else:
        raise ValueError(f"expected a duration, got {_describe(value)}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"expected a duration of zero or more, got {_describe(value)}")
    return timedelta(seconds=seconds)


def _duration_text_seconds(text: str) -> float:
    stripped = text.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", stripped):  # "30" from ${VAR} interpolation
        return float(stripped)
    if not _DURATION_TEXT.fullmatch(stripped):
        raise ValueError(f"expected a duration, got {_describe(text)}")
    return sum(
        float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION_PART.findall(stripped)
    )


def format_duration(value: timedelta) -> str:
    """The inverse of parse_duration, in hours at most: 72h, 1h30m, 30s, 500ms, 0s."""
    millis = round(value.total_seconds() * 1000)
    if millis == 0:
        return "0s"
    parts = []
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        count, millis = divmod(millis, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def _to_duration(value: object) -> timedelta:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise _invalid(str(exc), _DURATION_HINT) from None


Duration = Annotated[timedelta, BeforeValidator(_to_duration)]


# ------------------------------------------------------------------------- commands

_COMMAND_HINT = (
    'write `{key} = "prog --flag value"` or an array `{key} = ["prog", "--flag", "value"]`; '
    'for shell features write `["sh", "-c", "..."]`'
)


def _to_command(value: object) -> object:
    """A string is split like a shell would (but never run by one); arrays pass through."""
    if isinstance(value, str):
        try:
            argv: list[str] = shlex.split(value)
        except ValueError as exc:
            raise _invalid(f"cannot split the command: {exc}", _COMMAND_HINT) from None
        value = argv
    if not isinstance(value, list | tuple):
        raise _invalid(
            f"expected a command (a string or an array of strings), got {_describe(value)}",
            _COMMAND_HINT,
        )
    if not value:
        raise _invalid("the command is empty", _COMMAND_HINT)
    return value


Command = Annotated[tuple[str, ...], BeforeValidator(_to_command)]


# ---------------------------------------------------------------------------- names

# 40 characters leave room for "-preview-<pr>" inside a 63-character DNS label.
_SLUG = re.compile(r"[a-z][a-z0-9-]{0,39}")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?")
_DOMAIN_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_SECRET_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_REPOSITORY = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")

_SLUG_RULE = (
    "lowercase letters, digits and hyphens, starting with a letter and not ending "
    "with a hyphen, at most 40 characters"
)


def _slug_problem(name: str) -> str | None:
    """Why `name` is not a usable project, service or job name (None when it is)."""
    if _SLUG.fullmatch(name) and not name.endswith("-"):
        return None
    return f"`{name}` is not a valid name: use {_SLUG_RULE}"


def _check_slug(value: str) -> str:
    problem = _slug_problem(value)
    if problem:
        raise _invalid(problem, 'write for example `{key} = "codex"`')
    return value


def _check_label(value: str) -> str:
    if not _LABEL.fullmatch(value):
        raise _invalid(
            f"`{value}` is not a valid sub-domain: use lowercase letters, digits and hyphens, "
            "not starting or ending with a hyphen, at most 40 characters",
            'write for example `{key} = "api"`',
        )
    return value


def _check_domain(value: str) -> str:
    domain = value.strip().lower().rstrip(".")
    labels = domain.split(".")
    if len(domain) > 253 or len(labels) < 2 or not all(map(_DOMAIN_LABEL.fullmatch, labels)):
        raise _invalid(
            f"`{value}` is not a domain name",
            'write the domain previews are served under, e.g. `{key} = "codex.localhost"` '
            'or `{key} = "example.com"`',
        )
    return domain


def _check_secret_env_name(value: str) -> str:
    if not _SECRET_ENV_NAME.fullmatch(value):
        raise _invalid(
            f"`{value}` is not a valid secret name",
            "use upper-case letters, digits and underscores, e.g. `AUTH_SECRET`",
        )
    return value


def _check_env_name(value: str) -> str:
    if not _ENV_NAME.fullmatch(value):
        raise _invalid(
            f"`{value}` is not a valid environment variable name",
            "use letters, digits and underscores, not starting with a digit, e.g. `LOG_LEVEL`",
        )
    return value


def _check_repository(value: str) -> str:
    if not _REPOSITORY.fullmatch(value):
        raise _invalid(f"`{value}` is not an owner/name pair", 'write `{key} = "owner/name"`')
    return value


def _check_not_empty(value: str) -> str:
    if not value.strip():
        raise _invalid("must not be empty", 'write `{key} = "..."` with a value')
    return value


def _check_health_path(value: str) -> str:
    if not value.startswith("/"):
        raise _invalid(
            f"`{value}` must start with `/`", f'write `{{key}} = "/{value.lstrip("/")}"`'
        )
    return value


Slug = Annotated[str, AfterValidator(_check_slug)]
Label = Annotated[str, AfterValidator(_check_label)]
Domain = Annotated[str, AfterValidator(_check_domain)]
SecretName = Annotated[str, AfterValidator(_check_secret_env_name)]
EnvName = Annotated[str, AfterValidator(_check_env_name)]
Repository = Annotated[str, AfterValidator(_check_repository)]
NonEmpty = Annotated[str, AfterValidator(_check_not_empty)]
HealthPath = Annotated[str, AfterValidator(_check_health_path)]


# --------------------------------------------------------------------------- models


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


def _require_table(provider: str, table: object, section: str) -> None:
    """A cloud provider needs its own table of settings (`[database.neon]`, ...)."""
    if provider != "local" and table is None:
        raise _invalid(
            f'`provider = "{provider}"` needs a `[{section}.{provider}]` table',
            f'add a `[{section}.{provider}]` table, or write `provider = "local"`',
            loc=(provider,),
        )


class ProjectConfig(_Model):
    """`[project]`: the project's name and the domain its environments live under."""

    name: Slug
    zone: Domain  # e.g. "revelations.studio"; locally "codex.localhost"
    production_branch: NonEmpty = "main"
    github_repository: Repository | None = None  # "owner/name", for the github forge


class LocalDatabaseConfig(_Model):
    """`[database.local]`: one Postgres cluster per branch on this machine."""

    pg_bin: str | None = None  # Postgres bin directory; default: PATH, then the pgserver wheel
    # The database inside every branch that services connect to (Neon's "neondb").
    database: str = Field("app", pattern=r"^[a-z_][a-z0-9_]{0,62}$")


class NeonConfig(_Model):
    """`[database.neon]`: branches through the Neon API."""

    project_id: NonEmpty
    api_key: SecretStr
    api_url: str = "https://console.neon.tech/api/v2"
    database: str = "neondb"
    role: str = "neondb_owner"


class DatabaseConfig(_Model):
    """`[database]`: where branches come from and how the schema is migrated."""

    provider: Literal["local", "neon"] = "local"
    parent: NonEmpty = "production"  # every ephemeral branch is copied from this one
    migrate: Command  # run at the project root with DATABASE_URL set
    local: LocalDatabaseConfig = Field(default_factory=LocalDatabaseConfig)
    neon: NeonConfig | None = None

    @model_validator(mode="after")
    def _provider_table(self) -> Self:
        _require_table(self.provider, self.neon, "database")
        return self


class CloudflareComputeConfig(_Model):
    """`[compute.cloudflare]`: services as Cloudflare Workers."""

    account_id: NonEmpty
    api_token: SecretStr


class ComputeConfig(_Model):
    """`[compute]`: where services run."""

    provider: Literal["local", "cloudflare"] = "local"
    cloudflare: CloudflareComputeConfig | None = None

    @model_validator(mode="after")
    def _provider_table(self) -> Self:
        _require_table(self.provider, self.cloudflare, "compute")
        return self


class CloudflareDnsConfig(_Model):
    """`[dns.cloudflare]`: records through the Cloudflare DNS API."""

    zone_id: NonEmpty
    api_token: SecretStr


class DnsConfig(_Model):
    """`[dns]`: who serves the zone's records."""

    provider: Literal["local", "cloudflare"] = "local"
    cloudflare: CloudflareDnsConfig | None = None

    @model_validator(mode="after")
    def _provider_table(self) -> Self:
        _require_table(self.provider, self.cloudflare, "dns")
        return self


class GithubForgeConfig(_Model):
    """`[forge.github]`: pull requests, comments and issues on GitHub."""

    token: SecretStr
    webhook_secret: SecretStr | None = None
    api_url: str = "https://api.github.com"


class ForgeConfig(_Model):
    """`[forge]`: the code host (pull requests, comments, statuses, issues)."""

    provider: Literal["local", "github"] = "local"
    github: GithubForgeConfig | None = None

    @model_validator(mode="after")
    def _provider_table(self) -> Self:
        _require_table(self.provider, self.github, "forge")
        return self


# Set by branchline for each service process; a value in the file would be wrong.
_RESERVED_ENV = frozenset({"PORT", "DATABASE_URL"})


class ServiceConfig(_Model):
    """`[services.<name>]`: one deployable unit (the reference's "worker").

    `build` and `run` execute in the service's directory (`path`); `run` reads PORT
    and DATABASE_URL from its environment. `paths` are globs relative to the
    project root that mark the service as changed (default `<path>/**`; empty means
    always changed). `subdomain` defaults to the name and `order` to the position in
    the file; deploys go by (order, name).
    """

    path: str
    build: Command | None = None
    run: Command
    health_path: HealthPath = "/health"
    subdomain: Label
    order: int = 0
    paths: tuple[NonEmpty, ...] = ()
    env: dict[EnvName, str] = Field(default_factory=dict)

    _name: str = PrivateAttr(default="")

    @property
    def name(self) -> str:
        """The service's name: the key of its `[services.<name>]` table."""
        return self._name

    @field_validator("path")
    @classmethod
    def _path_is_directory(cls, value: str, info: ValidationInfo) -> str:
        if PurePosixPath(value).is_absolute():
            raise _invalid(
                f"path `{value}` is absolute",
                "write it relative to the directory of branchline.toml, "
                'e.g. `path = "services/api"`',
            )
        path = _normalize_path(value)
        root = (info.context or {}).get("root")
        if root is not None and not (Path(root) / path).is_dir():
            state = "is not a directory" if (Path(root) / path).exists() else "does not exist"
            raise _invalid(
                f"path `{path}` {state} in {root}",
                f"create the directory {Path(root) / path}, or set `path` to the service's "
                "directory relative to branchline.toml",
            )
        return path

    @field_validator("env")
    @classmethod
    def _no_reserved_env(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if name in _RESERVED_ENV:
                raise _invalid(
                    f"`{name}` is set by branchline when the service starts",
                    f"remove `{name}` from `env`; the service reads it from its environment",
                    loc=(name,),
                )
        return value


def _normalize_path(value: str) -> str:
    """`./services/api/` -> `services/api`; the project root is `.`."""
    return PurePosixPath(value).as_posix()


def _default_glob(path: str) -> str:
    path = _normalize_path(path)
    return "**" if path == "." else f"{path}/**"


class JobConfig(_Model):
    """`[tests.<job>]`: one job of the testing pipeline, run at the project root.

    `paths` are globs that decide whether the job runs (empty: always). With
    `database = true` the job gets DATABASE_URL of the run's ephemeral branch; with
    `own_branch = true` a branch of its own (the reference's separate E2E branch).
    """

    command: Command
    paths: tuple[NonEmpty, ...] = ()
    database: bool = False
    own_branch: bool = False
    timeout: Duration = timedelta(minutes=15)
    service: str | None = None  # the service this job tests, if any
    # One job per service (`unit-api`, `unit-auth`, ...), each run only when that
    # service's `paths` (or the job's own) changed; `{service}` and `{service_path}`
    # in `command` become the service's name and directory.
    per_service: bool = False

    _name: str = PrivateAttr(default="")

    @property
    def name(self) -> str:
        """The job's name: the key of its `[tests.<job>]` table."""
        return self._name

    @model_validator(mode="after")
    def _own_branch_needs_database(self) -> Self:
        if self.own_branch and not self.database:
            raise _invalid(
                "`own_branch = true` needs `database = true`",
                "a job gets its own database branch only when it uses a database: "
                "add `database = true`, or remove `own_branch`",
                loc=("own_branch",),
            )
        return self


class PreviewConfig(_Model):
    """`[preview]`: how long previews live and how many may run at once."""

    ttl: Duration = timedelta(hours=72)
    max_live: int = Field(default=10, ge=1)


class ProductionConfig(_Model):
    """`[production]`: how careful the production rollout is."""

    # A migration the live release cannot run against makes a code-only rollback
    # impossible; the rollout refuses it unless this says it is intended.
    allow_breaking_migrations: bool = False


# The reference waits for TLS certificates and edge propagation on the cloud.
CLOUD_HEALTH_DEFAULTS: dict[str, object] = {
    "first_wait": "30s",
    "later_wait": "15s",
    "retries": 10,
    "backoff_base": "5s",
    "service_timeout": "5m",
}
# Locally a service listens on loopback behind our own proxy: there is nothing to
# wait for. A small Python service needs ~75 ms to listen, so the first check is
# often refused; a 100 ms backoff base (measured: rollback 0.7 s with 500 ms)
# keeps "PR opened -> preview healthy" and rollbacks fast.
LOCAL_HEALTH_DEFAULTS: dict[str, object] = {
    "first_wait": "0s",
    "later_wait": "0s",
    "retries": 10,
    "backoff_base": "100ms",
    "service_timeout": "5m",
}


class HealthConfig(_Model):
    """`[health]`: checks after each deploy. Defaults depend on `[compute] provider`."""

    first_wait: Duration = timedelta(0)  # before checking the first service deployed
    later_wait: Duration = timedelta(0)  # before checking each later service
    retries: int = Field(default=10, ge=0)
    backoff_base: Duration = timedelta(milliseconds=500)  # waits are base * 2**attempt
    service_timeout: Duration = timedelta(minutes=5)  # at most this long per service

    @field_validator("service_timeout")
    @classmethod
    def _positive_timeout(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise _invalid("must be longer than zero", 'write for example `{key} = "5m"`')
        return value

    def wait_before(self, position: int) -> timedelta:
        """The wait before checking the service deployed at `position` (0 = first)."""
        return self.first_wait if position == 0 else self.later_wait

    def backoff_schedule(self) -> tuple[timedelta, ...]:
        """The waits between retries: base, 2*base, 4*base, ... (5s, 10s, 20s on the cloud)."""
        return tuple(self.backoff_base * 2**attempt for attempt in range(self.retries))


class SecretScope(_Model):
    """`[secrets.<environment>]`: the secret names an environment needs."""

    names: tuple[SecretName, ...] = ()
    generate: tuple[SecretName, ...] = ()  # made up (32 random bytes, base64) when missing

    @model_validator(mode="after")
    def _generate_subset_of_names(self) -> Self:
        seen: set[str] = set()
        for index, name in enumerate(self.names):
            if name in seen:
                raise _invalid(
                    f"`{name}` is listed twice", "list each name once", loc=("names", index)
                )
            seen.add(name)
        for index, name in enumerate(self.generate):
            if name not in seen:
                raise _invalid(
                    f"`{name}` is in `generate` but not in `names`",
                    f'add "{name}" to `names`, or remove it from `generate`',
                    loc=("generate", index),
                )
        return self


class SecretsConfig(_Model):
    """`[secrets]`: names per environment; values live in branchline's encrypted store."""

    production: SecretScope = Field(default_factory=SecretScope)
    preview: SecretScope = Field(default_factory=SecretScope)
    test: SecretScope = Field(default_factory=SecretScope)

    @model_validator(mode="after")
    def _production_is_never_generated(self) -> Self:
        if self.production.generate:
            name = self.production.generate[0]
            raise _invalid(
                "production secrets cannot be generated",
                f"remove `generate` from `[secrets.production]` and set the value with "
                f"`branchline secret set {name} --env production`",
                loc=("production", "generate"),
            )
        return self


class Config(_Model):
    """A loaded, validated branchline.toml. Build it with `load_config()`."""

    project: ProjectConfig
    database: DatabaseConfig
    compute: ComputeConfig = Field(default_factory=ComputeConfig)
    dns: DnsConfig = Field(default_factory=DnsConfig)
    forge: ForgeConfig = Field(default_factory=ForgeConfig)
    services: dict[str, ServiceConfig] = Field(default_factory=dict)
    tests: dict[str, JobConfig] = Field(default_factory=dict)
    preview: PreviewConfig = Field(default_factory=PreviewConfig)
    production: ProductionConfig = Field(default_factory=ProductionConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    secrets: SecretsConfig = Field(default_factory=SecretsConfig)

    _path: Path = PrivateAttr(default_factory=lambda: Path(CONFIG_FILENAME))
    # Values substituted from secret-looking variables (they may be inside a command).
    _secret_values: frozenset[str] = PrivateAttr(default_factory=frozenset)

    @property
    def path(self) -> Path:
        """The absolute path of branchline.toml."""
        return self._path

    @property
    def root(self) -> Path:
        """The directory holding branchline.toml; service paths are relative to it."""
        return self._path.parent

    def service_dir(self, service: ServiceConfig | str) -> Path:
        """The absolute directory of a service."""
        config = self.services[service] if isinstance(service, str) else service
        return self.root / config.path

    def services_in_deploy_order(self) -> list[ServiceConfig]:
        """Services sorted by (order, name): the order production deploys them in."""
        return sorted(self.services.values(), key=lambda service: (service.order, service.name))

    def secret_values(self) -> set[str]:
        """Every secret value in the config (to mask in logs); never print these."""
        found = set(self._secret_values)
        _collect_secrets(self, (), self._masked, found)
        return {value for value in found if value}

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: Any) -> Any:
        # Defaults that depend on other keys are filled in before validation, so that
        # the validated model holds only concrete values.
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if isinstance(data.get("health", {}), dict):
            data["health"] = {**_health_defaults(data.get("compute")), **data.get("health", {})}
        for section in ("services", "tests"):
            tables = data.get(section)
            if isinstance(tables, dict):
                _check_table_names(section, tables)
        services = data.get("services")
        if isinstance(services, dict):
            data["services"] = {
                name: _service_defaults(name, table, position)
                for position, (name, table) in enumerate(services.items(), start=1)
            }
        return data

    @model_validator(mode="after")
    def _cross_checks(self) -> Self:
        for name, service in self.services.items():
            service._name = name
        for name, job in self.tests.items():
            job._name = name
        _check_unique_subdomains(self.services)
        _check_job_services(self.tests, self.services)
        _assign_masks(self, self._masked | _secret_env_paths(self.services))
        return self

    def _attach(self, path: Path, secrets: _Secrets) -> None:
        self._path = path
        self._secret_values = frozenset(secrets.values)
        _assign_masks(self, self._masked | frozenset(secrets.paths))


def _health_defaults(compute: object) -> dict[str, object]:
    provider = compute.get("provider", "local") if isinstance(compute, dict) else "local"
    return dict(LOCAL_HEALTH_DEFAULTS if provider == "local" else CLOUD_HEALTH_DEFAULTS)


def _check_table_names(section: str, tables: dict[str, Any]) -> None:
    for name in tables:
        problem = _slug_problem(name)
        if problem:
            kind = "service" if section == "services" else "test job"
            raise _invalid(
                f"{kind} name {problem}",
                f"rename `[{section}.{name}]`, e.g. `[{section}.{_suggest_slug(name)}]`",
                loc=(section, name),
            )


def _suggest_slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:40].rstrip("-")
    if not slug or not slug[0].isalpha():
        slug = f"s-{slug}".rstrip("-")
    return slug


def _service_defaults(name: str, table: object, position: int) -> object:
    if not isinstance(table, dict):
        return table
    filled = {"subdomain": name, "order": position, **table}
    if "paths" not in table and isinstance(table.get("path"), str):
        filled["paths"] = [_default_glob(table["path"])]
    return filled


def _check_unique_subdomains(services: Mapping[str, ServiceConfig]) -> None:
    owners: dict[str, str] = {}
    for name, service in services.items():
        first = owners.setdefault(service.subdomain, name)
        if first != name:
            raise _invalid(
                f"sub-domain `{service.subdomain}` is used by both `{first}` and `{name}`",
                f'each service needs its own host name: set `subdomain = "..."` under '
                f"`[services.{name}]` to one no other service uses",
                loc=("services", name, "subdomain"),
            )


def _check_job_services(jobs: Mapping[str, JobConfig], services: Mapping[str, Any]) -> None:
    for name, job in jobs.items():
        if job.per_service and job.service is not None:
            raise _invalid(
                "`per_service = true` and `service` contradict each other",
                "keep `per_service` to test every service in its own job, or `service` "
                "for a job about one service",
                loc=("tests", name, "per_service"),
            )
        if job.service is not None and job.service not in services:
            raise _invalid(
                f"unknown service `{job.service}`",
                _did_you_mean(job.service, list(services), noun="services"),
                loc=("tests", name, "service"),
            )


def _secret_env_paths(services: Mapping[str, ServiceConfig]) -> frozenset[Loc]:
    return frozenset(
        ("services", name, "env", key)
        for name, service in services.items()
        for key in service.env
        if is_secret_name(key)
    )


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


def _did_you_mean(word: str, allowed: list[str], *, noun: str = "keys") -> str:
    close = difflib.get_close_matches(word, allowed, n=1, cutoff=0.6)
    if close:
        return f"did you mean `{close[0]}`?"
    if not allowed:
        return f"there are no {noun} here"
    return f"allowed {noun}: " + ", ".join(f"`{name}`" for name in allowed)


# -------------------------------------------------------------------- interpolation

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


# -------------------------------------------------------------------------- loading


def load_config(path: Path | str, env: Mapping[str, str] | None = None) -> Config:
    """Read, interpolate and validate branchline.toml (a file, or a directory holding one).

    `env` is used for `${VAR}` references (default: os.environ). Raises ConfigError,
    one line plus a hint, for every problem.
    """
    file = Path(path)
    if file.is_dir():
        file = file / CONFIG_FILENAME
    text = _read(file)
    raw = _parse_toml(text, file)
    secrets = _Secrets()
    try:
        resolved = _interpolate(raw, (), os.environ if env is None else env, secrets)
        try:
            config = Config.model_validate(resolved, context={"root": file.resolve().parent})
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
    config._attach(file.resolve(), secrets)
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
