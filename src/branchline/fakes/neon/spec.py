"""Neon's published OpenAPI document (v2), shipped byte for byte, and validation of
the fake's requests and responses against it with openapi-core."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from werkzeug.datastructures import Headers, ImmutableMultiDict

SPEC_PATH = Path(__file__).with_name("neon-api-v2.openapi.json")
# The document's only server: requests are validated as if sent there.
SPEC_HOST = "https://console.neon.tech"
API_PREFIX = "/api/v2"


@cache
def openapi() -> OpenAPI:
    """The document, parsed once per process (about half a second)."""
    spec: dict[str, Any] = json.loads(SPEC_PATH.read_bytes())
    return OpenAPI.from_dict(spec)


@dataclass
class SpecRequest:
    """What openapi-core reads of a request (its `Request` protocol)."""

    method_name: str
    api_path: str  # under /api/v2, e.g. /projects/p/branches
    query: list[tuple[str, str]] = field(default_factory=list)
    headers: Mapping[str, str] = field(default_factory=dict)
    raw_body: bytes | None = None
    content_type_header: str = "application/json"
    parameters: RequestParameters = field(init=False)

    def __post_init__(self) -> None:
        # One object: the validator writes the path's variables into it.
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(self.query),
            header=Headers(list(self.headers.items())),
            cookie=ImmutableMultiDict(),
        )

    @property
    def host_url(self) -> str:
        return SPEC_HOST

    @property
    def path(self) -> str:
        return API_PREFIX + self.api_path

    @property
    def method(self) -> str:
        return self.method_name.lower()

    @property
    def body(self) -> bytes | None:
        return self.raw_body

    @property
    def content_type(self) -> str:
        return self.content_type_header


@dataclass
class SpecResponse:
    """What openapi-core reads of a response (its `Response` protocol)."""

    status_code: int
    data: bytes | None
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)


def request_errors(request: SpecRequest) -> str | None:
    """None when `request` is valid, else what is wrong with it."""
    try:
        openapi().validate_request(request)
    except Exception as exc:  # openapi-core raises many kinds: every one is an answer
        return describe(exc)
    return None


def response_errors(request: SpecRequest, response: SpecResponse) -> str | None:
    """None when `response` is what the document allows for `request`."""
    try:
        openapi().validate_response(request, response)
    except Exception as exc:
        return describe(exc)
    return None


def describe(exc: BaseException) -> str:
    """An openapi-core error with the schema errors behind it, on one line each."""
    parts = [f"{type(exc).__name__}: {exc}"]
    seen: set[int] = {id(exc)}
    cause = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        parts.append(f"{type(cause).__name__}: {cause}")
        for error in getattr(cause, "schema_errors", ()) or ():
            where = "/".join(str(p) for p in getattr(error, "absolute_path", ()))
            parts.append(f"  at {where or '(root)'}: {getattr(error, 'message', error)}")
        cause = cause.__cause__ or cause.__context__
    for error in getattr(exc, "schema_errors", ()) or ():
        where = "/".join(str(p) for p in getattr(error, "absolute_path", ()))
        parts.append(f"  at {where or '(root)'}: {getattr(error, 'message', error)}")
    return "\n".join(parts)
