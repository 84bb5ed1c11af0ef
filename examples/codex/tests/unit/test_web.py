"""Unit tests of web: pages without their neighbours, HTML escaping, calls through an edge."""

from __future__ import annotations

import pytest

from conftest import load, shared

web = load("web")
common = shared()


# -- web without its neighbours, and HTML escaping -------------------------------------


def test_web_degrades_when_auth_and_api_are_not_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUTH_URL", raising=False)
    monkeypatch.delenv("API_URL", raising=False)
    status, html = web.index(common.Request("GET", "/"))
    assert status == 200 and "api unavailable" in html and "auth unavailable" in html
    status, html, *_ = web.login(common.Request("POST", "/login", body=b"email=a%40b.c&password=x"))
    assert status == 503 and "auth unavailable" in html


def test_web_degrades_when_auth_is_down(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTH_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("API_URL", "http://127.0.0.1:1")
    request = common.Request("GET", "/", headers={"Cookie": "codex_session=tok"})
    status, html = web.index(request)
    assert status == 200 and "auth unavailable" in html and "api unavailable" in html


def test_pages_escape_what_they_show() -> None:
    products = [{"id": 1, "name": "<script>x</script>", "price_cents": 1250}]
    html = web.product_rows(products, can_buy=True)
    assert "<script>" not in html and "&lt;script&gt;" in html and "$12.50" in html
    assert "Signed in as <b>&lt;i&gt;@x.y</b>" in web.page("t", "", user={"email": "<i>@x.y"})


# -- reaching a service through the edge -----------------------------------------------


def test_web_can_reach_a_service_through_an_edge_by_host_name(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_URL", server)  # the `server` fixture stands in for the edge
    monkeypatch.setenv("API_HOST", "api-preview-8.codex.localhost")
    assert web.call("api", "GET", "/host") == (200, {"host": "api-preview-8.codex.localhost"})
