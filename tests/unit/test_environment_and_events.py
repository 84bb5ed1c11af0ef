"""Environments parsed once, secret targets, and typed events: made by the local
forge, parsed from real GitHub deliveries, stored and read back."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from branchline import events, naming
from branchline.environment import (
    Environment,
    secret_layers,
    secret_scope,
    secret_target,
)
from branchline.errors import UsageError
from branchline.providers.forge import github_events

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "github-webhooks"
SHA = "1" * 40


# -- Environment --------------------------------------------------------------------------


def test_the_three_kinds_and_what_they_bind() -> None:
    production, local, preview = (
        Environment.parse(t) for t in ("production", "local", "preview-8")
    )
    assert (production.kind, local.kind, preview.kind, preview.pr) == (
        "production",
        "local",
        "preview",
        8,
    )
    assert str(preview) == preview.name == "preview-8"
    assert preview == Environment.preview(8) and preview != Environment.preview(9)
    assert production.branch("main-db") == "main-db" and preview.branch("x") == "pr-8"
    assert local.branch("x") is None
    assert preview.secret_layers == ("preview", "preview-8")
    assert production.secret_layers == ("production",) and local.secret_layers == ()
    assert (preview.secret_scope, production.secret_scope, local.secret_scope) == (
        "preview",
        "production",
        None,
    )
    assert preview.worker_name("api") == "api-preview-8"
    assert preview.host_name("api", "codex.localhost") == "api-preview-8.codex.localhost"
    assert production.host_name("api", "codex.localhost") == "api.codex.localhost"


@pytest.mark.parametrize(
    "text",
    ["", "staging", "Production", "preview-0", "preview-08", "preview-", "preview-8 ",
     "preview--8", "pr-8", f"preview-{naming.MAX_PR + 1}", "preview-99999999999"],
)  # fmt: skip
def test_anything_else_is_a_usage_error_that_says_what_is_accepted(text: str) -> None:
    with pytest.raises(UsageError) as refused:
        Environment.parse(text)
    assert "preview-<pr>" in refused.value.hint


@given(st.integers(1, naming.MAX_PR))
def test_previews_round_trip(pr: int) -> None:
    assert Environment.parse(Environment.preview(pr).name) == Environment.preview(pr)


def test_a_preview_needs_a_valid_pull_request() -> None:
    for bad in (0, -1, True, None):
        with pytest.raises(UsageError, match="pull request number"):
            Environment("preview", bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="only a preview"):
        Environment("production", 3)


def test_secret_targets_are_scopes_and_previews() -> None:
    for target in ("production", "preview", "test", "preview-8"):
        assert secret_target(target) == target
    assert secret_target("local", reading=True) == "local"
    for bad in ("local", "staging", "preview-0", "PREVIEW"):
        with pytest.raises(UsageError, match="not an environment secrets belong to"):
            secret_target(bad)
    assert secret_scope("preview-8") == "preview" and secret_scope("test") == "test"
    assert secret_layers("preview-8") == ("preview", "preview-8")
    assert secret_layers("preview") == ("preview",)


# -- typed events ---------------------------------------------------------------------------


ALL = [
    events.push("main", SHA, "2" * 40),
    events.Push("gone", events.ZERO_SHA, None, deleted=True),
    events.PullRequestChanged("opened", 8, "feature/x", SHA, "main", "2" * 40, title="Hi"),
    events.PullRequestChanged("closed", 8, "feature/x", SHA, "main", merged=True),
    events.WorkflowFinished(5, "testing", "success", SHA, "feature/x", 8),
    events.PreviewExpired(8, datetime(2026, 12, 1, 10, 0, tzinfo=UTC)),
]


@pytest.mark.parametrize("event", ALL, ids=lambda e: type(e).__name__)
def test_events_survive_the_store(event: events.Event) -> None:
    stored = json.loads(json.dumps(event.to_payload()))
    assert events.from_stored(event.kind, event.action, stored) == event


def test_commit_ids_are_checked_when_an_event_is_made() -> None:
    with pytest.raises(UsageError, match="not a commit id"):
        events.push("main", "--upload-pack=evil")
    assert events.from_stored("ping", None, {"v": 1}) is None


def test_rows_stored_before_events_were_typed_are_still_read() -> None:
    legacy_push = {"ref": "refs/heads/main", "before": "0" * 40, "after": SHA}
    assert events.from_stored("push", None, legacy_push) == events.Push("main", SHA)
    legacy_pr = {"action": "synchronize", "number": 3, "pull_request": {
        "number": 3, "merged": False, "head": {"ref": "f", "sha": SHA},
        "base": {"ref": "main", "sha": None}}}  # fmt: skip
    parsed = events.from_stored("pull_request", "synchronize", legacy_pr)
    assert parsed == events.PullRequestChanged("synchronize", 3, "f", SHA, "main")
    run = {"run_id": 4, "workflow": "testing", "conclusion": "success", "sha": SHA,
           "ref": "main", "pr": None}  # fmt: skip
    assert events.from_stored("workflow_run", "completed", run) == events.WorkflowFinished(
        4, "testing", "success", SHA, "main"
    )


# -- GitHub's deliveries --------------------------------------------------------------------


def _delivery(name: str) -> tuple[str, dict[str, object]]:
    path = next(FIXTURES.rglob(name))
    data = json.loads(path.read_text())
    if "body_raw_base64" in data:  # a captured delivery: its headers and raw body
        headers = {k.lower(): v for k, v in data["headers"].items()}
        body = json.loads(base64.b64decode(data["body_raw_base64"]))
        return str(headers["x-github-event"]), body
    return name.split(".")[0], data


@pytest.mark.parametrize(
    ("fixture", "action", "merged"),
    [("pull_request.opened.delivery.json", "opened", False),
     ("pull_request.synchronize.delivery.json", "synchronize", False),
     ("pull_request.closed.merged.delivery.json", "closed", True)],
)  # fmt: skip
def test_real_pull_request_deliveries_become_events(
    fixture: str, action: str, merged: bool
) -> None:
    kind, payload = _delivery(fixture)
    event = github_events.parse(kind, payload)
    assert isinstance(event, events.PullRequestChanged)
    pull = payload["pull_request"]
    assert isinstance(pull, dict)
    assert (event.action, event.number, event.merged) == (action, payload["number"], merged)
    assert event.head_sha == pull["head"]["sha"] and event.head_branch == pull["head"]["ref"]
    assert github_events.state_of(event) == ("merged" if merged else "open")


def test_a_real_push_becomes_an_event() -> None:
    kind, payload = _delivery("push.new-branch-master.payload.json")
    event = github_events.parse(kind, payload)
    assert isinstance(event, events.Push)
    assert event.after == payload["after"] and event.branch == "master"
    assert event.before is None  # a new branch: nothing before it


def test_deliveries_that_start_nothing_and_malformed_ones() -> None:
    assert github_events.parse("push", {"ref": "refs/tags/v1", "after": SHA}) is None
    assert github_events.parse("issues", {"action": "opened"}) is None
    for broken in ({"action": "opened"}, {"action": "opened", "pull_request": {"head": {}}},
                   {"action": "labeled"},  # every action's body has its pull request
                   {"action": "opened", "number": 2, "pull_request": {
                       "head": {"ref": "f", "sha": "not-a-sha"}, "base": {"ref": "main"}}},
                   {"ref": "refs/heads/main"}):  # fmt: skip
        kind = "push" if "ref" in broken else "pull_request"
        with pytest.raises(github_events.MalformedDeliveryError):
            github_events.parse(kind, broken)
