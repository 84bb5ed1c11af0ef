"""An in-memory ForgeProvider: pull requests a test opens, one sticky comment per
PR and key (edited in place), issues, commit statuses."""

from __future__ import annotations

from dataclasses import replace

from branchline.providers.forge import PullRequest, PullRequestState, check_status


class MemoryForge:
    def __init__(self) -> None:
        self.prs: dict[int, PullRequest] = {}
        self.comments: dict[tuple[int, str], str] = {}
        self.comment_edits: dict[tuple[int, str], int] = {}
        self.issues: list[tuple[str, str, list[str]]] = []
        self.closed_issues: dict[int, str] = {}
        self.statuses: dict[tuple[str, str], tuple[str, str | None, str | None]] = {}

    # -- test helpers -----------------------------------------------------------------

    def open(
        self, number: int, head_sha: str, branch: str = "feature", *, fork: bool = False
    ) -> PullRequest:
        pr = PullRequest(number, branch, branch, "main", head_sha, "open", fork=fork)
        self.prs[number] = pr
        return pr

    def set_state(self, number: int, state: PullRequestState, head_sha: str | None = None) -> None:
        pr = self.prs[number]
        self.prs[number] = replace(pr, state=state, head_sha=head_sha or pr.head_sha)

    # -- ForgeProvider -----------------------------------------------------------------

    async def upsert_comment(self, pr: int, key: str, body: str) -> None:
        self.comments[(pr, key)] = body
        self.comment_edits[(pr, key)] = self.comment_edits.get((pr, key), 0) + 1

    async def create_issue(self, title: str, body: str, labels: list[str]) -> int:
        self.issues.append((title, body, list(labels)))
        return len(self.issues)

    async def close_issue(self, number: int, comment: str) -> None:
        self.closed_issues[number] = comment

    async def aclose(self) -> None:
        pass

    async def set_status(
        self, sha: str, context: str, state: str, url: str | None = None,
        description: str | None = None,
    ) -> None:  # fmt: skip
        check_status(state)
        self.statuses[(sha, context)] = (state, url, description)

    async def pull_request(self, number: int) -> PullRequest | None:
        return self.prs.get(number)

    async def pull_requests(self) -> list[PullRequest]:
        return [self.prs[n] for n in sorted(self.prs, reverse=True)]
