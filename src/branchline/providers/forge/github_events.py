"""GitHub's webhook payloads turned into branchline's events, at the boundary.

Each payload is validated against its model (`payloads`) first: a malformed one
raises `MalformedDeliveryError` naming the fields that are wrong (the webhook
answers 400), so nothing half-checked is stored. Only what dispatch needs is read:
a push's ref and commits, a pull request's action, number, head and base, whether
it merged. Kinds and actions that start nothing give None.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from branchline import events
from branchline.providers.forge import APPROVAL_LABEL, payloads
from branchline.store import deliveries

HANDLED = ("push", "pull_request")

MalformedDeliveryError = payloads.MalformedPayloadError
Payload = payloads.PushPayload | payloads.PullRequestPayload


def validate(kind: str, payload: Mapping[str, Any]) -> Payload | payloads.PingPayload | None:
    """The typed payload of a delivery of `kind` (None for kinds not handled)."""
    model: type[Payload | payloads.PingPayload]
    if kind == "ping":
        model = payloads.PingPayload
    elif kind == "push":
        model = payloads.PushPayload
    elif kind == "pull_request":
        model = payloads.PullRequestPayload
    else:
        return None
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise payloads.malformed(kind, exc) from None


def repository(payload: Payload) -> str:
    """`owner/name` of the delivery's repository ("" when it names none)."""
    return payload.repository.full_name if payload.repository is not None else ""


def parse(kind: str, payload: Mapping[str, Any]) -> events.Event | None:
    """The event a delivery of `kind` (the X-GitHub-Event header) carries."""
    typed = validate(kind, payload)
    return None if typed is None or isinstance(typed, payloads.PingPayload) else event_of(typed)


def event_of(payload: Payload) -> events.Event | None:
    """The event a validated payload carries (None: it starts nothing)."""
    if isinstance(payload, payloads.PushPayload):
        return _push(payload)
    return _pull_request(payload)


def _push(payload: payloads.PushPayload) -> events.Push | None:
    branch = payload.branch
    if branch is None:
        return None  # tags get no testing run
    if payload.deleted:
        return events.Push(branch, events.ZERO_SHA, None, deleted=True)
    return events.push(branch, payload.after, payload.before)


def _pull_request(
    payload: payloads.PullRequestPayload,
) -> events.PullRequestChanged | events.PullRequestApproved | None:
    action = payload.action
    label = payload.label.name if payload.label is not None else ""
    approval = action == "labeled" and label == APPROVAL_LABEL
    pull = payload.pull_request
    if approval:
        who = payload.sender.login if payload.sender is not None else ""
        return events.PullRequestApproved(payload.number, pull.head.sha, who or "github")
    if action not in events.PR_ACTIONS:
        return None  # edited, other labels, review_requested ...: nothing to test
    return events.PullRequestChanged(
        action=action,
        number=payload.number,
        head_branch=pull.head.ref,
        head_sha=pull.head.sha,
        base_branch=pull.base.ref,
        base_sha=pull.base.sha,
        merged=bool(pull.merged),
        title=pull.title or "",
        fork=payload.from_fork,
    )


def state_of(change: events.PullRequestChanged) -> str:
    """The pull request's state after this change: open, closed or merged."""
    return deliveries.pr_state(change)
