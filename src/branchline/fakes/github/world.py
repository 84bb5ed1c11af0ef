"""What the fake GitHub keeps for its one repository, in memory, and GitHub's rules
over it: issues and pull requests share one number sequence, ids are unique across
everything, a label added to an issue is made in the repository when missing, a
success deployment status makes older deployments of its environment inactive, only
an inactive deployment may be deleted."""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from branchline.fakes.github.shapes import now, stamp

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


_DEPLOYMENT_FILTERS = ("sha", "ref", "task", "environment")


def fake_sha(*parts: str) -> str:
    """A stable 40-hex commit id for a ref the fake was never told the commit of."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:40]


class GitHubWorld:
    """One repository's issues, pulls, comments, labels, statuses, check runs,
    deployments and collaborators."""

    def __init__(self, repository: str = "octo/codex", *, default_branch: str = "main") -> None:
        self.owner, _, self.name = repository.partition("/")
        if not self.owner or not self.name or "/" in self.name:
            raise ValueError(f"a repository is owner/name, not {repository!r}")
        self.default_branch = default_branch
        self.created = now()
        self._ids = itertools.count(1001)
        self._numbers = itertools.count(1)
        self.users: dict[str, int] = {}
        self.repo_id = self.next_id()
        self.issues: dict[int, Issue] = {}
        self.pulls: dict[int, Pull] = {}
        self.comments: dict[int, Comment] = {}
        self.labels: dict[str, Label] = {}
        self.statuses: list[CommitStatus] = []
        self.check_runs: dict[int, CheckRun] = {}
        self.deployments: dict[int, Deployment] = {}
        self.roles: dict[str, str] = {self.owner: "admin"}

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"

    def next_id(self) -> int:
        return next(self._ids)

    def user_id(self, login: str) -> int:
        if login not in self.users:
            self.users[login] = self.next_id()
        return self.users[login]

    def owns(self, owner: str, name: str) -> bool:
        # GitHub's owner and repository names are case-insensitive.
        return owner.lower() == self.owner.lower() and name.lower() == self.name.lower()

    # -- issues and pulls: one number sequence ----------------------------------

    def _take_number(self, number: int | None) -> int:
        if number is None:
            number = next(self._numbers)
            while number in self.issues:
                number = next(self._numbers)
            return number
        if number in self.issues:
            raise invalid("PullRequest", "number", "already_exists", f"#{number} exists")
        return number

    def issue(self, number: int) -> Issue:
        found = self.issues.get(number)
        if found is None:
            raise not_found()
        return found

    def create_issue(self, actor: Actor, title: str, body: str | None, labels: list[str]) -> Issue:
        if not title.strip():
            raise invalid("Issue", "title", "missing_field")
        moment = now()
        issue = Issue(self._take_number(None), self.next_id(), title, body, actor, moment, moment)
        self.issues[issue.number] = issue
        self.set_labels(issue.number, labels)
        return issue

    def update_issue(self, number: int, changes: dict[str, Any]) -> Issue:
        issue = self.issue(number)
        if "title" in changes and changes["title"] is not None:
            issue.title = str(changes["title"])
        if "body" in changes:
            issue.body = changes["body"]
        if "labels" in changes and changes["labels"] is not None:
            self.set_labels(number, [_label_name(x) for x in changes["labels"]])
        if changes.get("state") in ("open", "closed"):
            self._set_state(issue, changes["state"], changes.get("state_reason"))
        elif changes.get("state_reason") is not None:
            issue.state_reason = changes["state_reason"]
        issue.updated = now()
        return issue

    def _set_state(self, issue: Issue, state: str, reason: str | None) -> None:
        if state == issue.state:
            if reason is not None:
                issue.state_reason = reason
            return
        issue.state = state
        if state == "closed":
            issue.closed_at = now()
            issue.state_reason = reason or "completed"
        else:
            issue.closed_at = None
            issue.state_reason = reason or "reopened"

    def list_issues(self, state: str = "open", labels: str | None = None) -> list[Issue]:
        """Newest first, pulls included, as GitHub lists them."""
        wanted = [x for x in (labels or "").split(",") if x]
        found = [
            i
            for i in self.issues.values()
            if (state == "all" or i.state == state) and all(w in i.labels for w in wanted)
        ]
        return sorted(found, key=lambda i: i.number, reverse=True)

    # -- pulls --------------------------------------------------------------------

    def pull(self, number: int) -> Pull:
        found = self.pulls.get(number)
        if found is None:
            raise not_found()
        return found

    def add_pull(
        self,
        *,
        head: str,
        sha: str | None,
        base: str,
        base_sha: str | None,
        title: str,
        body: str | None = None,
        fork: bool = False,
        files: list[str] | None = None,
        number: int | None = None,
        author: Actor,
        state: str = "open",
    ) -> Pull:
        taken = self._take_number(number)
        moment = now()
        issue = Issue(taken, self.next_id(), title or f"Update {head}", body, author,
                      moment, moment, is_pull=True)  # fmt: skip
        pull = Pull(
            taken, self.next_id(), head, sha or fake_sha(self.full_name, head), base,
            base_sha or fake_sha(self.full_name, base), fork, list(files or []),
        )  # fmt: skip
        self.issues[taken] = issue
        self.pulls[taken] = pull
        if state == "closed":
            self._set_state(issue, "closed", None)
        return pull

    def update_pull(
        self,
        number: int,
        *,
        sha: str | None = None,
        state: str | None = None,
        merged: bool | None = None,
        title: str | None = None,
        body: str | None = None,
        base: str | None = None,
        files: list[str] | None = None,
    ) -> Pull:
        pull = self.pull(number)
        issue = self.issues[number]
        if pull.merged and (state == "open" or sha is not None):
            raise invalid("PullRequest", "state", message="a merged pull request is final")
        if sha is not None:
            pull.head_sha = sha
        if files is not None:
            pull.files = list(files)
        if title is not None:
            issue.title = title
        if body is not None:
            issue.body = body
        if base is not None:
            pull.base_ref = base
        if merged:
            pull.merged = True
            pull.merged_at = now()
            state = "closed"
        if state in ("open", "closed"):
            self._set_state(issue, state, None)
            issue.state_reason = None  # pulls have no state reason
        issue.updated = now()
        return pull

    def list_pulls(self, state: str = "open", head: str | None = None,
                   base: str | None = None) -> list[Pull]:  # fmt: skip
        found = []
        for pull in sorted(self.pulls.values(), key=lambda p: p.number, reverse=True):
            issue = self.issues[pull.number]
            if state != "all" and issue.state != state:
                continue
            if head and head.split(":")[-1] != pull.head_ref:
                continue
            if base and base != pull.base_ref:
                continue
            found.append(pull)
        return found

    def compare(self, base: str, head: str) -> tuple[str, str, list[str]] | None:
        """(base sha, head sha, files) of a known pull whose head is `head` (ref, sha or
        `owner:ref`) on `base`; None when the fake knows no such pair."""
        head_ref = head.split(":")[-1]
        for pull in sorted(self.pulls.values(), key=lambda p: p.number, reverse=True):
            if head_ref in (pull.head_ref, pull.head_sha) and base in (
                pull.base_ref, pull.base_sha, self.default_branch,
            ):  # fmt: skip
                return pull.base_sha, pull.head_sha, pull.files
        return None

    # -- comments -------------------------------------------------------------------

    def comment(self, ident: int) -> Comment:
        found = self.comments.get(ident)
        if found is None:
            raise not_found()
        return found

    def add_comment(self, actor: Actor, number: int, body: str) -> Comment:
        self.issue(number)
        moment = now()
        comment = Comment(self.next_id(), number, body, actor, moment, moment)
        self.comments[comment.id] = comment
        return comment

    def edit_comment(self, ident: int, body: str) -> Comment:
        comment = self.comment(ident)
        comment.body = body
        comment.updated = now()
        return comment

    def delete_comment(self, ident: int) -> None:
        self.comment(ident)
        del self.comments[ident]

    def comments_on(self, number: int) -> list[Comment]:
        self.issue(number)
        return sorted((c for c in self.comments.values() if c.issue == number),
                      key=lambda c: c.id)  # fmt: skip

    # -- labels -----------------------------------------------------------------------

    def label(self, name: str) -> Label:
        key = name.lower()  # label names are case-insensitive
        if key not in self.labels:
            self.labels[key] = Label(self.next_id(), name)
        return self.labels[key]

    def labels_of(self, number: int) -> list[Label]:
        return [self.label(n) for n in self.issue(number).labels]

    def add_labels(self, number: int, names: list[str]) -> list[Label]:
        issue = self.issue(number)
        for name in names:
            canonical = self.label(name).name
            if canonical.lower() not in (x.lower() for x in issue.labels):
                issue.labels.append(canonical)
        return self.labels_of(number)

    def set_labels(self, number: int, names: list[str]) -> list[Label]:
        self.issue(number).labels = []
        return self.add_labels(number, names)

    def remove_label(self, number: int, name: str) -> list[Label]:
        issue = self.issue(number)
        kept = [x for x in issue.labels if x.lower() != name.lower()]
        if len(kept) == len(issue.labels):
            raise ApiError(404, "Label does not exist")
        issue.labels = kept
        return self.labels_of(number)

    # -- commit statuses and check runs ----------------------------------------------

    def add_status(self, actor: Actor, sha: str, body: dict[str, Any]) -> CommitStatus:
        if body.get("state") not in STATUS_STATES:
            raise invalid("Status", "state")
        status = CommitStatus(
            self.next_id(), sha, body["state"], body.get("context") or "default",
            body.get("description"), body.get("target_url"), actor, now(),
        )  # fmt: skip
        self.statuses.append(status)
        return status

    def combined_status(self, ref: str) -> tuple[str, str, list[CommitStatus]]:
        """(state, sha, the latest status of each context) of `ref` (a sha or a pull's
        head ref), with GitHub's rule: any error or failure fails, any pending or none
        is pending, else success."""
        sha = self.resolve(ref)
        latest: dict[str, CommitStatus] = {}
        for status in self.statuses:
            if status.sha == sha:
                latest[status.context] = status
        states = {s.state for s in latest.values()}
        if states & {"error", "failure"}:
            state = "failure"
        elif not states or "pending" in states:
            state = "pending"
        else:
            state = "success"
        return state, sha, sorted(latest.values(), key=lambda s: s.id, reverse=True)

    def resolve(self, ref: str) -> str:
        """A ref's commit: a pull's head or base ref, else `ref` itself (a sha)."""
        for pull in sorted(self.pulls.values(), key=lambda p: p.number, reverse=True):
            if ref == pull.head_ref:
                return pull.head_sha
            if ref == pull.base_ref:
                return pull.base_sha
        return ref

    def check_run(self, ident: int) -> CheckRun:
        found = self.check_runs.get(ident)
        if found is None:
            raise not_found()
        return found

    def create_check_run(self, actor: Actor, body: dict[str, Any]) -> CheckRun:
        run = CheckRun(
            self.next_id(), body["head_sha"], body["name"], "queued", None, None, None,
            now(), None, {}, actor,
        )  # fmt: skip
        self.check_runs[run.id] = run
        return self.update_check_run(run.id, body)

    def update_check_run(self, ident: int, body: dict[str, Any]) -> CheckRun:
        run = self.check_run(ident)
        for key in ("name", "details_url", "external_id"):
            if key in body:
                setattr(run, key, body[key])
        if "output" in body and body["output"] is not None:
            run.output = dict(body["output"])
        if "status" in body and body["status"] is not None:
            run.status = body["status"]
        if body.get("conclusion") is not None:
            run.conclusion = body["conclusion"]
            run.status = "completed"  # a conclusion completes the run, as on GitHub
        if run.status == "completed":
            if run.conclusion is None:
                raise invalid("CheckRun", "conclusion", "missing_field",
                              "a completed check run needs a conclusion")  # fmt: skip
            run.completed = run.completed or now()
        return run

    # -- deployments -------------------------------------------------------------------

    def deployment(self, ident: int) -> Deployment:
        found = self.deployments.get(ident)
        if found is None:
            raise not_found()
        return found

    def create_deployment(self, actor: Actor, body: dict[str, Any]) -> Deployment:
        ref = body["ref"]
        environment = body.get("environment") or "production"
        moment = now()
        deployment = Deployment(
            self.next_id(), self.resolve(ref), ref, body.get("task") or "deploy", environment,
            body.get("description") or "", body.get("payload") or {},
            bool(body.get("transient_environment", False)),
            bool(body.get("production_environment", environment == "production")),
            actor, moment, moment,
        )  # fmt: skip
        self.deployments[deployment.id] = deployment
        return deployment

    def list_deployments(self, query: dict[str, str]) -> list[Deployment]:
        found = [
            d
            for d in self.deployments.values()
            if all(
                not query.get(key) or query[key] == getattr(d, key) for key in _DEPLOYMENT_FILTERS
            )
        ]
        return sorted(found, key=lambda d: d.id, reverse=True)

    def add_deployment_status(
        self, actor: Actor, ident: int, body: dict[str, Any]
    ) -> DeploymentStatus:
        deployment = self.deployment(ident)
        state = body["state"]
        if state not in DEPLOYMENT_STATES:
            raise invalid("DeploymentStatus", "state")
        environment = body.get("environment") or deployment.environment
        status = self._status(deployment, actor, state, environment, body)
        # GitHub's auto_inactive (default true): a success marks the prior
        # non-transient, non-production deployments of the environment inactive.
        if state == "success" and body.get("auto_inactive", True):
            for other in self.deployments.values():
                if (other.id < deployment.id and other.environment == environment
                        and not other.transient and not other.production
                        and self.deployment_state(other) != "inactive"):  # fmt: skip
                    self._status(other, actor, "inactive", environment, {})
        return status

    def _status(self, deployment: Deployment, actor: Actor, state: str, environment: str,
                body: dict[str, Any]) -> DeploymentStatus:  # fmt: skip
        url = body.get("environment_url") or ""
        status = DeploymentStatus(
            self.next_id(), state, body.get("description") or "", environment, url,
            body.get("log_url") or body.get("target_url") or "", actor, now(),
        )  # fmt: skip
        deployment.statuses.append(status)
        deployment.updated = status.created
        if environment != deployment.environment:
            deployment.environment = environment
        return status

    def deployment_state(self, deployment: Deployment) -> str | None:
        return deployment.statuses[-1].state if deployment.statuses else None

    def delete_deployment(self, ident: int) -> None:
        deployment = self.deployment(ident)
        # GitHub deletes only an inactive deployment: one whose last status is not a
        # success (or one that never had a status).
        if self.deployment_state(deployment) in ("success", "in_progress", "queued", "pending"):
            raise ApiError(
                422, "We cannot delete an active deployment unless it is the only "
                "deployment in a given environment.",
            )  # fmt: skip
        del self.deployments[ident]

    # -- collaborators ---------------------------------------------------------------

    def set_role(self, login: str, role: str) -> None:
        if role not in ROLES:
            raise ValueError(f"a role is one of {', '.join(ROLES)}, not {role!r}")
        self.roles[login] = role

    def role(self, login: str) -> str:
        return self.roles.get(login, "none")


def _label_name(value: Any) -> str:
    return str(value["name"]) if isinstance(value, dict) else str(value)


def snapshot(world: GitHubWorld) -> dict[str, Any]:
    """Everything the world keeps, as plain JSON values (for `GET /_fake/state`)."""
    issues = {str(n): _plain(asdict(i)) for n, i in sorted(world.issues.items())}
    return {
        "repository": world.full_name,
        "issues": issues,
        "pulls": {str(n): _plain(asdict(p)) for n, p in sorted(world.pulls.items())},
        "labels": {str(n): list(i.labels) for n, i in sorted(world.issues.items())},
        "repository_labels": [_plain(asdict(x)) for x in world.labels.values()],
        "comments": [_plain(asdict(c)) for c in sorted(world.comments.values(), key=_by_id)],
        "statuses": [_plain(asdict(s)) for s in world.statuses],
        "check_runs": [_plain(asdict(r)) for r in world.check_runs.values()],
        "deployments": [_plain(asdict(d)) for d in world.deployments.values()],
        "roles": dict(world.roles),
    }


def _by_id(comment: Comment) -> int:
    return comment.id


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return stamp(value)
    if isinstance(value, dict):
        if set(value) == {"login", "bot"}:  # an Actor: its login says it all
            return value["login"]
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
