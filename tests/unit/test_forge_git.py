"""Git branch names are checked before they reach an argument list, by git's own
rules (compared with `git check-ref-format`)."""

from __future__ import annotations

import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from branchline import naming
from branchline.errors import UsageError
from branchline.providers.forge.git import check_branch_name


@pytest.mark.parametrize("name", ["main", "feature/x", "a-b.c", "dev_1", "release/1.2", "ünï"])
def test_names_git_accepts_pass(name: str) -> None:
    assert check_branch_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "a\x00b", "a b", "tab\tx", "a..b", "-x", "/x", "x/", "x.lock", "x.lock/y", "a@{b", "@",
     "a~1", "a^", "a:b", "a?", "a*", "a[b", "a\\b", ".x", "x/.y", "x.", "a//b", "x" * 256],
)  # fmt: skip
def test_names_git_refuses_are_refused_clearly(name: str) -> None:
    with pytest.raises(UsageError, match="is not a git branch name: ") as refused:
        check_branch_name(name)
    assert "check-ref-format" in (refused.value.hint or "")


# Characters around every rule of refs.c: separators, dots, '@{', the forbidden set,
# controls, and non-ASCII (git allows it; branchline refuses what hides text).
_ALPHABET = "ab/.-@{}lock~^:?*[\\ \t\x01\x7f\u00e9\u202e\u2028\x85"


def _git_accepts(ref: str) -> bool:
    done = subprocess.run(["git", "check-ref-format", ref], capture_output=True, check=False)
    return done.returncode == 0


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=_ALPHABET, max_size=12))
def test_ref_rules_are_gits_own(name: str) -> None:
    """`naming.ref_problem` against `git check-ref-format` itself: it accepts nothing
    git refuses, and refuses what git accepts only for its stated extra rules."""
    ref = f"refs/heads/{name}"
    problem = naming.ref_problem(ref)
    if problem is None:
        assert _git_accepts(ref), ref
    elif _git_accepts(ref):
        assert any(char >= "\x80" for char in name), (ref, problem)  # hiding characters
    branch_problem = naming.branch_name_problem(name)
    if problem is not None:
        assert branch_problem is not None
    elif branch_problem is not None:  # git's --branch rules: no leading '-', not HEAD or @
        assert name.startswith("-") or name in ("HEAD", "@"), (name, branch_problem)


@pytest.mark.parametrize("name", ["a\u202eb", "a\u2028b", "a\x85b", "a\u2066b"])
def test_characters_that_hide_text_are_refused_though_git_allows_them(name: str) -> None:
    assert _git_accepts(f"refs/heads/{name}")
    with pytest.raises(UsageError, match="non-printing character"):
        check_branch_name(name)
