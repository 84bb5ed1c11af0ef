"""Safe, deterministic names from git refs, PR numbers and service names.

Every name branchline gives to something outside its own store comes from here:
database branch ids (also local directory names, local Postgres cluster names and
Neon branch names), environment names, worker names, DNS labels, host names and SQL
identifiers. All functions are pure: the same input always gives the same name, on
every machine and every run (no salt, no ``hash()``).

Uniqueness rule
---------------
A generated name is a *readable part*, plus a *hash suffix* when one is needed.

* The readable part is the input normalised for its target: Unicode NFKD with every
  non-ASCII character dropped, lower-cased, each run of any other character replaced
  by one separator (``-`` for slugs, ``_`` for SQL identifiers), separators stripped
  from both ends, ``x`` when nothing is left.
* When the input is already *canonical* -- normalising returns it unchanged, it fits
  ``max_len``, it does not itself end in something shaped like a hash suffix
  (separator + 8 hex digits) and, for SQL, it is not a reserved keyword -- it is used
  as is: ``feature-login`` stays ``feature-login``.
* Otherwise the readable part is cut to fit and ``<separator><8 hex>`` is appended:
  the first 8 hex digits of SHA-256 of the *original* text. ``Feature/Login`` becomes
  ``feature-login-<hash>`` and can never collide with ``feature-login``.

Unchanged names never end in ``<separator><8 hex>`` and hashed names always do, so the
two kinds cannot collide. Two hashed names collide only when both the readable part and
a 32-bit hash agree: never for names people choose, though not a defence against
someone deliberately brute-forcing a colliding name. A consequence is that these
functions are not idempotent on hashed names (``slug(slug("A"))`` hashes again): pass
the original text, and use :func:`validate_branch_id` for names that are already ids.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import TYPE_CHECKING

from branchline.errors import UsageError

if TYPE_CHECKING:  # the value only; environment.py builds on this module
    from branchline.environment import Environment

__all__ = [
    "MAX_HOST_NAME",
    "MAX_LABEL",
    "MAX_PR",
    "MAX_REF",
    "MIN_MAX_LEN",
    "PRODUCTION_BRANCH",
    "branch_for_pr",
    "branch_for_push",
    "branch_name_problem",
    "check_git_branch",
    "check_pr_number",
    "dev_branch",
    "dns_label",
    "e2e_branch_for_pr",
    "git_ref_to_branch",
    "host_name",
    "in_zone",
    "is_secret_name",
    "normalize_zone",
    "printable",
    "quote_ident",
    "ref_problem",
    "slug",
    "sql_identifier",
    "validate_branch_id",
    "validate_secret_name",
    "worker_name",
]

PRODUCTION_BRANCH = "production"
"""The database branch every other branch is copied from."""

MAX_LABEL = 63
"""Longest DNS label, branch id, worker name and SQL identifier (Postgres NAMEDATALEN-1)."""
MAX_HOST_NAME = 253
"""Longest host name, without a trailing dot."""
MIN_MAX_LEN = 16
"""Smallest ``max_len`` accepted: room for a readable part and the hash suffix."""
MAX_PR = 2**31 - 1
"""Largest PR number accepted (GitHub's are 32-bit); keeps every derived name short."""

_HASH_LEN = 8
_BRANCH_ID_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_SLUG_HASHED_RE = re.compile(r"-[0-9a-f]{8}$")
_SQL_HASHED_RE = re.compile(r"_[0-9a-f]{8}$")
_NOT_SLUG_CHARS = re.compile(r"[^a-z0-9]+")
_SHA_RE = re.compile(r"[0-9a-fA-F]{7,64}")
_ENV_SUFFIX_RE = re.compile(r"-(?:production|local|preview-[0-9]+)$")
MAX_SECRET_NAME = 128
"""Longest secret name (an environment variable's name)."""
_SECRET_NAME_RE = re.compile(rf"[A-Z_][A-Z0-9_]{{0,{MAX_SECRET_NAME - 1}}}")
_ZONE_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")

# Postgres keywords that cannot be used as unquoted names: categories "reserved" and
# "reserved (can be function or type)" of src/include/parser/kwlist.h.
_SQL_RESERVED = frozenset(
    [
        "all",
        "analyse",
        "analyze",
        "and",
        "any",
        "array",
        "as",
        "asc",
        "asymmetric",
        "authorization",
        "binary",
        "both",
        "case",
        "cast",
        "check",
        "collate",
        "collation",
        "column",
        "concurrently",
        "constraint",
        "create",
        "cross",
        "current_catalog",
        "current_date",
        "current_role",
        "current_schema",
        "current_time",
        "current_timestamp",
        "current_user",
        "default",
        "deferrable",
        "desc",
        "distinct",
        "do",
        "else",
        "end",
        "except",
        "false",
        "fetch",
        "for",
        "foreign",
        "freeze",
        "from",
        "full",
        "grant",
        "group",
        "having",
        "ilike",
        "in",
        "initially",
        "inner",
        "intersect",
        "into",
        "is",
        "isnull",
        "join",
        "lateral",
        "leading",
        "left",
        "like",
        "limit",
        "localtime",
        "localtimestamp",
        "natural",
        "not",
        "notnull",
        "null",
        "offset",
        "on",
        "only",
        "or",
        "order",
        "outer",
        "overlaps",
        "placing",
        "primary",
        "references",
        "returning",
        "right",
        "select",
        "session_user",
        "similar",
        "some",
        "symmetric",
        "system_user",
        "table",
        "tablesample",
        "then",
        "to",
        "trailing",
        "true",
        "union",
        "unique",
        "user",
        "using",
        "variadic",
        "verbose",
        "when",
        "where",
        "window",
        "with",
    ]
)

_PR_HINT = f"PR numbers are positive whole numbers up to {MAX_PR} (2^31 - 1), like 8."
_ZONE_HINT = (
    "Use a DNS zone like `preview.example.com` or `codex.localhost`: labels of a-z, "
    "0-9 and '-' (not at either end), each at most 63 characters, 253 in all."
)


# -- building blocks ---------------------------------------------------------------


def _short_hash(text: str) -> str:
    """First 8 hex digits of SHA-256 of ``text`` (UTF-8; lone surrogates kept)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_LEN]


def _ascii_lower(text: str) -> str:
    """NFKD-normalise, drop everything that is not ASCII, lower-case."""
    decomposed = unicodedata.normalize("NFKD", text)
    return decomposed.encode("ascii", "ignore").decode("ascii").lower()


def _preview(text: str, limit: int = 80) -> str:
    """A bounded ``repr`` of user input for error messages."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _check_max_len(max_len: int) -> None:
    if max_len < MIN_MAX_LEN:
        raise ValueError(f"max_len must be at least {MIN_MAX_LEN}, got {max_len}")


def _with_hash(readable: str, original: str, sep: str, max_len: int) -> str:
    """Cut ``readable`` so that ``<readable><sep><hash of original>`` fits ``max_len``."""
    head = readable[: max_len - len(sep) - _HASH_LEN].rstrip(sep)
    return f"{head}{sep}{_short_hash(original)}"


# -- slugs, branch ids and DNS labels -----------------------------------------------


def _slug_readable(text: str) -> str:
    return _NOT_SLUG_CHARS.sub("-", _ascii_lower(text)).strip("-") or "x"


def slug(text: str, max_len: int = MAX_LABEL) -> str:
    """Turn any text into ``[a-z0-9]+(-[a-z0-9]+)*`` of at most ``max_len`` characters.

    Canonical input (see the module docstring) is returned unchanged; anything else
    gets its readable part cut to fit plus ``-<8 hex of SHA-256 of text>``, so that
    distinct inputs give distinct slugs. The result is a valid branch id, directory
    name and (with the default ``max_len``) DNS label. Raises ``ValueError`` when
    ``max_len`` is below :data:`MIN_MAX_LEN`.
    """
    _check_max_len(max_len)
    readable = _slug_readable(text)
    if readable == text and len(text) <= max_len and not _SLUG_HASHED_RE.search(text):
        return text
    return _with_hash(readable, text, "-", max_len)


def dns_label(text: str) -> str:
    """A DNS label for any text: ``[a-z0-9-]``, at most 63, no hyphen at either end.

    Same as ``slug(text, 63)``; the label never contains ``--`` either, so it can
    never look like an IDNA ``xn--`` label.
    """
    return slug(text, MAX_LABEL)


def validate_branch_id(name: str) -> str:
    """Return ``name`` if it is already a valid branch id, else raise ``UsageError``.

    For ids typed by a user or read back from the store; generated ids always pass.
    """
    if len(name) <= MAX_LABEL and _BRANCH_ID_RE.fullmatch(name):
        return name
    suggestion = slug(name) if name.strip() else "dev-mine"
    raise UsageError(
        f"{_preview(name)} is not a database branch name",
        hint="Branch names are up to 63 characters of a-z, 0-9 and single '-', "
        f"like `pr-8` or `production`; for example `{suggestion}`.",
    )


def check_pr_number(pr: object) -> int:
    """``pr`` when it can number a pull request: an ``int`` (not a ``bool``) from 1 to
    :data:`MAX_PR` (GitHub's are 32-bit), else ``UsageError``."""
    if isinstance(pr, bool) or not isinstance(pr, int) or not 0 < pr <= MAX_PR:
        shown = _preview(repr(pr), 40)[1:-1] if not isinstance(pr, int) else str(pr)[:40]
        raise UsageError(f"Invalid pull request number {shown}.", hint=_PR_HINT)
    return pr


_check_pr = check_pr_number


def branch_for_pr(pr: int) -> str:
    """The database branch of a pull request's preview: ``pr-8``."""
    return f"pr-{_check_pr(pr)}"


def e2e_branch_for_pr(pr: int) -> str:
    """The separate database branch a PR's end-to-end tests use: ``pr-8-e2e``."""
    return f"{branch_for_pr(pr)}-e2e"


def branch_for_pr_commit(pr: int, sha: str) -> str:
    """The ephemeral test branch of one commit of a pull request: ``pr-8-1a2b3c4d``."""
    return f"{branch_for_pr(pr)}-{_short_sha(sha)}"


def e2e_branch_for(branch: str) -> str:
    """The end-to-end tests' own branch beside an ephemeral one, at most 63 characters:
    ``pr-8`` -> ``pr-8-e2e``; a long ``push-...`` name is cut to make room."""
    return f"{branch[: MAX_LABEL - 4].rstrip('-')}-e2e"


def git_ref_to_branch(ref: str) -> str:
    """The branch name of a git ref: ``refs/heads/feature/x`` or ``feature/x`` -> ``feature/x``.

    Only branches get database branches: any other ``refs/...`` ref (tags, pull request
    refs, remotes) and an empty name raise ``UsageError``. The name is returned as git
    has it (it may contain ``/`` or anything else); pass it through :func:`slug` or
    :func:`branch_for_push` before using it as a name.
    """
    if ref.startswith("refs/heads/"):
        branch = ref.removeprefix("refs/heads/")
    elif ref.startswith("refs/"):
        raise UsageError(
            f"Git ref {_preview(ref)} is not a branch.",
            hint="Pass a branch, as `main` or `refs/heads/main`; tags and pull request "
            "refs do not get database branches.",
        )
    else:
        branch = ref
    if not branch:
        raise UsageError(
            f"Git ref {_preview(ref)} names no branch.",
            hint="Pass a branch, as `main` or `refs/heads/main`.",
        )
    return branch


def _short_sha(sha: str) -> str:
    if not _SHA_RE.fullmatch(sha):
        raise UsageError(
            f"{_preview(sha)} is not a git commit id.",
            hint="Pass the commit's hexadecimal id (7 to 64 characters; the full id is best).",
        )
    return sha.lower()[:_HASH_LEN]


def branch_for_push(ref: str, sha: str) -> str:
    """The ephemeral test branch of a push: ``push-<branch slug>-<sha8>``, at most 63.

    ``ref`` is a branch as accepted by :func:`git_ref_to_branch`; ``sha`` a commit id
    of 7 to 64 hex digits (64 for SHA-256 repositories), lower-cased and cut to 8.
    Pass the full id: a 7-digit abbreviation gives a different name than the full id.
    """
    branch = git_ref_to_branch(ref)
    short = _short_sha(sha)
    prefix = "push-"
    room = MAX_LABEL - len(prefix) - 1 - len(short)
    return f"{prefix}{slug(branch, room)}-{short}"


def dev_branch(name: str) -> str:
    """A developer's personal database branch: ``dev-<slug of name>``, at most 63."""
    if not name.strip():
        raise UsageError(
            "A developer branch needs a name.", hint="Pass a name, like your user name."
        )
    prefix = "dev-"
    return prefix + slug(name, MAX_LABEL - len(prefix))


# -- git refs --------------------------------------------------------------------------

MAX_REF = 255
"""Longest branch name accepted, in UTF-8 bytes (a ref is a file name in .git too)."""

# What git's refname_disposition table refuses anywhere in a ref: ASCII control
# characters, DEL, space, '~', '^', ':', '?', '*', '[' and '\\'.
_GIT_BAD_CHARS = frozenset([chr(c) for c in range(0x20)] + ["\x7f", " ", "~", "^", ":", "?",
                                                          "*", "[", "\\"])  # fmt: skip
# Stricter than git: characters that can hide or reorder what a listing shows (C1
# controls, line and paragraph separators, bidirectional overrides and isolates).
_HIDING = frozenset(
    [chr(c) for c in range(0x80, 0xA0)]
    + ["\u061c", "\u200e", "\u200f", "\u2028", "\u2029"]
    + [chr(c) for c in range(0x202A, 0x202F)]
    + [chr(c) for c in range(0x2066, 0x206A)]
)
GIT_REF_HINT = (
    "Branch names follow `git check-ref-format`: no space, control character, '..', "
    "'@{', '~', '^', ':', '?', '*', '[' or '\\'; no part starting with '.' or ending "
    "with '.lock'; not starting with '-' or '/', not ending with '/' or '.'."
)


def _char_name(char: str) -> str:
    if char == " ":
        return "a space"
    if char.isprintable():
        return repr(char)
    return f"the non-printing character U+{ord(char):04X}"


def ref_problem(ref: str) -> str | None:
    """Why ``ref`` (a full ref such as ``refs/heads/main``) breaks git's rules for ref
    names (``git check-ref-format``, from refs.c), or None when it keeps them."""
    if not ref:
        return "it is empty"
    if ref == "@":
        return "it is '@'"
    for char in ref:
        if char in _GIT_BAD_CHARS:
            return f"it contains {_char_name(char)}"
        if char in _HIDING or "\ud800" <= char <= "\udfff":
            return f"it contains {_char_name(char)}"
    for sequence in ("..", "@{", "//"):
        if sequence in ref:
            return f"it contains {sequence!r}"
    if ref.startswith("/") or ref.endswith("/"):
        return "it starts or ends with '/'"
    if ref.endswith("."):
        return "it ends with '.'"
    for part in ref.split("/"):
        if part.startswith("."):
            return "a part of it starts with '.'"
        if part.endswith(".lock"):
            return "a part of it ends with '.lock'"
    return None


def branch_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a git branch (``git check-ref-format --branch``, plus a
    length cap and no characters that hide text), or None when it can."""
    if len(name.encode("utf-8", "surrogatepass")) > MAX_REF:
        return f"it is longer than {MAX_REF} bytes"
    if name.startswith("-"):
        return "it starts with '-'"
    if name in ("HEAD", "@"):  # git reads both as the current commit
        return f"it is {name!r}"
    return ref_problem(f"refs/heads/{name}") if name else "it is empty"


def check_git_branch(name: str, what: str = "git branch name") -> str:
    """``name`` when it can be a git branch, else ``UsageError`` saying which rule it
    breaks (the name is quoted back escaped and cut to 80 characters)."""
    problem = branch_name_problem(name)
    if problem is not None:
        raise UsageError(f"'{printable(name, 80)}' is not a {what}: {problem}", hint=GIT_REF_HINT)
    return name


def printable(text: str, limit: int | None = None) -> str:
    """``text`` safe on one line of a listing or message: control, separator and
    bidirectional characters written as escapes (``\\n``, ``\\x1b``, ``\\u202e``), cut
    to ``limit`` characters. Names refused at the door never need it; rows older than
    that rule might."""
    shown = text if limit is None or len(text) <= limit else text[:limit] + "..."
    if shown.isprintable() and not any(char in _HIDING for char in shown):
        return shown
    return "".join(
        char if char.isprintable() and char not in _HIDING else repr(char)[1:-1] for char in shown
    )


# -- secret names ------------------------------------------------------------------


def is_secret_name(name: str) -> bool:
    """Whether ``name`` can name a secret: an environment variable's name of upper-case
    letters, digits and ``_``, not starting with a digit, at most 128 characters."""
    return isinstance(name, str) and _SECRET_NAME_RE.fullmatch(name) is not None


SECRET_NAME_HINT = (
    "a secret name is an environment variable's name: upper-case letters, digits and "
    f"underscores, not starting with a digit, at most {MAX_SECRET_NAME} characters "
    "(e.g. AUTH_SECRET)"
)


def validate_secret_name(name: str) -> str:
    """``name`` if :func:`is_secret_name`, else ``UsageError``. The name is not quoted
    back: a value typed in its place must not reach the output."""
    if is_secret_name(name):
        return name
    raise UsageError("that is not a valid secret name", hint=SECRET_NAME_HINT)


# -- environments, workers and host names ---------------------------------------------


def worker_name(service: str, environment: Environment) -> str:
    """The deployed unit of ``service`` in ``environment``: ``api-preview-8``, ``api-production``.

    A DNS label of at most 63 characters: the service's slug (cut and hashed as
    :func:`slug` does) followed by ``-<environment>``. The environment suffix has a
    fixed shape, so different (service, environment) pairs never share a name.
    """
    suffix = f"-{environment.name}"
    return slug(service, MAX_LABEL - len(suffix)) + suffix


def _subdomain_label(text: str, max_len: int) -> str:
    """Like :func:`slug`, but hashed as well when it ends like an environment suffix.

    So that the production host of subdomain ``api-preview-8`` cannot be the preview
    host of subdomain ``api``.
    """
    label = slug(text, max_len)
    if _ENV_SUFFIX_RE.search(label):
        return _with_hash(label, text, "-", max_len)
    return label


def normalize_zone(zone: str) -> str:
    """Validate a DNS zone and return it lower-cased, without a trailing dot.

    Raises ``UsageError`` (with a hint) unless every label is 1 to 63 characters of
    ``[a-z0-9-]`` not starting or ending with ``-``, the last label is not all digits,
    and the zone is at most 253 characters.
    """
    name = zone.removesuffix(".")
    labels = name.lower().split(".")
    valid = (
        name.isascii()
        and len(name) <= MAX_HOST_NAME
        and all(_ZONE_LABEL_RE.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()
    )
    if not valid:
        raise UsageError(f"Invalid DNS zone {_preview(zone)}.", hint=_ZONE_HINT)
    return name.lower()


def in_zone(name: str, zone: str) -> bool:
    """Whether the (normalised, dot-less) host ``name`` is the zone apex or below it."""
    return name == zone or name.endswith("." + zone)


def release_name(service: str, commit: str, build_number: int) -> str:
    """How a release is shown: ``api@0123456789ab.2`` (service, commit, build)."""
    return f"{service}@{commit[:12]}.{build_number}"


def host_name(service_subdomain: str, environment: Environment, zone: str) -> str:
    """The public host name of a service in an environment.

    ``production`` -> ``api.<zone>``; ``preview-8`` -> ``api-preview-8.<zone>``;
    ``local`` -> ``api-local.<zone>``. The first label is at most 63 characters; the
    subdomain is slugged as :func:`slug` does (and hashed when it ends like an
    environment suffix, so production and preview hosts never meet). Raises
    ``UsageError`` for a bad zone or a host over 253.
    """
    domain = normalize_zone(zone)
    suffix = "" if environment.is_production else f"-{environment.name}"
    host = f"{_subdomain_label(service_subdomain, MAX_LABEL - len(suffix))}{suffix}.{domain}"
    if len(host) > MAX_HOST_NAME:
        raise UsageError(
            f"Host name for zone {_preview(zone)} would exceed {MAX_HOST_NAME} characters.",
            hint="Use a shorter DNS zone.",
        )
    return host


# -- SQL identifiers ---------------------------------------------------------------------


def _sql_readable(text: str) -> str:
    readable = _NOT_SLUG_CHARS.sub("_", _ascii_lower(text)).strip("_") or "x"
    if readable[0].isdigit() or readable.startswith("pg_"):
        readable = "_" + readable
    return readable


def sql_identifier(text: str, max_len: int = MAX_LABEL) -> str:
    """Turn any text into a name Postgres accepts unquoted: ``[a-z_][a-z0-9_]*``.

    At most ``max_len`` (default 63, Postgres' NAMEDATALEN-1) bytes; never a reserved
    keyword; never starting with ``pg_`` (reserved for roles and schemas: such names get
    a leading ``_``). Same uniqueness rule as :func:`slug` with ``_`` as separator, so
    ``pr-8`` becomes ``pr_8_<hash>`` while ``pr_8`` stays ``pr_8``. Raises
    ``ValueError`` when ``max_len`` is below :data:`MIN_MAX_LEN`.
    """
    _check_max_len(max_len)
    readable = _sql_readable(text)
    canonical = (
        readable == text
        and len(text) <= max_len
        and not _SQL_HASHED_RE.search(text)
        and text not in _SQL_RESERVED
    )
    return text if canonical else _with_hash(readable, text, "_", max_len)


def _quotable(name: str) -> bool:
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates cannot be sent to Postgres
        return False
    return 0 < size <= MAX_LABEL and "\x00" not in name


def quote_ident(name: str) -> str:
    """Double-quote ``name`` as a Postgres identifier, doubling embedded quotes.

    Prefer ``psycopg.sql.Identifier`` at call sites that build SQL with psycopg; this
    is for the few places that must write SQL text themselves (for example a script
    handed to ``psql``). Raises ``UsageError`` for an empty name, a NUL character, a
    lone surrogate, or more than 63 UTF-8 bytes (which Postgres would silently truncate).
    """
    if not _quotable(name):
        raise UsageError(
            f"{_preview(name)} cannot be a Postgres identifier.",
            hint="Identifiers are 1 to 63 bytes without NUL characters; "
            "use sql_identifier() to derive one.",
        )
    return '"' + name.replace('"', '""') + '"'
