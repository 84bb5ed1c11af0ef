"""The code host: pull requests, sticky comments, issues and commit statuses.

`ForgeProvider` is what pipelines post back and ask. A forge whose pull requests
branchline itself keeps (the local one) also has `LocalPullRequests`: pushes and
pull requests recorded from the command line or a git hook, each an event. A code
host with more to offer has capabilities, asked for with `isinstance`:
`DeploymentTracker` (environments on the host's own pages), `ApprovalGate` (who may
approve a fork's pull request, asked of the host rather than trusted from a
payload) and `ChangeLister` (the files two commits differ by, from the host).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

from branchline import events
from branchline.errors import UsageError

PullRequestState = Literal["open", "closed", "merged"]
STATUS_STATES = ("pending", "success", "failure", "error")
DeploymentState = Literal["in_progress", "success", "failure", "error", "inactive"]
APPROVAL_LABEL = "safe-to-preview"  # a writer's label that approves a fork's head commit


def check_status(state: str) -> None:
    """A commit status every code host knows, or a UsageError."""
    if state not in STATUS_STATES:
        raise UsageError(
            f"unknown commit status {state!r}", hint=f"Use one of {', '.join(STATUS_STATES)}."
        )


@dataclass(frozen=True)
class PullRequest:
    number: int
    title: str
    head_branch: str
    base_branch: str
    head_sha: str
    state: PullRequestState
    updated_at: datetime | None = None
    fork: bool = False  # its head is in another repository: untrusted code

    @property
    def is_open(self) -> bool:
        return self.state == "open"

    def as_dict(self) -> dict[str, Any]:
        return {"number": self.number, "title": self.title, "head": self.head_branch,
                "base": self.base_branch, "sha": self.head_sha, "state": self.state,
                "fork": self.fork}  # fmt: skip


@runtime_checkable
class ForgeProvider(Protocol):
    async def upsert_comment(self, pr: int, key: str, body: str) -> None:
        """One sticky comment per PR and key, edited on each update."""
        ...

    async def create_issue(self, title: str, body: str, labels: list[str]) -> int:
        """Open an issue; returns its number."""
        ...

    async def close_issue(self, number: int, comment: str) -> None:
        """Say `comment` on issue `number` and close it (a closed one stays closed)."""
        ...

    async def set_status(
        self, sha: str, context: str, state: str, url: str | None = None,
        description: str | None = None,
    ) -> None:  # fmt: skip
        """A commit status: pending, success, failure or error."""
        ...

    async def pull_request(self, number: int) -> PullRequest | None:
        """The pull request as the code host has it now (None: there is none)."""
        ...

    async def pull_requests(self) -> list[PullRequest]:
        """Every pull request the code host knows of this project (open ones at least)."""
        ...

    async def aclose(self) -> None:
        """Let go of what is held open (connections) in this event loop."""
        ...


@runtime_checkable
class DeploymentTracker(Protocol):
    """A code host that shows environments and what is deployed to them."""

    async def deployment_status(
        self, environment: str, *, sha: str, ref: str, state: DeploymentState,
        url: str | None = None, log_url: str | None = None, description: str | None = None,
    ) -> None:  # fmt: skip
        """The deployment of `sha` to `environment` (made on first use) is now `state`;
        `url` is the environment's address. `inactive`: the environment is gone."""
        ...


@runtime_checkable
class ApprovalGate(Protocol):
    """A code host that knows who may approve a fork's pull request."""

    async def may_approve(self, login: str) -> bool:
        """Whether `login` may write to the repository (write, maintain or admin)."""
        ...

    async def withdraw_approval(self, pr: int) -> None:
        """Take the approval label off pull request `pr` (a new commit needs a new one)."""
        ...


@runtime_checkable
class ChangeLister(Protocol):
    """A code host that lists the files two commits differ by."""

    async def changed_files(self, base: str, head: str) -> list[str] | None:
        """Files changed from `base` to `head` (None: too many to list, or unknown)."""
        ...


@dataclass(frozen=True)
class Recorded:
    """What a local forge command did: the pull request (if any) and the event
    recorded (None: nothing changed, or a replayed delivery)."""

    pr: PullRequest | None
    event: events.Event | None
    event_id: int | None = None


@runtime_checkable
class LocalPullRequests(Protocol):
    """Pushes and pull requests kept by branchline itself."""

    async def push(
        self, branch: str | None = None, *, source: str = "cli", before: str | None = None,
        deploy: bool = True,
    ) -> Recorded: ...  # fmt: skip

    async def open_pr(
        self, branch: str, title: str | None = None, *, fork: bool = False
    ) -> Recorded: ...

    async def approve_pr(self, number: int, by: str) -> Recorded:
        """Approve a fork's pull request at its head commit (its preview may start)."""
        ...

    async def sync_pr(self, number: int, *, again: bool = False) -> Recorded: ...

    async def close_pr(self, number: int, *, merge: bool = False) -> list[Recorded]: ...
