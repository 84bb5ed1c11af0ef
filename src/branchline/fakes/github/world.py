"""What the fake GitHub keeps for its one repository, in memory, and GitHub's rules
over it: issues and pull requests share one number sequence, ids are unique across
everything, a label added to an issue is made in the repository when missing, a
label removed that is not there is a 404. Statuses, check runs and deployments are
`commits.CommitRecords`'."""

from __future__ import annotations

import itertools
from dataclasses import asdict
from datetime import datetime
from typing import Any

from branchline.fakes.github.commits import CommitRecords
from branchline.fakes.github.environments import Environments
from branchline.fakes.github.records import (
    ROLES,
    Actor,
    ApiError,
    Comment,
    Issue,
    Label,
    Pull,
    fake_sha,
    invalid,
    not_found,
)
from branchline.fakes.github.shapes import now, stamp


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
        self.commits = CommitRecords(self.next_id, self.resolve)
        self.environments = Environments(self.next_id)
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

    def resolve(self, ref: str) -> str:
        """A ref's commit: a pull's head or base ref, else `ref` itself (a sha)."""
        for pull in sorted(self.pulls.values(), key=lambda p: p.number, reverse=True):
            if ref == pull.head_ref:
                return pull.head_sha
            if ref == pull.base_ref:
                return pull.base_sha
        return ref

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
        "statuses": [_plain(asdict(s)) for s in world.commits.statuses],
        "check_runs": [_plain(asdict(r)) for r in world.commits.check_runs.values()],
        "deployments": [_plain(asdict(d)) for d in world.commits.deployments.values()],
        "roles": dict(world.roles),
        "environments": sorted(e.name for e in world.environments.environments.values()),
        # names and times only: a secret's sealed value is not shown, as on GitHub
        "secrets": [
            {"environment": env, "name": s.name, "updated_at": stamp(s.updated)}
            for (env, _), s in sorted(world.environments.secrets.items())
        ],
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
