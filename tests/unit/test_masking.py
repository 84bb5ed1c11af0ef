"""Secret values never reach a stored log line."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from branchline import masking
from branchline.masking import MASK, MAX_LINE, MIN_SECRET_LENGTH, LineMasker, mask


def stream(masker: LineMasker, chunks: list[str]) -> list[str]:
    lines: list[str] = []
    for chunk in chunks:
        lines.extend(masker.feed(chunk))
    lines.extend(masker.flush())
    return lines


@contextmanager
def max_line(n: int) -> Iterator[None]:
    """A small MAX_LINE, so long-line cutting is exercised with short texts."""
    with mock.patch.object(masking, "MAX_LINE", n):
        yield


# -- mask ----------------------------------------------------------------------


def test_mask_replaces_every_occurrence() -> None:
    assert mask("token=s3cret; again s3cret.", ["s3cret"]) == "token=***; again ***."


def test_mask_leaves_text_without_secrets_alone() -> None:
    assert mask("nothing here", ["s3cret"]) == "nothing here"
    assert mask("nothing here", []) == "nothing here"
    assert mask("", ["s3cret"]) == ""


def test_mask_ignores_values_too_short_to_be_secrets() -> None:
    assert MIN_SECRET_LENGTH == 4
    assert mask("the cat sat on a mat", ["the", "at", "", "a"]) == "the cat sat on a mat"
    assert mask("the cat sat", ["the ", "at"]) == "***cat sat"


def test_mask_masks_the_longest_secret_whole() -> None:
    # Masking "abcd" first would leave "efgh" of the longer value in the log.
    for secrets in (["abcd", "abcdefgh"], ["abcdefgh", "abcd"]):
        assert mask("x abcdefgh y abcd z", secrets) == "x *** y *** z"


def test_mask_accepts_any_iterable_and_duplicates() -> None:
    assert mask("a hunter2 b", iter(["hunter2", "hunter2"])) == "a *** b"
    assert mask("a hunter2 b", (s for s in ["hunter2"])) == "a *** b"


def test_mask_overlapping_occurrences_leave_no_secret() -> None:
    assert mask("aaaaaaaaa", ["aaaa"]) == "******a"
    assert "aaaa" not in mask("aaaaaaaaa", ["aaaa"])


def test_mask_secret_that_reappears_around_the_mask() -> None:
    # Regression: a single replace turned "aa***" into "a***", the secret itself.
    assert mask("aa***", ["a***"]) == MASK
    assert mask("xhunter2hunter2***y", ["hunter2***"]) == "x***y"
    lines = stream(LineMasker(["hunter2***"]), ["hunter2hun", "ter2***\nok"])
    assert lines == ["***", "ok"]
    for secrets in (["a**a", "*a**"], ["*a**", "a**a"]):
        result = mask("aa**a***a**a", secrets)
        assert all(s not in result for s in secrets)


# -- LineMasker ------------------------------------------------------------------


def test_lines_are_released_only_when_complete() -> None:
    masker = LineMasker(["s3cret"])
    assert masker.feed("first ") == []
    assert masker.feed("line\nsecond") == ["first line"]
    assert masker.feed(" line\nthird\n") == ["second line", "third"]
    assert masker.flush() == []


def test_flush_releases_the_unterminated_rest_once() -> None:
    masker = LineMasker(["s3cret"])
    assert masker.feed("done\npartial s3cret") == ["done"]
    assert masker.flush() == ["partial ***"]
    assert masker.flush() == []
    # The masker can be used again after a flush.
    assert masker.feed("again s3cret\n") == ["again ***"]


def test_a_secret_split_across_two_chunks_is_masked() -> None:
    masker = LineMasker(["hunter2hunter2"])
    assert masker.feed("password=hunter2") == []
    assert masker.feed("hunter2 ok\n") == ["password=*** ok"]


def test_a_secret_fed_one_character_at_a_time_is_masked() -> None:
    masker = LineMasker(["hunter2", "s3cr3t-token"])
    text = "a hunter2 b s3cr3t-token c\nhunter2\n"
    assert stream(masker, list(text)) == ["a *** b *** c", "***"]


def test_empty_lines_and_crlf() -> None:
    masker = LineMasker(["hunter2"])
    assert masker.feed("a\r\n\r\n\nhunter2\r\nb\r") == ["a", "", "", "***"]
    assert masker.feed("\n") == ["b"]


def test_short_and_duplicate_secrets() -> None:
    masker = LineMasker(["abc", "", "hunter2", "hunter2"])
    assert masker.secrets == ["hunter2"]
    assert stream(masker, ["abc hunter2\n"]) == ["abc ***"]


def test_no_secrets_passes_text_through() -> None:
    assert stream(LineMasker([]), ["a", "b\nc", "\n", "d"]) == ["ab", "c", "d"]


def test_a_long_line_in_many_chunks_is_released_in_pieces() -> None:
    secret = "s" * 8 + "-secret-" + "t" * 8
    masker = LineMasker([secret])
    # The secret sits across MAX_LINE, where the first cut falls.
    text = "x" * (MAX_LINE - 10) + secret + "y" * (2 * MAX_LINE) + secret + "z" * 100
    released: list[str] = []
    for i in range(0, len(text), 1000):
        released.extend(masker.feed(text[i : i + 1000]))
        # Memory stays bounded while the line goes on.
        assert len(masker._buffer) <= MAX_LINE + len(secret) - 1
    assert len(released) >= 2
    lines = released + masker.flush()
    assert all(0 < len(line) <= MAX_LINE for line in lines)
    assert all(secret not in line for line in lines)
    assert "".join(lines) == mask(text, [secret])


def test_a_long_line_in_one_chunk_is_released_in_pieces() -> None:
    # Regression: one big write came back as one line of any length.
    masker = LineMasker(["hunter2"])
    text = ("hunter2 " + "x" * 100) * 1000
    lines = masker.feed(text)
    assert len(lines) > 1
    lines += masker.flush()
    assert all(len(line) <= MAX_LINE for line in lines)
    assert "".join(lines) == mask(text, ["hunter2"])


def test_a_long_complete_line_is_stored_in_pieces() -> None:
    # Regression: a complete line was stored whole whatever its length.
    lines = LineMasker(["hunter2"]).feed("y" * (3 * MAX_LINE + 5) + "\nshort\n")
    assert [len(line) for line in lines] == [MAX_LINE, MAX_LINE, MAX_LINE, 5, 5]


def test_a_secret_longer_than_a_line_piece_does_not_make_empty_lines() -> None:
    # Regression: masking shrank the buffer below the hold and an empty piece came out.
    secret = "s" * (2 * MAX_LINE)
    masker = LineMasker([secret])
    lines = stream(masker, [secret * 3, "tail\n"])
    assert "".join(lines) == "*********tail"
    assert "" not in lines


# -- properties ------------------------------------------------------------------

# Secrets: no line break in them (a masker works line by line).
secret_chars = st.characters(codec="utf-8", exclude_characters="\n\r", exclude_categories=("Cs",))
secrets_ = st.text(secret_chars, min_size=MIN_SECRET_LENGTH, max_size=12)
# Texts: mostly a small alphabet, so secrets and their fragments turn up often.
text_chars = st.sampled_from("ab*\n x") | secret_chars
text_chars_cr = text_chars | st.just("\r")


@st.composite
def output_with_secret(
    draw: st.DrawFn, secret: st.SearchStrategy[str], chars: st.SearchStrategy[str] = text_chars
) -> tuple[str, str]:
    value = draw(secret)
    parts = draw(st.lists(st.text(chars, max_size=12), min_size=2, max_size=5))
    # Glue the secret in between parts, also partially and repeatedly.
    text = value.join(parts) + draw(st.sampled_from(["", value[:-1], value[1:], "\n"]))
    return value, text


@st.composite
def split(draw: st.DrawFn, text: str) -> list[str]:
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=8)))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


@given(data=st.data(), line=st.sampled_from([MAX_LINE, 3, 7, 16]))
@settings(max_examples=400)
def test_no_stored_line_contains_the_secret(data: st.DataObject, line: int) -> None:
    secret, text = data.draw(output_with_secret(secrets_, text_chars_cr))
    chunks = data.draw(split(text))
    with max_line(line):
        lines = stream(LineMasker([secret]), chunks)
    assert not any(secret in stored for stored in lines)
    assert all(len(stored) <= line for stored in lines)


@given(data=st.data(), line=st.sampled_from([MAX_LINE, 3, 7, 16]))
@settings(max_examples=400)
def test_the_lines_are_the_masked_text(data: st.DataObject, line: int) -> None:
    # Without "*" in the secret and "\r" in the text, masking piecewise and
    # masking the whole text agree exactly (apart from the line breaks).
    secret, text = data.draw(output_with_secret(secrets_.filter(lambda s: "*" not in s)))
    chunks = data.draw(split(text))
    with max_line(line):
        lines = stream(LineMasker([secret]), chunks)
    assert "".join(lines) == mask(text, [secret]).replace("\n", "")
    if line == MAX_LINE:
        # Short texts: one stored line per line of output.
        expected = text.split("\n")
        if expected[-1] == "":
            expected.pop()
        assert lines == [mask(e, [secret]) for e in expected]


@given(
    secrets=st.lists(secrets_, min_size=1, max_size=4),
    data=st.data(),
    line=st.sampled_from([MAX_LINE, 5, 9]),
)
@settings(max_examples=300)
def test_no_stored_line_contains_any_of_several_secrets(
    secrets: list[str], data: st.DataObject, line: int
) -> None:
    pieces = data.draw(st.lists(st.sampled_from(secrets) | st.text(text_chars, max_size=6)))
    text = "".join(pieces)
    chunks = data.draw(split(text))
    with max_line(line):
        lines = stream(LineMasker(secrets), chunks)
    for stored in lines:
        assert not any(s in stored for s in secrets)


@given(text=st.text(text_chars, max_size=40), secrets=st.lists(secrets_, max_size=3))
def test_mask_is_idempotent_and_leaves_no_secret(text: str, secrets: list[str]) -> None:
    once = mask(text, secrets)
    assert mask(once, secrets) == once
    assert not any(s in once for s in secrets)
    assert len(once) <= len(text)


@pytest.mark.parametrize("chunk", [1, 2, 5, 64])
def test_chunk_size_does_not_change_the_lines(chunk: int) -> None:
    text = "user=admin pass=hunter2hunter2\nline two hunter2hunter2!\n\nlast"
    masker = LineMasker(["hunter2hunter2"])
    chunks = [text[i : i + chunk] for i in range(0, len(text), chunk)]
    assert stream(masker, chunks) == ["user=admin pass=***", "line two ***!", "", "last"]


def test_a_multi_line_secret_is_masked_line_by_line() -> None:
    secret = "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0B\n-----END KEY-----"
    masker = LineMasker([secret])
    lines = masker.feed("key:\n" + secret + "\ndone\n")
    assert not any(part in line for line in lines for part in secret.split("\n"))
    assert lines[0] == "key:" and lines[-1] == "done"
