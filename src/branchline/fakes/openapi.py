"""Validation of a fake's requests and responses against a vendor's OpenAPI document
with openapi-core: the request and response adapters and the error descriptions every
HTTP fake shares."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from werkzeug.datastructures import Headers, ImmutableMultiDict


@dataclass
class SpecRequest:
    """What openapi-core reads of a request (its `Request` protocol). `api_path` is the
    path under `prefix`; the request is validated as if sent to `server`."""

    method_name: str
    api_path: str
    query: list[tuple[str, str]] = field(default_factory=list)
    headers: Mapping[str, str] = field(default_factory=dict)
    raw_body: bytes | None = None
    content_type_header: str = "application/json"
    server: str = ""
    prefix: str = ""
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
        return self.server

    @property
    def path(self) -> str:
        return self.prefix + self.api_path

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


def request_errors(document: OpenAPI, request: SpecRequest) -> str | None:
    """None when `request` is valid, else what is wrong with it."""
    try:
        document.validate_request(request)
    except Exception as exc:  # openapi-core raises many kinds: every one is an answer
        return describe(exc)
    return None


def response_errors(document: OpenAPI, request: SpecRequest, response: SpecResponse) -> str | None:
    """None when `response` is what the document allows for `request`."""
    try:
        document.validate_response(request, response)
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
        parts.extend(_schema_errors(cause))
        cause = cause.__cause__ or cause.__context__
    parts.extend(_schema_errors(exc))
    return "\n".join(parts)


def _schema_errors(exc: BaseException) -> list[str]:
    lines = []
    for error in getattr(exc, "schema_errors", ()) or ():
        where = "/".join(str(p) for p in getattr(error, "absolute_path", ()))
        lines.append(f"  at {where or '(root)'}: {getattr(error, 'message', error)}")
    return lines


def load(document: dict[str, Any]) -> OpenAPI:
    return OpenAPI.from_dict(document)
