"""Forge-neutral events: what happened, parsed once at the boundary.

A GitHub webhook, the local code host, the engine (a run finished) and the preview
timer each produce one of these; dispatch routes on them and never reads a
vendor's JSON. Each event is stored as its kind, action and a small versioned
payload (`to_payload`), and read back with `from_stored`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from branchline.errors import UsageError

__all__ = [
    "ZERO_SHA",
    "Event",
    "PreviewExpired",
    "PullRequestApproved",
    "PullRequestChanged",
    "Push",
    "WorkflowFinished",
    "commit_id",
    "from_stored",
]

ZERO_SHA = "0" * 40
"""A missing commit (a branch created or deleted), as git and GitHub write it."""
VERSION = 1
PullRequestAction = Literal["opened", "synchronize", "reopened", "closed"]
PR_ACTIONS: tuple[PullRequestAction, ...] = ("opened", "synchronize", "reopened", "closed")
UPDATES: tuple[PullRequestAction, ...] = ("opened", "synchronize", "reopened")
_SHA = re.compile(r"[0-9a-f]{7,64}")


def commit_id(value: object, what: str = "commit") -> str:
    """`value` when it is a commit id (7 to 64 lower-case hex digits), else UsageError."""
    text = str(value or "")
    if not _SHA.fullmatch(text):
        raise UsageError(
            f"{what} {text[:80]!r} is not a commit id",
            hint="A commit id is 7 to 64 lower-case hexadecimal digits.",
        )
    return text


def _optional_sha(value: object, what: str) -> str | None:
    if value in (None, "", ZERO_SHA):
        return None
    return commit_id(value, what)


@dataclass(frozen=True)
class Push:
    """Commits pushed to a branch (`after` is its new head; `deleted`: the branch went)."""

    branch: str
    after: str
    before: str | None = None
    deleted: bool = False
    deploy: bool = True  # False: tested only, even on the production branch (--no-deploy)

    kind = "push"
    action = None

    def to_payload(self) -> dict[str, Any]:
        return {"v": VERSION, "branch": self.branch, "after": self.after,
                "before": self.before, "deleted": self.deleted, "deploy": self.deploy}  # fmt: skip


@dataclass(frozen=True)
class PullRequestChanged:
    """A pull request opened, updated (`synchronize`), reopened or closed (merged or not)."""

    action: PullRequestAction
    number: int
    head_branch: str
    head_sha: str
    base_branch: str
    base_sha: str | None = None
    merged: bool = False
    title: str = ""
    fork: bool = False  # its head is in another repository: untrusted code

    kind = "pull_request"

    @property
    def is_update(self) -> bool:
        """Opened, synchronised or reopened: a commit to test."""
        return self.action in UPDATES

    def to_payload(self) -> dict[str, Any]:
        return {"v": VERSION, "number": self.number, "head_branch": self.head_branch,
                "head_sha": self.head_sha, "base_branch": self.base_branch,
                "base_sha": self.base_sha, "merged": self.merged, "title": self.title,
                "fork": self.fork}  # fmt: skip


@dataclass(frozen=True)
class PullRequestApproved:
    """A writer approved a fork's pull request at one commit (a preview may follow)."""

    number: int
    sha: str
    by: str

    kind = "approval"
    action = None

    def to_payload(self) -> dict[str, Any]:
        return {"v": VERSION, "number": self.number, "sha": self.sha, "by": self.by}


@dataclass(frozen=True)
class WorkflowFinished:
    """A run ended; recorded by the engine in the same transaction as its status."""

    run_id: int
    workflow: str
    conclusion: str  # success, failure, cancelled
    sha: str | None = None
    ref: str | None = None
    pr: int | None = None

    kind = "workflow_run"
    action = "completed"

    @property
    def succeeded(self) -> bool:
        return self.conclusion == "success"

    def to_payload(self) -> dict[str, Any]:
        return {"v": VERSION, "run_id": self.run_id, "workflow": self.workflow,
                "conclusion": self.conclusion, "sha": self.sha, "ref": self.ref,
                "pr": self.pr}  # fmt: skip


@dataclass(frozen=True)
class PreviewExpired:
    """A preview's TTL passed."""

    pr: int
    expired_at: datetime

    kind = "preview_expired"
    action = None

    def to_payload(self) -> dict[str, Any]:
        return {"v": VERSION, "number": self.pr, "expired_at": self.expired_at.isoformat()}


Event = Push | PullRequestChanged | PullRequestApproved | WorkflowFinished | PreviewExpired


def push(branch: str, after: str, before: str | None = None, *, deploy: bool = True) -> Push:
    """A push, checked: commit ids, and a deleted branch when `after` is all zeros."""
    if after == ZERO_SHA:
        return Push(branch, after, _optional_sha(before, "before"), deleted=True)
    return Push(branch, commit_id(after, "after"), _optional_sha(before, "before"),
                deploy=deploy)  # fmt: skip


def from_stored(kind: str, action: str | None, payload: dict[str, Any]) -> Event | None:
    """The event a stored row holds; None for kinds that start nothing (ping).
    Rows written before events were typed held GitHub-shaped payloads: those are
    read as such (`legacy`)."""
    if payload.get("v") != VERSION:
        return _legacy(kind, action, payload)
    if kind == "push":
        return Push(str(payload["branch"]), str(payload["after"]), payload.get("before"),
                    bool(payload.get("deleted")), bool(payload.get("deploy", True)))  # fmt: skip
    if kind == "pull_request":
        if action not in PR_ACTIONS:
            return None
        return PullRequestChanged(
            action, int(payload["number"]), str(payload["head_branch"]),
            str(payload["head_sha"]), str(payload["base_branch"]), payload.get("base_sha"),
            bool(payload.get("merged")), str(payload.get("title") or ""),
            bool(payload.get("fork")),
        )  # fmt: skip
    if kind == "approval":
        return PullRequestApproved(int(payload["number"]), str(payload["sha"]), str(payload["by"]))
    if kind == "workflow_run":
        pr = payload.get("pr")
        return WorkflowFinished(
            int(payload["run_id"]), str(payload["workflow"]), str(payload["conclusion"]),
            payload.get("sha"), payload.get("ref"), int(pr) if pr else None,
        )  # fmt: skip
    if kind == "preview_expired":
        return PreviewExpired(
            int(payload["number"]), datetime.fromisoformat(str(payload["expired_at"]))
        )
    return None


def _legacy(kind: str, action: str | None, payload: dict[str, Any]) -> Event | None:
    if kind == "workflow_run" or kind == "preview_expired":
        return from_stored(kind, action, {**payload, "v": VERSION})
    if kind == "push":
        ref = str(payload.get("ref") or "")
        branch = ref.removeprefix("refs/heads/")
        if not ref.startswith("refs/heads/") or not branch:
            return None
        if payload.get("deleted"):
            return Push(branch, ZERO_SHA, None, deleted=True)
        return push(branch, str(payload.get("after") or ""), payload.get("before"))
    if kind == "pull_request" and action in PR_ACTIONS:
        pull = payload.get("pull_request") or {}
        head, base = pull.get("head") or {}, pull.get("base") or {}
        return PullRequestChanged(
            action, int(payload.get("number") or pull.get("number") or 0),
            str(head.get("ref") or ""), commit_id(head.get("sha"), "head"),
            str(base.get("ref") or ""),
            _optional_sha(base.get("sha"), "base"), bool(pull.get("merged")),
            str(pull.get("title") or ""),
        )  # fmt: skip
    return None
