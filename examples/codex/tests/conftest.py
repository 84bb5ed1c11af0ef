"""Helpers for the codex tests: load a service's module, speak HTTP, find the database."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ROOT / "services"


def load(service: str) -> ModuleType:
    """services/<service>/app.py as module `codex_<service>`.

    Each service imports its own `common`; the three copies are identical
    (unit/test_common.py checks), so whichever is imported first serves them all.
    """
    name = f"codex_{service}"
    if name in sys.modules:
        return sys.modules[name]
    path = SERVICES / service / "app.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    sys.modules[name] = module
    return module


def shared() -> ModuleType:
    """`common`, the services' shared module, as their app.py imports it: the copy
    load() imported first, or services/auth/common.py when none was loaded yet."""
    path = SERVICES / "auth"
    sys.path.insert(0, str(path))
    try:
        return importlib.import_module("common")
    finally:
        sys.path.remove(str(path))


def fetch(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    opener: urllib.request.OpenerDirector | None = None,
) -> tuple[int, Any]:
    """(status, answer) of one request; a dict body goes as JSON, bytes as they are,
    a JSON answer comes back parsed and anything else as text."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with (opener or urllib.request.build_opener()).open(request, timeout=10) as answer:
            status, raw, kind = answer.status, answer.read(), answer.headers["Content-Type"]
    except urllib.error.HTTPError as error:
        status, raw, kind = error.code, error.read(), error.headers["Content-Type"]
    if kind == "application/json":
        return status, json.loads(raw)
    return status, raw.decode()


@pytest.fixture(scope="session")
def database_url() -> str:
    url = os.environ.get("DATABASE_URL")
    if not url:
        pytest.skip("DATABASE_URL is not set: integration and e2e tests need a Postgres database")
    return url
