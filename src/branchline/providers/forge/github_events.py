"""GitHub's webhook payloads turned into branchline's events, at the boundary.

Only what dispatch needs is read: a push's ref and commits, a pull request's
action, number, head and base, whether it merged. Everything else in GitHub's
payload stays out. A payload missing a field raises `MalformedDelivery` (the
webhook answers 400); kinds and actions that start nothing give None.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from branchline import events
from branchline.errors import UsageError

HANDLED = ("push", "pull_request")
APPROVAL_LABEL = "safe-to-preview"  # a writer's label that approves a fork's head commit


class MalformedDeliveryError(ValueError):
    """The payload lacks a field its event kind must have."""


def _field(data: Mapping[str, Any], *path: str) -> Any:
    value: Any = data
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            raise MalformedDeliveryError(f"the payload lacks {'.'.join(path)}")
        value = value[key]
    return value


def repository(payload: Mapping[str, Any]) -> str:
    """`owner/name` of the delivery's repository ("" when it names none)."""
    found = payload.get("repository")
    return str(found.get("full_name") or "") if isinstance(found, Mapping) else ""


def parse(kind: str, payload: Mapping[str, Any]) -> events.Event | None:
    """The event a delivery of `kind` (the X-GitHub-Event header) carries."""
    try:
        if kind == "push":
            return _push(payload)
        if kind == "pull_request":
            return _pull_request(payload)
    except MalformedDeliveryError:
        raise
    except UsageError as exc:  # a commit id that is not one
        raise MalformedDeliveryError(exc.message) from None
    except (TypeError, ValueError) as exc:
        raise MalformedDeliveryError(f"a field has the wrong type: {exc}") from None
    return None


def _push(payload: Mapping[str, Any]) -> events.Push | None:
    ref = str(_field(payload, "ref"))
    if not ref.startswith("refs/heads/") or ref == "refs/heads/":
        return None  # tags get no testing run
    branch = ref.removeprefix("refs/heads/")
    after = str(_field(payload, "after"))
    if payload.get("deleted"):
        return events.Push(branch, events.ZERO_SHA, None, deleted=True)
    return events.push(branch, after, payload.get("before"))


def _pull_request(
    payload: Mapping[str, Any],
) -> events.PullRequestChanged | events.PullRequestApproved | None:
    action = _field(payload, "action")
    approval = action == "labeled" and _label(payload) == APPROVAL_LABEL
    if action not in events.PR_ACTIONS and not approval:
        return None  # edited, other labels, review_requested ...: nothing to test
    pull = _field(payload, "pull_request")
    number = int(payload.get("number") or _field(payload, "pull_request", "number"))
    if approval:
        sender = payload.get("sender")
        who = str(sender.get("login") or "") if isinstance(sender, Mapping) else ""
        head = events.commit_id(_field(payload, "pull_request", "head", "sha"), "head")
        return events.PullRequestApproved(number, head, who or "github")
    return events.PullRequestChanged(
        action=action,
        number=number,
        head_branch=str(_field(payload, "pull_request", "head", "ref")),
        head_sha=events.commit_id(_field(payload, "pull_request", "head", "sha"), "head"),
        base_branch=str(_field(payload, "pull_request", "base", "ref")),
        base_sha=_base_sha(pull),
        merged=bool(pull.get("merged")),
        title=str(pull.get("title") or ""),
        fork=_from_fork(pull),
    )


def _label(payload: Mapping[str, Any]) -> str:
    label = payload.get("label")
    return str(label.get("name") or "") if isinstance(label, Mapping) else ""


def _from_fork(pull: Mapping[str, Any]) -> bool:
    """Whether the head lives in another repository than the base."""

    def repository_of(side: str) -> str:
        part = pull.get(side)
        repo = part.get("repo") if isinstance(part, Mapping) else None
        return str(repo.get("full_name") or "") if isinstance(repo, Mapping) else ""

    head, base = repository_of("head"), repository_of("base")
    # A deleted fork has no repository: treat it as a stranger too.
    return bool(base) and head.lower() != base.lower()


def _base_sha(pull: Mapping[str, Any]) -> str | None:
    base = pull.get("base")
    sha = base.get("sha") if isinstance(base, Mapping) else None
    return events.commit_id(sha, "base") if sha else None


def state_of(change: events.PullRequestChanged) -> str:
    """The pull request's state after this change: open, closed or merged."""
    if change.action != "closed":
        return "open"
    return "merged" if change.merged else "closed"
