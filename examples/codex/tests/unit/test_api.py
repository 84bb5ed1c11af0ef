"""Unit tests of api: the payment webhook's signature, request validation."""

from __future__ import annotations

import time

import pytest

from conftest import load, shared

api = load("api")
common = shared()
SECRET = "whsec_test"
BODY = b'{"type": "payment.succeeded", "data": {"purchase_id": 7}}'


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


# -- products and purchases: input -----------------------------------------------------


@pytest.mark.parametrize("value", [None, True, 0, -1, 1.5, "x", "\u0661", 2**63, [1]])
def test_ids_must_be_positive_integers(value: object) -> None:
    with pytest.raises(common.HttpError):
        api.positive_id(value, "product_id")
    assert api.positive_id("12", "product_id") == api.positive_id(12, "product_id") == 12
