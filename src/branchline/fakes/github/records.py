"""The records the fake GitHub keeps (issues, pulls, comments, labels, statuses, check
runs, deployments), who acts (`Actor`) and GitHub's refusals (`ApiError`)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

ROLES = ("admin", "maintain", "write", "triage", "read", "none")
# GitHub's `permission` says admin/write/read/none; `role_name` says the fine role.
PERMISSION_OF_ROLE = {
    "admin": "admin", "maintain": "write", "write": "write",
    "triage": "read", "read": "read", "none": "none",
}  # fmt: skip
STATUS_STATES = ("error", "failure", "pending", "success")
DEPLOYMENT_STATES = ("error", "failure", "inactive", "pending", "success", "queued", "in_progress")


class ApiError(Exception):
    """An answer other than success: GitHub's status, message and (422) errors."""

    def __init__(
        self, status: int, message: str, errors: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors


def not_found() -> ApiError:
    return ApiError(404, "Not Found")


def invalid(resource: str, field_name: str, code: str = "invalid", message: str = "") -> ApiError:
    error: dict[str, Any] = {"resource": resource, "field": field_name, "code": code}
    if message:
        error["message"] = message
    return ApiError(422, "Validation Failed", [error])


@dataclass(frozen=True)
class Actor:
    """Who makes a call: a person (personal token) or an App's bot (installation token)."""

    login: str
    bot: bool = False


@dataclass
class Issue:
    number: int
    id: int
    title: str
    body: str | None
    author: Actor
    created: datetime
    updated: datetime
    state: str = "open"
    state_reason: str | None = None
    closed_at: datetime | None = None
    labels: list[str] = field(default_factory=list)
    is_pull: bool = False


@dataclass
class Pull:
    number: int
    id: int
    head_ref: str
    head_sha: str
    base_ref: str
    base_sha: str
    fork: bool
    files: list[str]
    merged: bool = False
    merged_at: datetime | None = None


@dataclass
class Comment:
    id: int
    issue: int
    body: str
    author: Actor
    created: datetime
    updated: datetime


@dataclass
class Label:
    id: int
    name: str
    color: str = "ededed"
    description: str | None = None


@dataclass
class CommitStatus:
    id: int
    sha: str
    state: str
    context: str
    description: str | None
    target_url: str | None
    author: Actor
    created: datetime


@dataclass
class CheckRun:
    id: int
    head_sha: str
    name: str
    status: str
    conclusion: str | None
    details_url: str | None
    external_id: str | None
    started: datetime | None
    completed: datetime | None
    output: dict[str, Any]
    author: Actor


@dataclass
class DeploymentStatus:
    id: int
    state: str
    description: str
    environment: str
    environment_url: str
    log_url: str
    author: Actor
    created: datetime


@dataclass
class Deployment:
    id: int
    sha: str
    ref: str
    task: str
    environment: str
    description: str | None
    payload: Any
    transient: bool
    production: bool
    author: Actor
    created: datetime
    updated: datetime
    statuses: list[DeploymentStatus] = field(default_factory=list)


def fake_sha(*parts: str) -> str:
    """A stable 40-hex commit id for a ref the fake was never told the commit of."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:40]
