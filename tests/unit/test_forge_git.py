"""Git branch names are checked before they reach an argument list."""

from __future__ import annotations

import pytest

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
    with pytest.raises(UsageError, match="is not a git branch name") as refused:
        check_branch_name(name)
    assert "check-ref-format" in (refused.value.hint or "")
