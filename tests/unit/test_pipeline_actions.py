"""The pipelines' decisions on in-memory providers: which events start which runs,
and what each preview, production and cleanup step does (and refuses), without a
cluster, a process or a state database."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest

from branchline import events
from branchline.engine.runner import JobOutcome
from branchline.environment import Environment
from branchline.errors import BranchlineError
from branchline.kit import Kit
from branchline.pipelines import cleanup, preview, production, testing
from branchline.pipelines.dispatch import plan
from branchline.pipelines.preview import PreviewClosedError, PreviewRefusedError
from tests.fakes import FakeStepContext, memory_kit

T = TypeVar("T")
SHA = "a" * 40
OTHER = "b" * 40
PREVIEW = Environment.preview(7)
PRODUCTION = Environment.production()


def run(work: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(work)


@pytest.fixture
def kit() -> Kit:
    return memory_kit()


def context(pr: int | None = 7, sha: str = SHA, **more: Any) -> FakeStepContext:
    report = json.dumps({"run_id": 3, "jobs": {"unit": "success"}})
    return FakeStepContext(pr=pr, sha=sha, artifacts={f"{testing.REPORT}@{sha}": report}, **more)


# -- dispatch: events to runs -----------------------------------------------------------


def test_a_push_is_tested_and_a_deleted_branch_is_not(kit: Kit) -> None:
    (planned,) = plan(events.push("feature/x", SHA, OTHER), kit)
    assert planned.workflow.name == testing.NAME
    assert (planned.sha, planned.base_sha, planned.ref) == (SHA, OTHER, "feature/x")
    assert planned.secret_scope == "test" and planned.pr is None
    assert plan(events.push("feature/x", events.ZERO_SHA, SHA), kit) == []


def test_pull_request_updates_are_tested_and_a_close_cleans_up(kit: Kit) -> None:
    for action in ("opened", "synchronize", "reopened"):
        change = events.PullRequestChanged(action, 7, "feature", SHA, "main", OTHER)
        (planned,) = plan(change, kit)
        assert planned.workflow.name == testing.NAME and planned.pr == 7
        assert planned.sha == SHA and planned.base_sha == OTHER
    for merged in (False, True):
        closed = events.PullRequestChanged("closed", 7, "feature", SHA, "main", merged=merged)
        (planned,) = plan(closed, kit)
        assert planned.workflow.name == cleanup.NAME and planned.pr == 7
        assert ("merged" if merged else "closed") in planned.triggered_by


def test_a_passed_testing_run_makes_a_preview_only_for_the_open_pr_at_that_commit(
    kit: Kit,
) -> None:
    passed = events.WorkflowFinished(5, testing.NAME, "success", SHA, "feature", 7)
    pull = kit.forge.open(7, SHA)  # type: ignore[attr-defined]
    (planned,) = plan(passed, kit, pull, approved=True)
    assert planned.workflow.name == preview.NAME
    assert planned.secret_scope == "preview-7" and planned.ref == "feature"
    assert plan(passed, kit, pull, approved=False) == []  # a fork's, not approved
    kit.forge.set_state(7, "open", head_sha=OTHER)  # type: ignore[attr-defined]
    moved = run(kit.forge.pull_request(7))
    assert plan(passed, kit, moved, approved=True) == []  # moved on
    kit.forge.set_state(7, "closed", head_sha=SHA)  # type: ignore[attr-defined]
    assert plan(passed, kit, run(kit.forge.pull_request(7)), approved=True) == []
    assert plan(passed, kit, None, approved=True) == []
    failed = events.WorkflowFinished(5, testing.NAME, "failure", SHA, "feature", 7)
    assert plan(failed, kit, pull, approved=True) == []


def test_a_forks_code_is_tested_without_secrets_and_previewed_once_approved(kit: Kit) -> None:
    fork = kit.forge.open(7, SHA, fork=True)  # type: ignore[attr-defined]
    opened = events.PullRequestChanged("opened", 7, "feature", SHA, "main", fork=True)
    (tested,) = plan(opened, kit, fork)
    assert tested.workflow.name == testing.NAME and tested.secret_scope is None
    assert "from a fork" in tested.triggered_by
    # The testing run passes: no preview yet, unless approved at that very commit.
    assert run(kit.may_preview(fork, SHA)) is False
    passed = events.WorkflowFinished(5, testing.NAME, "success", SHA, "feature", 7)
    assert plan(passed, kit, fork, approved=False) == []
    approval = events.PullRequestApproved(7, SHA, "a writer")
    assert plan(approval, kit, fork, approved=True, tested=False) == []  # tests not done
    (previewed,) = plan(approval, kit, fork, approved=True, tested=True)
    assert previewed.workflow.name == preview.NAME and previewed.secret_scope == "preview-7"
    run(kit.approvals.approve(7, SHA, "a writer"))
    assert run(kit.may_preview(fork, SHA)) is True
    assert run(kit.may_preview(fork, OTHER)) is False  # a new commit needs a new approval
    stale = events.PullRequestApproved(7, OTHER, "a writer")
    assert plan(stale, kit, fork, approved=True, tested=True) == []


def test_the_preview_itself_refuses_an_unapproved_fork(kit: Kit) -> None:
    kit.forge.open(7, SHA, fork=True)  # type: ignore[attr-defined]
    with pytest.raises(PreviewRefusedError, match="comes from a fork") as refused:
        run(preview.check_open(kit, context()))
    assert "pr approve 7" in refused.value.hint
    run(kit.approvals.approve(7, SHA, "a writer"))
    run(preview.check_open(kit, context()))


@pytest.mark.parametrize("policy", ["no-secrets", "trusted"])
def test_the_fork_policy_can_refuse_every_preview_or_trust_forks(kit: Kit, policy: str) -> None:
    forge = kit.config.forge.model_copy(update={"untrusted": policy})
    kit.config = kit.config.model_copy(update={"forge": forge})
    fork = kit.forge.open(7, SHA, fork=True)  # type: ignore[attr-defined]
    run(kit.approvals.approve(7, SHA, "a writer"))
    assert run(kit.may_preview(fork, SHA)) is (policy == "trusted")
    opened = events.PullRequestChanged("opened", 7, "feature", SHA, "main", fork=True)
    (tested,) = plan(opened, kit, fork)
    assert tested.secret_scope == ("test" if policy == "trusted" else None)


def test_a_passed_testing_run_on_the_production_branch_rolls_out(kit: Kit) -> None:
    main = kit.config.project.production_branch
    (planned,) = plan(events.WorkflowFinished(5, testing.NAME, "success", SHA, main), kit)
    assert planned.workflow.name == production.NAME and planned.secret_scope == "production"
    assert plan(events.WorkflowFinished(5, testing.NAME, "success", SHA, "feature"), kit) == []
    assert plan(events.WorkflowFinished(5, preview.NAME, "success", SHA, main), kit) == []


def test_an_expired_preview_is_cleaned_up(kit: Kit) -> None:
    (planned,) = plan(events.PreviewExpired(7, datetime.now(UTC)), kit)
    assert planned.workflow.name == cleanup.NAME and planned.pr == 7


# -- the preview ------------------------------------------------------------------------


def test_the_preview_refuses_without_tests_or_an_open_pull_request(kit: Kit) -> None:
    with pytest.raises(BranchlineError, match="testing-report"):
        run(preview.require_tested(kit, FakeStepContext(pr=7, sha=SHA)))
    with pytest.raises(PreviewClosedError, match="no longer open"):
        run(preview.check_open(kit, context()))
    kit.forge.open(7, OTHER)  # type: ignore[attr-defined]
    with pytest.raises(PreviewClosedError, match="moved on"):
        run(preview.check_open(kit, context()))


def test_a_full_house_refuses_the_preview_with_a_comment(kit: Kit) -> None:
    limit = kit.config.preview.max_live
    for pr in range(100, 100 + limit):
        run(kit.previews.reserve(pr, sha=SHA, max_live=limit, ttl_seconds=60))
    with pytest.raises(PreviewRefusedError) as refused:
        run(preview.reserve(kit, context()))
    assert refused.value.code == "refused"
    assert "preview places are taken" in kit.forge.comments[(7, preview.COMMENT_KEY)]  # type: ignore[attr-defined]
    assert run(kit.previews.get(7)) is None


def test_a_preview_is_made_from_production_and_told_in_one_comment(kit: Kit) -> None:
    ctx = context()
    kit.forge.open(7, SHA)  # type: ignore[attr-defined]
    for step in (preview.reserve, preview.ensure_secrets, preview.ensure_branch,
                 preview.ensure_dns, preview.deploy, preview.finish):  # fmt: skip
        run(step(kit, ctx))
    assert run(kit.database.get_branch("pr-7")) is not None
    hosts = {r.name for r in run(kit.dns.list_records(PREVIEW))}
    assert hosts == {f"{s}-preview-7.codex.localhost" for s in ("api", "auth", "web")}
    live = [d for d in run(kit.compute.list_deployments(PREVIEW)) if d.status == "live"]
    assert sorted(d.service for d in live) == ["api", "auth", "web"]
    comment = kit.forge.comments[(7, preview.COMMENT_KEY)]  # type: ignore[attr-defined]
    assert "Preview of #7 is live" in comment and "`api-preview-7`" in comment
    assert "http://web-preview-7.codex.localhost:8080/" in comment
    row = run(kit.previews.get(7))
    assert row is not None and row.status == "live" and row.detail["sha"] == SHA
    # Every service was given the same environment: pr-7's database, the preview's
    # own generated secret, each sibling's URL through the edge.
    given = [start.env for start in kit.compute.starts]  # type: ignore[attr-defined]
    assert all(env == given[0] for env in given)
    assert "/pr-7" in given[0].vars["DATABASE_URL"]
    assert given[0].vars["AUTH_HOST"] == "auth-preview-7.codex.localhost"
    assert given[0].vars["AUTH_URL"] == "http://127.0.0.1:8080"
    assert set(given[0].secrets) == {"AUTH_SECRET"}


def test_dns_that_does_not_resolve_fails_the_preview_clearly(kit: Kit) -> None:
    kit.dns.unresolvable.add("api-preview-7.codex.localhost")  # type: ignore[attr-defined]
    with pytest.raises(BranchlineError, match="did not resolve"):
        run(preview.ensure_dns(kit, context()))


def test_one_unhealthy_service_fails_the_preview_deploy(kit: Kit) -> None:
    run(kit.database.create_branch("pr-7"))
    kit.compute.unhealthy.add("auth")  # type: ignore[attr-defined]
    ctx = context()
    with pytest.raises(BranchlineError, match="auth"):
        run(preview.deploy(kit, ctx))
    assert any("auth" in line and "failed" in line for line in ctx.lines)


def test_a_pull_request_closed_during_its_preview_leaves_nothing(kit: Kit) -> None:
    kit.forge.open(7, SHA)  # type: ignore[attr-defined]
    ctx = context()
    for step in (preview.reserve, preview.ensure_secrets, preview.ensure_branch,
                 preview.ensure_dns, preview.deploy):  # fmt: skip
        run(step(kit, ctx))
    kit.forge.set_state(7, "closed")  # type: ignore[attr-defined]
    with pytest.raises(PreviewClosedError, match="closed during its preview"):
        run(preview.finish(kit, ctx))
    assert run(kit.database.get_branch("pr-7")) is None
    assert run(kit.dns.list_records(PREVIEW)) == []
    assert not [d for d in run(kit.compute.list_deployments(PREVIEW)) if d.status == "live"]
    assert run(kit.secrets.list("preview-7")) == []
    row = run(kit.previews.get(7))
    assert row is not None and row.status == "deleted"


@pytest.mark.parametrize(
    ("code", "commented"), [(None, True), ("refused", False), ("interrupted", False)]
)
def test_a_failed_preview_is_commented_unless_refused_or_interrupted(
    kit: Kit, code: str | None, commented: bool
) -> None:
    kit.forge.open(7, SHA)  # type: ignore[attr-defined]
    run(kit.previews.reserve(7, sha=SHA, max_live=5, ttl_seconds=60))
    ctx = context(job_outcomes=[JobOutcome("preview", "failure", "it broke", code)])
    run(preview.failed(kit, ctx))
    comment = kit.forge.comments.get((7, preview.COMMENT_KEY), "")  # type: ignore[attr-defined]
    assert ("Preview failed" in comment) is commented
    row = run(kit.previews.get(7))
    assert row is not None and row.status == ("failed" if commented else "creating")


# -- cleanup -----------------------------------------------------------------------------


def test_cleanup_removes_everything_and_is_idempotent(kit: Kit) -> None:
    kit.forge.open(7, SHA)  # type: ignore[attr-defined]
    ctx = context(workflow=cleanup.NAME)
    for step in (preview.reserve, preview.ensure_secrets, preview.ensure_branch,
                 preview.ensure_dns, preview.deploy, preview.finish):  # fmt: skip
        run(step(kit, context()))
    run(kit.database.create_branch("pr-7-e2e"))
    run(cleanup.run(kit, ctx, reason="merged"))
    names = {b.name for b in run(kit.database.list_branches())}
    assert names == {"production"}
    assert run(kit.dns.list_records()) == []
    assert "removed (merged)" in kit.forge.comments[(7, preview.COMMENT_KEY)]  # type: ignore[attr-defined]
    again = run(cleanup.teardown(kit, 7, ctx))
    assert not any(again.values())


# -- production ---------------------------------------------------------------------------


def _set_production_secrets(kit: Kit) -> None:
    for name in kit.config.secrets.production.names:
        run(kit.secrets.set("production", name, f"production-{name}-0123456789"))


def test_a_rollout_needs_its_production_secrets(kit: Kit) -> None:
    with pytest.raises(BranchlineError, match="production secrets are not set"):
        run(production.build(kit, context(pr=None, workflow=production.NAME)))


def test_a_rollout_deploys_in_order_and_finishes(kit: Kit) -> None:
    _set_production_secrets(kit)
    ctx = context(pr=None, workflow=production.NAME)
    for step in (production.start, production.dns, production.build, production.restore_point,
                 production.deploy, production.finish):  # fmt: skip
        run(step(kit, ctx))
    order = [s.service for s in kit.compute.starts]  # type: ignore[attr-defined]
    assert order == [s.name for s in kit.config.services_in_deploy_order()]
    rollout = run(kit.rollouts.get(1))
    assert rollout is not None and rollout.status == "success"
    assert rollout.detail["switched"] == order and rollout.detail["restore_point"]
    assert kit.forge.statuses[(SHA, production.STATUS_CONTEXT)][0] == "success"  # type: ignore[attr-defined]


def test_an_unhealthy_service_rolls_back_what_was_switched_and_opens_an_issue(kit: Kit) -> None:
    _set_production_secrets(kit)
    first = context(pr=None, sha=OTHER, workflow=production.NAME, run_id=1)
    for step in (production.start, production.deploy, production.finish):
        run(step(kit, first))
    ctx = context(pr=None, workflow=production.NAME, run_id=2)
    run(production.start(kit, ctx))
    kit.compute.unhealthy.add("auth")  # type: ignore[attr-defined]
    with pytest.raises(BranchlineError, match="auth failed its health check; rolled back api"):
        run(production.deploy(kit, ctx))
    live = {d.service: d.release.commit for d in run(kit.compute.list_deployments(PRODUCTION))
            if d.status == "live"}  # fmt: skip
    assert live == {"api": OTHER, "auth": OTHER, "web": OTHER}, "the previous release serves"
    ((title, body, labels),) = kit.forge.issues  # type: ignore[attr-defined]
    assert "auth unhealthy" in title and labels == ["incident", "production"]
    assert "api -> `api@bbbbbbbbbbbb.1`" in body and "HTTP 503" in body
    rollout = run(kit.rollouts.get(2))
    assert rollout is not None and rollout.status == "rolled_back"
    assert rollout.detail["failed_service"] == "auth" and rollout.detail["issue"] == 1
    run(production.failed(kit, ctx))  # the failure job: the outcome stays rolled_back
    rollout = run(kit.rollouts.get(2))
    assert rollout is not None and rollout.status == "rolled_back"
    assert kit.forge.statuses[(SHA, production.STATUS_CONTEXT)][0] == "failure"  # type: ignore[attr-defined]
