"""changed_files against a real git repository."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from branchline.engine.paths import NO_COMMIT, any_matches, changed_files
from branchline.errors import BranchlineError

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("git") is None, reason="needs git"),
]

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **GIT_ENV},
    )
    return result.stdout.strip()


def commit(repo: Path, message: str, files: dict[str, str | None]) -> str:
    """Write (or delete, for None) files and commit them; returns the sha."""
    for name, content in files.items():
        path = repo / name
        if content is None:
            git(repo, "rm", "-q", name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
            git(repo, "add", name)
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    commit(path, "initial", {"README.md": "hello\n", "src/app.py": "print(1)\n", "old.txt": "x"})
    return path


def test_files_changed_on_a_branch_since_it_forked(repo: Path) -> None:
    base = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "-b", "feature")
    commit(repo, "docs", {"docs/guide.md": "guide\n"})
    head = commit(repo, "code", {"src/app.py": "print(2)\n", "old.txt": None})
    assert sorted(changed_files(repo, base, head) or []) == [
        "docs/guide.md",
        "old.txt",
        "src/app.py",
    ]
    # Symbolic names work as well as shas.
    assert sorted(changed_files(repo, "main", "feature") or []) == [
        "docs/guide.md",
        "old.txt",
        "src/app.py",
    ]


def test_three_dot_ignores_what_happened_on_the_base_since_the_fork(repo: Path) -> None:
    git(repo, "checkout", "-q", "-b", "feature")
    head = commit(repo, "feature work", {"src/feature.py": "x\n"})
    git(repo, "checkout", "-q", "main")
    base = commit(repo, "main moved on", {"README.md": "changed on main\n", "ops/deploy.sh": "x"})
    # base...head: only the feature's own changes, not main's (a two-dot diff would show them).
    assert changed_files(repo, base, head) == ["src/feature.py"]
    assert changed_files(repo, head, base) == ["README.md", "ops/deploy.sh"]


def test_no_changes_is_an_empty_list_not_none(repo: Path) -> None:
    sha = git(repo, "rev-parse", "HEAD")
    assert changed_files(repo, sha, sha) == []
    # An empty list means "nothing changed": path-filtered jobs are skipped.
    assert not any_matches(changed_files(repo, sha, sha), ["src/**"])


def test_no_base_or_zero_base_is_unknown(repo: Path) -> None:
    head = git(repo, "rev-parse", "HEAD")
    assert changed_files(repo, None, head) is None
    assert changed_files(repo, "", head) is None
    assert changed_files(repo, NO_COMMIT, head) is None
    # Unknown changes run every job.
    assert any_matches(changed_files(repo, None, head), ["docs/**"])


def test_names_with_unusual_characters_come_back_verbatim(repo: Path) -> None:
    # Regression: without -z git C-quoted these ('"docs/caf\\303\\251.md"'), so
    # "docs/**" did not match and a job was skipped although its files changed.
    base = git(repo, "rev-parse", "HEAD")
    names = ["docs/caf\u00e9.md", 'docs/say "hi".md', "docs/tab\there.md", "docs/with space.md"]
    head = commit(repo, "odd names", dict.fromkeys(names, "x\n"))
    changed = changed_files(repo, base, head)
    assert sorted(changed or []) == sorted(names)
    assert all(any_matches([name], ["docs/**"]) for name in names)


def test_path_filters_on_real_changes(repo: Path) -> None:
    base = git(repo, "rev-parse", "HEAD")
    head = commit(repo, "migrations", {"db/migrations/0002.sql": "select 1;\n"})
    changed = changed_files(repo, base, head)
    assert any_matches(changed, ["**/migrations/**"])
    assert not any_matches(changed, ["src/**", "*.md"])


def test_an_unknown_commit_is_a_clear_error(repo: Path) -> None:
    head = git(repo, "rev-parse", "HEAD")
    missing = "1234567890abcdef" * 2 + "12345678"
    with pytest.raises(BranchlineError) as info:
        changed_files(repo, missing, head)
    error = info.value
    assert "cannot compare 1234567890ab with" in error.message
    assert head[:12] in error.message
    assert str(repo) in error.message
    assert "git fetch" in error.hint
    # The unknown head is reported the same way.
    with pytest.raises(BranchlineError, match="cannot compare"):
        changed_files(repo, head, missing)


def test_not_a_repository_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BranchlineError, match="cannot compare") as info:
        changed_files(tmp_path, "HEAD~1", "HEAD")
    assert "git fetch" in info.value.hint
