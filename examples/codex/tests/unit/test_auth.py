"""Unit tests of auth: password hashes, credentials."""

from __future__ import annotations

import pytest

from conftest import load, shared

auth = load("auth")
common = shared()


# -- passwords and credentials ---------------------------------------------------------


def test_passwords_are_salted_scrypt_hashes() -> None:
    first, second = auth.hash_password("correct horse"), auth.hash_password("correct horse")
    assert first != second and first.startswith("scrypt$") and "correct" not in first
    assert auth.check_password("correct horse", first)
    assert not auth.check_password("correct horsE", first)


@pytest.mark.parametrize("stored", ["", "plain", "scrypt$zz$00", "md5$00$00", "scrypt$$"])
def test_a_malformed_stored_hash_never_matches(stored: str) -> None:
    assert not auth.check_password("anything", stored)


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
