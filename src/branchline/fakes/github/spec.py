"""GitHub's published OpenAPI document (a subset of api.github.com's, shipped byte for
byte) and validation of the fake's requests and responses against it. The document's
defects that would fail valid GitHub exchanges are patched in `patch`, one place, on the
loaded copy: the shipped file stays GitHub's."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

from openapi_core import OpenAPI

from branchline.fakes import openapi as shared
from branchline.fakes.openapi import SpecRequest, SpecResponse

SPEC_PATH = Path(__file__).with_name("api.github.com.subset.json")
SERVER = "https://api.github.com"  # the document's only server
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

_BASIC_ERROR = {"$ref": "#/components/schemas/basic-error"}
_VALIDATION_ERROR = {"$ref": "#/components/schemas/validation-error"}


def patch(document: dict[str, Any]) -> dict[str, Any]:
    """The loaded document with its defects mended (in place; returned for chaining)."""
    for item in document["paths"].values():
        for method in METHODS:
            if method not in item:
                continue
            responses = item[method].setdefault("responses", {})
            # GitHub answers these on every path (a body that is not JSON, bad
            # credentials, rate limits, a repository it will not show, a request it
            # refuses, an outage) but the document lists them only on some operations.
            for status, schema in _ANY_PATH_ERRORS.items():
                responses.setdefault(status, _error_response(schema))
    # A nullable enum (`state_reason`, `conclusion`, ...) lists no null, so openapi-core
    # refuses the null GitHub sends for an open issue or a running check (OpenAPI 3.0.3
    # says a nullable enum must list null itself).
    _walk(document, _null_in_nullable_enums)
    schemas = document["components"]["schemas"]
    # A label's description is null until someone writes one; the pull list's label
    # says string only (the full pull's label says nullable).
    labels = schemas["pull-request-simple"]["properties"]["labels"]["items"]["properties"]
    labels["description"]["nullable"] = True
    # A commit's GitHub author is a user, {} or null (an e-mail with no account), but
    # the document's `nullable oneOf [simple-user, empty-object]` takes no null
    # (openapi-core: nullable does not reach into oneOf) and no user (a user is an
    # empty-object too, so both match).
    commit = schemas["commit"]["properties"]
    for who in ("author", "committer"):
        commit[who] = {
            "anyOf": [
                {"$ref": "#/components/schemas/nullable-simple-user"},
                {"$ref": "#/components/schemas/empty-object"},
            ]
        }
    return document


def _walk(node: Any, visit: Callable[[dict[str, Any]], None]) -> None:
    if isinstance(node, dict):
        visit(node)
        for value in node.values():
            _walk(value, visit)
    elif isinstance(node, list):
        for value in node:
            _walk(value, visit)


def _null_in_nullable_enums(schema: dict[str, Any]) -> None:
    enum = schema.get("enum")
    if schema.get("nullable") is True and isinstance(enum, list) and None not in enum:
        enum.append(None)


_ANY_PATH_ERRORS = {
    "400": _BASIC_ERROR,
    "401": _BASIC_ERROR,
    "403": _BASIC_ERROR,
    "404": _BASIC_ERROR,
    "422": _VALIDATION_ERROR,
    "429": _BASIC_ERROR,
    "500": _BASIC_ERROR,
    "502": _BASIC_ERROR,
    "503": _BASIC_ERROR,
}


def _error_response(schema: dict[str, str]) -> dict[str, Any]:
    return {"description": "error", "content": {"application/json": {"schema": schema}}}


@cache
def openapi() -> OpenAPI:
    """The patched document, parsed once per process."""
    document: dict[str, Any] = json.loads(SPEC_PATH.read_bytes())
    return shared.load(patch(document))


def spec_path(template: str, params: dict[str, str]) -> str:
    """The path as the document can match it: GitHub takes a ref with slashes whole in
    `{ref}` and `{basehead}`, but an OpenAPI template variable is one segment, so every
    parameter goes encoded."""
    return template.format(**{name: quote(value, safe="") for name, value in params.items()})


def spec_request(
    method: str,
    path: str,
    *,
    query: list[tuple[str, str]],
    headers: dict[str, str],
    body: bytes | None,
    content_type: str,
) -> SpecRequest:
    return SpecRequest(
        method, path, query=query, headers=headers, raw_body=body,
        content_type_header=content_type, server=SERVER,
    )  # fmt: skip


def request_errors(request: SpecRequest) -> str | None:
    return shared.request_errors(openapi(), request)


def response_errors(request: SpecRequest, response: SpecResponse) -> str | None:
    return shared.response_errors(openapi(), request, response)
