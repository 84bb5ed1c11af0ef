"""Fixtures for the unit tests of every service."""

from __future__ import annotations

import threading

import pytest

from conftest import shared


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    common = shared()
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("BRANCHLINE_COMMIT", "abc1234")
    monkeypatch.setenv("LOG_LEVEL", "warning")
    routes = {
        ("POST", "/echo"): lambda request: (200, request.json()),
        ("GET", "/host"): lambda request: (200, {"host": request.headers["Host"]}),
    }
    httpd = common.make_server("demo", routes)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
