"""DNS records of the project's zone: the `DnsProvider` interface, what it returns,
and the validation every provider applies before a name or value goes anywhere.

Names, types and contents are checked here, not by the backends: a record name is a
host name inside the zone (or a relative label, `api-preview-8` for
`api-preview-8.<zone>`, or `@` for the apex); the types are A, AAAA, CNAME and TXT;
A and AAAA contents are parsed by `ipaddress`, CNAME targets are host names, TXT
contents are printable ASCII of bounded length. Nothing else reaches the store, a
DNS answer or a cloud API.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from branchline import naming
from branchline.environment import Environment
from branchline.errors import UsageError

RECORD_TYPES = ("A", "AAAA", "CNAME", "TXT")
"""The record types branchline manages."""
MAX_TXT = 2048
"""Longest TXT content (Cloudflare's limit); served as strings of at most 255 bytes."""
APEX = "@"
"""Names the zone apex, as a record name or a CNAME target."""

_HOST_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# TXT records often live at service labels (`_acme-challenge`, `_dmarc`: RFC 8552).
_SERVICE_LABEL_RE = re.compile(r"_[a-z0-9](?:[a-z0-9-]{0,60}[a-z0-9])?")
_TXT_RE = re.compile(r"[\x20-\x7e]+")

_NAME_HINT = (
    "Record names are host names inside the zone: labels of a-z, 0-9 and '-' (not at "
    "either end), at most 63 characters each and 253 in all; give either the full name "
    "(`api-preview-8.{zone}`), one label (`api-preview-8`), or `@` for the apex."
)


def _preview(text: object, limit: int = 80) -> str:
    """A bounded, escaped ``repr`` of user input for error messages."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[:limit] + "..."


def record_type(type: str) -> str:
    """The canonical (upper-case) record type; UsageError unless A, AAAA, CNAME or TXT."""
    canonical = type.upper() if isinstance(type, str) and type.isascii() else None
    if canonical not in RECORD_TYPES:
        raise UsageError(
            f"Unsupported DNS record type {_preview(type)}.",
            hint=f"Use one of {', '.join(RECORD_TYPES)}.",
        )
    return canonical


def record_name(name: str, zone: str, *, type: str | None = None) -> str:
    """The record's full name (lower-case, no trailing dot), validated.

    `name` is a full name inside `zone` (a trailing dot is allowed), a single relative
    label (`api-preview-8` -> `api-preview-8.<zone>`) or `@` (the apex). A name with
    dots that does not end in the zone is outside it and refused; so is every label
    that is not a host-name label. TXT records may also use labels that start with
    `_` (`_acme-challenge`).
    """
    zone = naming.normalize_zone(zone)
    if not isinstance(name, str) or not name.isascii() or not name:
        raise _bad_name(name, zone)
    text = name.lower()
    if text == APEX:
        return zone
    text = text.removesuffix(".")
    if "." not in text and not name.endswith("."):
        text = f"{text}.{zone}"  # one relative label
    if not naming.in_zone(text, zone):
        raise UsageError(
            f"{_preview(name)} is outside the zone {zone!r}.",
            hint=f"Name a record inside {zone} (like `api-preview-8.{zone}`), "
            "or give one label (`api-preview-8`) and the zone is added.",
        )
    relative = text[: -len(zone)].removesuffix(".")
    labels = relative.split(".") if relative else []
    service_ok = type is not None and record_type(type) == "TXT"
    for label in labels:
        host = _HOST_LABEL_RE.fullmatch(label) is not None
        service = service_ok and _SERVICE_LABEL_RE.fullmatch(label) is not None
        if not (host or service):
            raise _bad_name(name, zone)
    if len(text) > naming.MAX_HOST_NAME:
        raise _bad_name(name, zone)
    return text


def _bad_name(name: object, zone: str) -> UsageError:
    return UsageError(
        f"Invalid DNS record name {_preview(name)}.", hint=_NAME_HINT.format(zone=zone)
    )


def host_name_target(content: str, zone: str) -> str:
    """A CNAME target: any valid host name (in the zone or not), or `@` for the apex."""
    zone = naming.normalize_zone(zone)
    if isinstance(content, str) and content == APEX:
        return zone
    text = content.lower().removesuffix(".") if isinstance(content, str) else ""
    labels = text.split(".")
    valid = (
        isinstance(content, str)
        and content.isascii()
        and 0 < len(text) <= naming.MAX_HOST_NAME
        and all(_HOST_LABEL_RE.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()
    )
    if not valid:
        raise UsageError(
            f"Invalid CNAME target {_preview(content)}: not a host name.",
            hint=f"Point a CNAME at a host name such as `{zone}` (or `@` for the apex); "
            "use an A or AAAA record for an IP address.",
        )
    return text


def record_content(type: str, content: str, zone: str) -> str:
    """The record's canonical content, validated for its type."""
    kind = record_type(type)
    if kind in ("A", "AAAA"):
        return _address(kind, content)
    if kind == "CNAME":
        return host_name_target(content, zone)
    if not isinstance(content, str) or not _TXT_RE.fullmatch(content) or len(content) > MAX_TXT:
        raise UsageError(
            f"Invalid TXT content {_preview(content)}.",
            hint=f"TXT content is 1 to {MAX_TXT} printable ASCII characters "
            "(no control characters or line breaks).",
        )
    return content


def checked_record(
    name: str, type: str, content: str, zone: str, *, proxied: bool = False
) -> tuple[str, str, str]:
    """(type, fully qualified name, content) of a record to ensure, in canonical form:
    the one check every provider makes before it writes (UsageError otherwise)."""
    kind = record_type(type)
    fqdn = record_name(name, zone, type=kind)
    value = record_content(kind, content, zone)
    if kind == "CNAME" and fqdn == zone:
        raise UsageError(
            f"The zone apex {fqdn!r} cannot be a CNAME: it holds the zone's SOA and NS.",
            hint="Give the apex an A or AAAA record instead.",
        )
    if kind == "CNAME" and value == fqdn:
        raise UsageError(
            f"A CNAME at {fqdn!r} cannot point at itself.",
            hint="Point it at another host name, or use an A or AAAA record.",
        )
    if kind == "TXT" and proxied:
        raise UsageError(
            f"TXT record {fqdn!r} cannot be proxied.",
            hint="Only A, AAAA and CNAME records are proxied; drop `proxied`.",
        )
    return kind, fqdn, value


def _address(kind: str, content: str) -> str:
    want = ipaddress.IPv4Address if kind == "A" else ipaddress.IPv6Address
    try:
        address = want(content)
    except (ValueError, TypeError):
        address = None
    if address is None or (isinstance(address, ipaddress.IPv6Address) and address.scope_id):
        example = "192.0.2.10" if kind == "A" else "2001:db8::10"
        raise UsageError(
            f"Invalid {kind} content {_preview(content)}: not an IPv{4 if kind == 'A' else 6} "
            "address.",
            hint=f"An {kind} record holds one address, like `{example}`.",
        )
    return str(address)


def same_content(type: str, left: str, right: str) -> bool:
    """Whether two contents of a record type mean the same (case, dots, address forms)."""
    kind = record_type(type)
    if kind in ("A", "AAAA"):
        try:
            return ipaddress.ip_address(left) == ipaddress.ip_address(right)
        except ValueError:
            return False
    if kind == "CNAME":
        return left.lower().removesuffix(".") == right.lower().removesuffix(".")
    return left == right


@dataclass(frozen=True)
class DnsRecord:
    """One record of the zone. `name` is the full name without a trailing dot."""

    name: str
    type: str
    content: str
    proxied: bool
    environment: str | None
    created_at: datetime
    updated_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "content": self.content,
            "proxied": self.proxied,
            "environment": self.environment,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True)
class VerifyResult:
    """What `verify` saw: `ok` when an answer matched before the deadline."""

    name: str
    type: str
    ok: bool
    attempts: int
    elapsed: float  # seconds
    answer: tuple[str, ...]  # the last answer's values (after following CNAMEs)
    expect: str | None  # what was waited for; None: any answer of the type
    rcode: str | None = None  # the last response code (NOERROR, NXDOMAIN...), None if none
    error: str | None = None  # the last query error (timeout, refused connection)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "ok": self.ok,
            "attempts": self.attempts,
            "elapsed": round(self.elapsed, 4),
            "answer": list(self.answer),
            "expect": self.expect,
            "rcode": self.rcode,
            "error": self.error,
        }


@runtime_checkable
class DnsProvider(Protocol):
    """The records of one project's zone."""

    async def ensure_record(
        self,
        name: str,
        type: str,
        content: str,
        *,
        proxied: bool = False,
        environment: Environment | None = None,
    ) -> DnsRecord:
        """Create the record, or update it in place when its content, `proxied` or
        environment differ; return it. `name` is a full name in the zone, one label
        or `@`. A None `environment` keeps the one already recorded."""
        ...

    async def delete_record(self, name: str, type: str | None = None) -> bool:
        """Delete the record of `type` at `name` (every type when None); False when
        there was none."""
        ...

    async def get_record(self, name: str, type: str) -> DnsRecord | None: ...

    async def list_records(self, environment: Environment | None = None) -> list[DnsRecord]:
        """Every record of the zone, or only those of `environment`."""
        ...

    async def verify(
        self,
        name: str,
        *,
        type: str = "CNAME",
        expect: str | None = None,
        timeout: float = 10.0,
    ) -> VerifyResult:
        """Query DNS until the answer for `name` holds `expect` (default: the recorded
        content; any answer when nothing is recorded) or `timeout` seconds pass.
        Polls with a short backoff; never sleeps a fixed time."""
        ...

    async def aclose(self) -> None:
        """Close the provider's connections (a cloud API's) before the event loop ends."""
        ...
