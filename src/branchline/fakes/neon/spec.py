"""Neon's published OpenAPI document (v2), shipped byte for byte, and validation of
the fake's requests and responses against it (the adapters are `fakes.openapi`'s)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from openapi_core import OpenAPI

from branchline.fakes import openapi as shared
from branchline.fakes.openapi import SpecResponse, describe

SPEC_PATH = Path(__file__).with_name("neon-api-v2.openapi.json")
# The document's only server: requests are validated as if sent there.
SPEC_HOST = "https://console.neon.tech"
API_PREFIX = "/api/v2"

__all__ = [
    "SpecRequest", "SpecResponse", "describe", "openapi", "request_errors", "response_errors",
]  # fmt: skip


@cache
def openapi() -> OpenAPI:
    """The document, parsed once per process (about half a second)."""
    spec: dict[str, Any] = json.loads(SPEC_PATH.read_bytes())
    return shared.load(spec)


@dataclass
class SpecRequest(shared.SpecRequest):
    """A request to Neon's API: `api_path` is under /api/v2."""

    server: str = SPEC_HOST
    prefix: str = API_PREFIX


def request_errors(request: SpecRequest) -> str | None:
    return shared.request_errors(openapi(), request)


def response_errors(request: SpecRequest, response: SpecResponse) -> str | None:
    return shared.response_errors(openapi(), request, response)
