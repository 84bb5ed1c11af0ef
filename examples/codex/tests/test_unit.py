"""Unit tests: no database, no network beyond loopback."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from conftest import SERVICES, fetch, load

auth, api, web = load("auth"), load("api"), load("web")
common = sys.modules["common"]  # the services' shared module, loaded by load()
SECRET = "whsec_test"
BODY = b'{"type": "payment.succeeded", "data": {"purchase_id": 7}}'


def test_the_shared_module_is_the_same_in_every_service() -> None:
    copies = {name: (SERVICES / name / "common.py").read_text() for name in ("api", "auth", "web")}
    assert copies["auth"] == copies["api"] == copies["web"], "copy services/auth/common.py over"


# -- the payment webhook's signature --------------------------------------------------


def test_a_fresh_signature_is_accepted() -> None:
    now = int(time.time())
    assert api.verify_signature(BODY, api.sign(SECRET, BODY, now), SECRET)


@pytest.mark.parametrize(
    ("body", "secret", "age"),
    [(BODY + b" ", SECRET, 0), (BODY, "whsec_other", 0), (BODY, SECRET, 301), (BODY, SECRET, -301)],
    ids=["tampered body", "wrong secret", "too old", "from the future"],
)
def test_a_wrong_or_stale_signature_is_refused(body: bytes, secret: str, age: int) -> None:
    header = api.sign(secret, body, int(time.time()) - age)
    assert not api.verify_signature(BODY, header, SECRET)


def test_the_tolerance_is_five_minutes() -> None:
    header = api.sign(SECRET, BODY, 1_000_000)
    assert api.verify_signature(BODY, header, SECRET, now=1_000_300)
    assert not api.verify_signature(BODY, header, SECRET, now=1_000_301)


def test_one_good_signature_among_several_is_enough() -> None:
    now = int(time.time())
    good = api.sign(SECRET, BODY, now).split("v1=")[1]
    assert api.verify_signature(BODY, f"t={now},v1={'0' * 64},v1={good}", SECRET)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        "t=,v1=",
        "v1=abc",
        "t=12x,v1=abc",
        "t=1,t=2,v1=abc",
        "t=\u0661\u0662,v1=\xe9",
        "t=9" * 40,
    ],
)
def test_a_malformed_header_is_refused_not_crashed_on(header: str) -> None:
    assert not api.verify_signature(BODY, header, SECRET)


def test_the_webhook_answers_400_on_a_bad_signature_before_touching_the_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PAYMENT_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    headers = {"Payment-Signature": "t=1,v1=00"}
    request = common.Request("POST", "/webhooks/payments", headers, BODY)
    with pytest.raises(common.HttpError) as caught:
        api.payment_webhook(request)
    assert caught.value.status == 400


def test_the_webhook_refuses_everything_without_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAYMENT_WEBHOOK_SECRET", raising=False)
    with pytest.raises(common.HttpError) as caught:
        api.payment_webhook(common.Request("POST", "/webhooks/payments", body=BODY))
    assert caught.value.status == 503


# -- passwords, tokens and input -------------------------------------------------------


def test_passwords_are_salted_scrypt_hashes() -> None:
    first, second = auth.hash_password("correct horse"), auth.hash_password("correct horse")
    assert first != second and first.startswith("scrypt$") and "correct" not in first
    assert auth.check_password("correct horse", first)
    assert not auth.check_password("correct horsE", first)


@pytest.mark.parametrize("stored", ["", "plain", "scrypt$zz$00", "md5$00$00", "scrypt$$"])
def test_a_malformed_stored_hash_never_matches(stored: str) -> None:
    assert not auth.check_password("anything", stored)


def test_session_tokens_are_stored_peppered_with_auth_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AUTH_SECRET", "one")
    first = common.token_hash("token")
    monkeypatch.setenv("AUTH_SECRET", "two")
    assert common.token_hash("token") != first and len(first) == 64 and "token" not in first


def test_credentials_are_normalised() -> None:
    body = {"email": "  Ada@Example.COM ", "password": "x" * 8}
    assert auth.credentials(body) == ("ada@example.com", "x" * 8)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"email": "ada@example.com"},
        {"email": "not-an-email", "password": "long enough"},
        {"email": "a@b.c" + "c" * 300, "password": "long enough"},
        {"email": ["ada@example.com"], "password": "long enough"},
        {"email": "ada@example.com", "password": "short"},
        {"email": "ada@example.com", "password": 12345678},
    ],
)
def test_bad_credentials_are_a_400(body: dict[str, object]) -> None:
    with pytest.raises(common.HttpError) as caught:
        auth.credentials(body)
    assert caught.value.status == 400


@pytest.mark.parametrize("value", [None, True, 0, -1, 1.5, "x", "\u0661", 2**63, [1]])
def test_ids_must_be_positive_integers(value: object) -> None:
    with pytest.raises(common.HttpError):
        api.positive_id(value, "product_id")
    assert api.positive_id("12", "product_id") == api.positive_id(12, "product_id") == 12


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


# -- the HTTP plumbing and /health, without a database ---------------------------------


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
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


def test_web_can_reach_a_service_through_an_edge_by_host_name(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_URL", server)  # the `server` fixture stands in for the edge
    monkeypatch.setenv("API_HOST", "api-preview-8.codex.localhost")
    assert web.call("api", "GET", "/host") == (200, {"host": "api-preview-8.codex.localhost"})
