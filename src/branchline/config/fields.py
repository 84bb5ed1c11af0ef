"""The value types of the schema: durations, commands, names, paths.

Each is an `Annotated` type whose validator turns a bad value into our own message and
hint (`_invalid`, where `{key}` stands for the name of the key), so that pydantic's
messages are never shown.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from datetime import timedelta
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator

from branchline import naming
from branchline.config.durations import parse_duration
from branchline.config.problems import _describe, _invalid

# ------------------------------------------------------------------------ durations

_DURATION_HINT = (
    'write a number of seconds or a string such as `{key} = "30s"` '
    '(units ms, s, m, h, d; combined like "1h30m")'
)


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
    # The one rule for secret names lives in naming (it caps their length as well).
    if not naming.is_secret_name(value):
        raise _invalid(
            f"`{value}` is not a valid secret name",
            "use upper-case letters, digits and underscores, not starting with a digit, "
            f"at most {naming.MAX_SECRET_NAME} characters, e.g. `AUTH_SECRET`",
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


def bind_problem(value: str) -> str | None:
    """What is wrong with `value` as an address to listen on, or None. An IP address
    (v4 or v6; 0.0.0.0 or :: for every interface): a host name would resolve to one
    address of several, and a bracketed v6 literal is a URL's spelling."""
    try:
        ipaddress.ip_address(value.strip())
    except ValueError:
        return f"`{value}` is not an IP address to listen on"
    return None


BIND_HINT = (
    'write an IP address, e.g. `{key} = "127.0.0.1"` (this machine only, the default), '
    '`{key} = "0.0.0.0"` (every IPv4 interface) or `{key} = "::1"` (IPv6 loopback)'
)


def normalize_bind(value: str) -> str:
    """The one spelling of a valid bind address (`::0001` -> `::1`)."""
    return str(ipaddress.ip_address(value.strip()))


def _check_bind(value: str) -> str:
    problem = bind_problem(value)
    if problem is not None:
        raise _invalid(problem, BIND_HINT)
    return normalize_bind(value)


Slug = Annotated[str, AfterValidator(_check_slug)]
Label = Annotated[str, AfterValidator(_check_label)]
Domain = Annotated[str, AfterValidator(_check_domain)]
SecretName = Annotated[str, AfterValidator(_check_secret_env_name)]
EnvName = Annotated[str, AfterValidator(_check_env_name)]
Repository = Annotated[str, AfterValidator(_check_repository)]
NonEmpty = Annotated[str, AfterValidator(_check_not_empty)]
HealthPath = Annotated[str, AfterValidator(_check_health_path)]
BindAddress = Annotated[str, AfterValidator(_check_bind)]
