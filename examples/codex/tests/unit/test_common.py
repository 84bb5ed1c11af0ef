"""Unit tests of common.py, the module every service keeps a copy of."""

from __future__ import annotations

import pytest

from conftest import SERVICES, fetch, shared

common = shared()


def test_the_shared_module_is_the_same_in_every_service() -> None:
    copies = {name: (SERVICES / name / "common.py").read_text() for name in ("api", "auth", "web")}
    assert copies["auth"] == copies["api"] == copies["web"], "copy services/auth/common.py over"


# -- session tokens and input ----------------------------------------------------------


def test_session_tokens_are_stored_peppered_with_auth_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AUTH_SECRET", "one")
    first = common.token_hash("token")
    monkeypatch.setenv("AUTH_SECRET", "two")
    assert common.token_hash("token") != first and len(first) == 64 and "token" not in first


@pytest.mark.parametrize("body", [b"", b"not json", b"[1, 2]", b'"text"', b"\xff"])
def test_a_body_that_is_not_a_json_object_is_a_400(body: bytes) -> None:
    with pytest.raises(common.HttpError) as caught:
        common.Request("POST", "/login", body=body).json()
    assert caught.value.status == 400


def test_bearer_and_cookie_parsing() -> None:
    request = common.Request(
        "GET", "/", headers={"Authorization": "Bearer abc", "Cookie": "a=1; codex_session=tok"}
    )
    assert request.bearer() == "abc" and request.cookie("codex_session") == "tok"
    assert common.Request("GET", "/", headers={"Authorization": "Basic abc"}).bearer() is None


# -- the HTTP plumbing and /health, without a database ---------------------------------


def test_health_reports_the_commit_and_a_503_when_the_database_is_down(server: str) -> None:
    status, body = fetch("GET", server + "/health")
    assert status == 503
    assert body["service"] == "demo" and body["commit"] == "abc1234" and body["release"] == "dev"
    assert body["status"] == "error" and body["database"] != "ok"


def test_routes_answer_json_and_errors_are_json(server: str) -> None:
    assert fetch("POST", server + "/echo", {"a": 1}) == (200, {"a": 1})
    assert fetch("POST", server + "/echo", b"nope") == (400, {"error": "the body must be JSON"})
    status, body = fetch("GET", server + "/nowhere")
    assert status == 404 and "error" in body
    status, body = fetch("POST", server + "/echo", b"{}", {"Content-Length": "99999999"})
    assert status == 413 and "error" in body
