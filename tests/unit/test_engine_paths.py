"""Path globs as in GitHub's path filters: `**` crosses directories, `*` and `?` do not."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from branchline.engine.paths import NO_COMMIT, any_matches, changed_files, matches


@pytest.mark.parametrize(
    ("pattern", "path"),
    [
        ("README.md", "README.md"),
        ("*.md", "README.md"),
        ("docs/*", "docs/index.md"),
        ("docs/*.md", "docs/.hidden.md"),
        ("docs/**", "docs/index.md"),
        ("docs/**", "docs/a/b/c.md"),
        ("**", "anything/at/all.txt"),
        ("**", "top.txt"),
        ("**/*.py", "setup.py"),
        ("**/*.py", "src/pkg/mod.py"),
        ("**.py", "src/pkg/mod.py"),
        ("src/**/test_*.py", "src/test_a.py"),
        ("src/**/test_*.py", "src/x/y/test_a.py"),
        ("**/migrations/**", "db/migrations/0001.sql"),
        ("**/migrations/**", "migrations/0001.sql"),
        ("?.txt", "a.txt"),
        ("v?/*.json", "v1/schema.json"),
        ("a/**/b", "a/b"),
        ("a/**/b", "a/x/y/b"),
        ("*", "Makefile"),
        ("docs/**", "docs/new\nline.md"),
        ("**/*.md", "docs/caf\u00e9.md"),
    ],
)
def test_matches(pattern: str, path: str) -> None:
    assert matches(path, [pattern])


@pytest.mark.parametrize(
    ("pattern", "path"),
    [
        ("*.md", "docs/index.md"),  # * does not cross a directory
        ("docs/*", "docs/a/b.md"),
        ("docs/*", "docs"),
        ("docs/**", "docs"),
        ("docs/**", "documentation/x.md"),
        ("docs/**", "src/docs/x.md"),  # anchored at the repository root
        ("?.txt", "ab.txt"),
        ("?.txt", "/.txt"),  # ? is not a slash
        ("a?b", "a/b"),
        ("**/*.py", "mod.pyc"),
        ("README.md", "README.mdx"),  # anchored at the end
        ("README.md", "docs/README.md"),
        ("a/**/b", "a/xb"),
        ("src/**/test_*.py", "src/x/a_test.py"),
        # Regex characters are literal.
        ("file.txt", "fileXtxt"),
        ("a+b", "aab"),
        ("(x)", "x"),
        ("[ab].txt", "a.txt"),
        ("^a$", "a"),
    ],
)
def test_does_not_match(pattern: str, path: str) -> None:
    assert not matches(path, [pattern])


def test_regex_characters_match_themselves() -> None:
    for literal in ["a+b", "(x)", "[ab].txt", "^a$", "a{2}", "a|b", "c\\d", "$HOME"]:
        assert matches(literal, [literal])


def test_matches_any_of_several_patterns() -> None:
    patterns = ["docs/**", "*.md"]
    assert matches("docs/x/y", patterns)
    assert matches("CHANGES.md", patterns)
    assert not matches("src/a.py", patterns)
    assert not matches("src/a.py", [])


def test_any_matches() -> None:
    changed = ["src/app/main.py", "README.md"]
    assert any_matches(changed, ["src/**"])
    assert any_matches(changed, ["*.txt", "*.md"])
    assert not any_matches(changed, ["docs/**", "*.txt"])
    assert not any_matches([], ["**"])


def test_any_matches_without_patterns_is_always_true() -> None:
    assert any_matches([], [])
    assert any_matches(["x"], ())
    assert any_matches(None, [])


def test_any_matches_with_unknown_changes_is_true() -> None:
    # A new branch: nothing to compare with, so everything counts as changed.
    assert any_matches(None, ["docs/**"])


def test_any_matches_accepts_one_shot_iterables() -> None:
    assert any_matches(iter(["a/b.py"]), (p for p in ["nope/**", "**/*.py"]))
    assert not any_matches(iter(["a/b.py"]), (p for p in ["nope/**"]))


def test_changed_files_without_a_base_is_unknown() -> None:
    # No git is run at all: the repository need not exist.
    from pathlib import Path

    nowhere = Path("/nonexistent/repository")
    assert changed_files(nowhere, None, "HEAD") is None
    assert changed_files(nowhere, "", "HEAD") is None
    assert changed_files(nowhere, NO_COMMIT, "HEAD") is None
    assert NO_COMMIT == "0" * 40


# -- properties ------------------------------------------------------------------

segment = st.text(st.sampled_from("abc.-_x1"), min_size=1, max_size=5)
rel_path = st.lists(segment, min_size=1, max_size=4).map("/".join)


@given(rel_path)
def test_a_path_matches_itself_and_double_star(path: str) -> None:
    assert matches(path, [path])
    assert matches(path, ["**"])
    assert matches(path, ["**/" + path.rsplit("/", 1)[-1]])


@given(rel_path, rel_path)
def test_double_star_under_a_directory(directory: str, rest: str) -> None:
    assert matches(f"{directory}/{rest}", [f"{directory}/**"])
    assert not matches(directory, [f"{directory}/**"])


@given(rel_path)
def test_star_never_crosses_a_slash(path: str) -> None:
    depth = path.count("/") + 1
    assert matches(path, ["/".join(["*"] * depth)])
    assert not matches(path, ["/".join(["*"] * (depth + 1))])
    if depth > 1:
        assert not matches(path, ["/".join(["*"] * (depth - 1))])


@given(rel_path)
def test_question_mark_is_one_character(path: str) -> None:
    name = path.rsplit("/", 1)[-1]
    assert matches(name, ["?" * len(name)])
    assert not matches(name, ["?" * (len(name) + 1)])
