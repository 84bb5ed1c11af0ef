"""The code host: pull requests, sticky comments, issues and commit statuses."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class ForgeProvider(Protocol):
    async def upsert_comment(self, pr: int, key: str, body: str) -> None:
        """One sticky comment per PR and key, edited on each update."""
        ...

    async def create_issue(self, title: str, body: str, labels: list[str]) -> int:
        """Open an issue; returns its number."""
        ...

    async def set_status(
        self, sha: str, context: str, state: str, url: str | None = None,
        description: str | None = None,
    ) -> None:  # fmt: skip
        """A commit status: pending, success, failure or error."""
        ...
