"""Secrets without a database: sealing, associated data, keys and key files."""

from __future__ import annotations

import base64
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from branchline.errors import BranchlineError, UsageError
from branchline.secrets import (
    KEY_ENV,
    KEY_FILENAME,
    Sealed,
    SecretBox,
    SecretError,
    SecretInfo,
    generate_value,
    key_id,
    load_key,
    scope_of,
    validate_environment,
    validate_name,
    validate_value,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
VALUE = "s3cr3t-value-that-must-not-leak"
WHERE = {"project": "codex", "environment": "production", "name": "AUTH_SECRET"}


def _messages(exc: BranchlineError) -> str:
    return f"{exc.message} {exc.hint} {exc!r} {exc.as_dict()}"


def test_box_round_trip() -> None:
    box = SecretBox(KEY)
    sealed = box.seal(VALUE, **WHERE)
    assert len(sealed.nonce) == 12
    assert VALUE.encode() not in sealed.ciphertext
    assert sealed.key_id == key_id(KEY) == box.key_id
    assert box.unseal(sealed, **WHERE) == VALUE


def test_nonce_is_fresh_for_every_value() -> None:
    box = SecretBox(KEY)
    first, second = box.seal(VALUE, **WHERE), box.seal(VALUE, **WHERE)
    assert first.nonce != second.nonce and first.ciphertext != second.ciphertext


@pytest.mark.parametrize(
    "moved_to",
    [
        {"name": "API_TOKEN"},
        {"environment": "preview"},
        {"project": "other"},
    ],
)
def test_ciphertext_moved_to_another_row_does_not_decrypt(moved_to: dict[str, str]) -> None:
    box = SecretBox(KEY)
    sealed = box.seal(VALUE, **WHERE)
    with pytest.raises(SecretError) as caught:
        box.unseal(sealed, **{**WHERE, **moved_to})
    assert "does not decrypt" in caught.value.message
    assert "secret set" in caught.value.hint
    assert VALUE not in _messages(caught.value)


def test_altered_ciphertext_does_not_decrypt() -> None:
    box = SecretBox(KEY)
    sealed = box.seal(VALUE, **WHERE)
    flipped = bytes([sealed.ciphertext[0] ^ 1]) + sealed.ciphertext[1:]
    with pytest.raises(SecretError, match="does not decrypt"):
        box.unseal(Sealed(sealed.nonce, flipped, sealed.key_id), **WHERE)


def test_wrong_key_names_both_key_ids() -> None:
    sealed = SecretBox(KEY).seal(VALUE, **WHERE)
    with pytest.raises(SecretError) as caught:
        SecretBox(OTHER_KEY).unseal(sealed, **WHERE)
    error = caught.value
    assert f"sealed with another key (id {key_id(KEY)})" in error.message
    assert key_id(OTHER_KEY) in error.message
    assert KEY_ENV in error.hint and key_id(KEY) in error.hint
    assert VALUE not in _messages(error)


def test_wrong_key_without_a_recorded_key_id_is_still_a_clear_error() -> None:
    sealed = SecretBox(KEY).seal(VALUE, **WHERE)
    unknown = Sealed(sealed.nonce, sealed.ciphertext, "")
    with pytest.raises(SecretError, match="does not decrypt"):
        SecretBox(OTHER_KEY).unseal(unknown, **WHERE)


def test_reprs_hold_neither_key_nor_value() -> None:
    box = SecretBox(KEY)
    sealed = box.seal(VALUE, **WHERE)
    for text in (repr(box), repr(sealed)):
        assert KEY.hex() not in text and base64.b64encode(KEY).decode() not in text
        assert repr(sealed.ciphertext) not in text and repr(sealed.nonce) not in text
    assert "value" not in {f for f in SecretInfo.__dataclass_fields__}


def test_box_refuses_a_short_key() -> None:
    with pytest.raises(SecretError, match="32 bytes"):
        SecretBox(b"short")


@settings(max_examples=200)
@given(
    value=st.text(min_size=0, max_size=2000),
    name=st.from_regex(r"[A-Z_][A-Z0-9_]{0,20}", fullmatch=True),
)
def test_round_trip_of_any_unicode_text(value: str, name: str) -> None:
    box = SecretBox(KEY)
    where = {"project": "codex", "environment": "preview-8", "name": name}
    assert box.unseal(box.seal(value, **where), **where) == value


# ---------------------------------------------------------------------------- keys


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def test_key_from_the_environment(tmp_path: Path) -> None:
    assert load_key(tmp_path, {KEY_ENV: _b64(KEY)}) == KEY
    assert load_key(tmp_path, {KEY_ENV: f"  {_b64(KEY)}\n"}) == KEY
    urlsafe = base64.urlsafe_b64encode(b"\xfb" * 32).decode()
    assert "-" in urlsafe or "_" in urlsafe
    assert load_key(tmp_path, {KEY_ENV: urlsafe}) == b"\xfb" * 32
    assert not (tmp_path / KEY_FILENAME).exists()  # no key file when the env has the key


@pytest.mark.parametrize(
    "text",
    [
        "not base64 at all!",
        _b64(b"x" * 16),  # valid base64, wrong length
        _b64(b"x" * 33),
        KEY.hex(),  # hex is not base64 of 32 bytes
    ],
)
def test_malformed_key_in_the_environment_is_an_error_with_a_hint(
    tmp_path: Path, text: str
) -> None:
    with pytest.raises(SecretError) as caught:
        load_key(tmp_path, {KEY_ENV: text})
    error = caught.value
    assert KEY_ENV in error.message and "32 bytes" in error.message
    assert "openssl rand -base64 32" in error.hint
    assert text not in _messages(error)  # the (attempted) key is never echoed
    assert not (tmp_path / KEY_FILENAME).exists()


def test_empty_key_variable_means_the_key_file(tmp_path: Path) -> None:
    key = load_key(tmp_path, {KEY_ENV: ""})
    assert (tmp_path / KEY_FILENAME).exists()
    assert load_key(tmp_path, {}) == key


def test_key_file_is_created_0600_and_reused(tmp_path: Path) -> None:
    state = tmp_path / "state"  # created on demand
    key = load_key(state, {})
    path = state / KEY_FILENAME
    assert len(key) == 32
    assert path.stat().st_mode & 0o777 == 0o600
    assert base64.b64decode(path.read_text().strip()) == key
    assert load_key(state, {}) == key
    assert [p.name for p in state.iterdir()] == [KEY_FILENAME]  # no temporary left behind
    # The file's content is what BRANCHLINE_SECRET_KEY takes.
    assert load_key(tmp_path / "elsewhere", {KEY_ENV: path.read_text()}) == key


def test_key_file_open_to_others_is_refused(tmp_path: Path) -> None:
    key = load_key(tmp_path, {})
    path = tmp_path / KEY_FILENAME
    path.chmod(0o644)
    with pytest.raises(SecretError) as caught:
        load_key(tmp_path, {})
    assert "0644" in caught.value.message and str(path) in caught.value.message
    assert f"chmod 600 {path}" in caught.value.hint
    assert _b64(key) not in _messages(caught.value)
    path.chmod(0o640)
    with pytest.raises(SecretError, match="open to other users"):
        load_key(tmp_path, {})
    path.chmod(0o600)
    assert load_key(tmp_path, {}) == key


def test_malformed_key_file_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILENAME
    path.write_text("garbage-garbage\n")
    path.chmod(0o600)
    with pytest.raises(SecretError) as caught:
        load_key(tmp_path, {})
    assert "does not hold" in caught.value.message
    assert "garbage" not in _messages(caught.value)


def test_racing_creators_all_get_the_same_key(tmp_path: Path) -> None:
    results: list[bytes] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(16)

    def create() -> None:
        barrier.wait()
        try:
            results.append(load_key(tmp_path, {}))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(results) == 16 and len(set(results)) == 1
    assert [p.name for p in tmp_path.iterdir()] == [KEY_FILENAME]


# --------------------------------------------------------------------------- names


def test_generated_values_are_32_random_bytes_base64() -> None:
    values = {generate_value() for _ in range(50)}
    assert len(values) == 50
    for value in values:
        assert len(value) == 44
        assert len(base64.b64decode(value, validate=True)) == 32


@pytest.mark.parametrize("environment", ["production", "preview", "test", "preview-8"])
def test_valid_environments(environment: str) -> None:
    assert validate_environment(environment) == environment


@pytest.mark.parametrize(
    "environment", ["local", "staging", "preview-0", "preview-08", "Preview", "preview-", ""]
)
def test_invalid_environments(environment: str) -> None:
    with pytest.raises(UsageError):
        validate_environment(environment)


def test_local_is_readable_but_not_writable() -> None:
    assert validate_environment("local", reading=True) == "local"


def test_scope_of() -> None:
    assert scope_of("preview-12") == "preview"
    assert scope_of("production") == "production"


@pytest.mark.parametrize("name", ["AUTH_SECRET", "_X", "A1"])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["auth_secret", "1ABC", "A-B", "A B", "", "X" * 129, VALUE])
def test_invalid_names_are_not_echoed(name: str) -> None:
    with pytest.raises(UsageError) as caught:
        validate_name(name)
    if name:
        assert name not in _messages(caught.value)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "empty"),
        ("abc", "shorter than"),
        ("abc\x00def", "NUL"),
        ("x" * (64 * 1024 + 1), "bytes long"),
        ("\ud800abcd", "not valid Unicode"),
    ],
)
def test_invalid_values_are_refused_without_echo(value: str, problem: str) -> None:
    with pytest.raises(UsageError) as caught:
        validate_value(value)
    assert problem in caught.value.message
    if value:
        assert value not in _messages(caught.value)


def test_valid_value() -> None:
    assert validate_value("pa ss wörd ✓") == "pa ss wörd ✓"
