"""The use cases on in-memory providers: every path that starts a service gives it
the same variables and secrets; branches in use are guarded; one read model of
environments."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest

from branchline.environment import Environment
from branchline.errors import UsageError
from branchline.kit import Kit
from branchline.operations import branches, deploy
from branchline.operations.environments import list_environments
from branchline.operations.restore import restore_production
from branchline.pipelines import preview
from tests.fakes import FakeStepContext, memory_kit

T = TypeVar("T")
SHA = "c" * 40
PRODUCTION = Environment.production()
PREVIEW = Environment.preview(8)


def run(work: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(work)


@pytest.fixture
def kit() -> Kit:
    kit = memory_kit()
    for name in kit.config.secrets.production.names:
        run(kit.secrets.set("production", name, f"production-{name}-0123456789"))
    return kit


def given(kit: Kit, how: str, environment: Environment) -> list[Any]:
    """The DeploymentEnv of every start of `how` in `environment`."""
    starts = kit.compute.starts  # type: ignore[attr-defined]
    return [s.env for s in starts if s.how == how and s.environment == environment]


def test_every_path_gives_a_service_the_same_variables_and_secrets(kit: Kit) -> None:
    """deploy, restart, rollback, restore and the preview pipeline: one DeploymentEnv.
    (Before, `deploy` gave none of the secrets and rollback used a stored copy.)"""
    # Production: deploy twice (so there is something to roll back to), restart,
    # roll back, then restore (which redeploys on the restored branch).
    run(deploy.deploy(kit, "api", PRODUCTION, "a" * 40))
    run(deploy.deploy(kit, "api", PRODUCTION, "b" * 40))
    run(deploy.restart(kit, "api", PRODUCTION))
    run(deploy.rollback(kit, "api", PRODUCTION))
    deployed = given(kit, "deploy", PRODUCTION)
    everything = deployed + given(kit, "rollback", PRODUCTION)
    assert len(everything) == 4 and all(env == deployed[0] for env in everything)
    production = deployed[0]
    assert "/production" in production.vars["DATABASE_URL"]
    assert production.vars["API_HOST"] == "api.codex.localhost"
    assert production.secrets == {
        name: f"production-{name}-0123456789" for name in kit.config.secrets.production.names
    }
    # A supervisor's restart asks the same source.
    kit.compute.starts.clear()  # type: ignore[attr-defined]
    run(kit.compute.restart_all(PRODUCTION))  # type: ignore[attr-defined]
    assert given(kit, "restart", PRODUCTION) == [production]
    # Restore: the same, but on the restored branch.
    kit.database.write("production", "k", "v")  # type: ignore[attr-defined]
    restored = run(restore_production(kit, datetime.now(UTC)))
    after = given(kit, "deploy", PRODUCTION)[-1]
    assert f"/{restored.branch}" in after.vars["DATABASE_URL"]
    assert {**after.vars, "DATABASE_URL": ""} == {**production.vars, "DATABASE_URL": ""}
    assert after.secrets == production.secrets
    # A preview: the pipeline's deploy, then the CLI's deploy and restart of one service.
    kit.forge.open(8, SHA)  # type: ignore[attr-defined]
    ctx = FakeStepContext(pr=8, sha=SHA)
    for step in (preview.ensure_secrets, preview.ensure_branch, preview.deploy):
        run(step(kit, ctx))
    run(deploy.deploy(kit, "web", PREVIEW, "d" * 40))
    run(deploy.restart(kit, "web", PREVIEW))
    run(deploy.rollback(kit, "web", PREVIEW))
    previews = given(kit, "deploy", PREVIEW) + given(kit, "rollback", PREVIEW)
    assert len(previews) == 6 and all(env == previews[0] for env in previews)
    assert "/pr-8" in previews[0].vars["DATABASE_URL"]
    assert set(previews[0].secrets) >= {"AUTH_SECRET"}
    assert previews[0].secrets["AUTH_SECRET"] != production.secrets["AUTH_SECRET"]


def test_a_secret_set_after_deploy_reaches_a_restart(kit: Kit) -> None:
    run(deploy.deploy(kit, "api", PRODUCTION))
    run(kit.secrets.set("production", "AUTH_SECRET", "a-new-value-for-auth"))
    run(deploy.restart(kit, "api", PRODUCTION))
    assert given(kit, "deploy", PRODUCTION)[-1].secrets["AUTH_SECRET"] == "a-new-value-for-auth"


def test_restart_and_rollback_of_nothing_are_explained(kit: Kit) -> None:
    with pytest.raises(UsageError, match="no live deployment"):
        run(deploy.restart(kit, "api", PREVIEW))
    with pytest.raises(UsageError, match="nothing is deployed in preview-8"):
        run(deploy.rollback_all(kit, PREVIEW))
    with pytest.raises(UsageError, match="no service 'nope'"):
        run(deploy.deploy(kit, "nope", PREVIEW))


def test_rollback_all_goes_newest_first(kit: Kit) -> None:
    for commit in ("a" * 40, "b" * 40):
        for service in ("api", "auth", "web"):
            run(deploy.deploy(kit, service, PRODUCTION, commit))
    back = run(deploy.rollback_all(kit, PRODUCTION))
    assert [d.service for d in back] == ["web", "auth", "api"]
    assert {d.release.commit for d in back} == {"a" * 40}


def test_branches_in_use_are_not_pulled_from_under_their_services(kit: Kit) -> None:
    with pytest.raises(UsageError, match="production's services use it"):
        run(branches.delete(kit, "production"))
    with pytest.raises(UsageError, match="production's services use it"):
        run(branches.reset(kit, "production"))
    run(branches.create(kit, "pr-8"))
    run(branches.create(kit, "pr-8-e2e"))
    run(kit.previews.set_status(8, "live"))
    for name in ("pr-8", "pr-8-e2e"):
        with pytest.raises(UsageError, match="preview-8's services use it") as refused:
            run(branches.delete(kit, name))
        assert "pr close 8" in refused.value.hint
    assert run(branches.reset(kit, "pr-8")).name == "pr-8"  # a reset keeps the services'
    run(kit.previews.set_status(8, "deleted"))
    assert run(branches.delete(kit, "pr-8")) is True
    assert run(branches.delete(kit, "pr-8")) is False
    # After a restore, production's branch is the restored one: that is the guarded one.
    run(kit.rollouts.set_branch("production", "pr-8-e2e"))
    with pytest.raises(UsageError, match="production's services use it"):
        run(branches.delete(kit, "pr-8-e2e"))
    assert run(branches.delete(kit, "pr-8-e2e", force=True)) is True


def test_branch_names_are_checked_before_anything_is_made(kit: Kit) -> None:
    for name in ("Prod'uction", "$(id)", "x" * 64, ""):
        with pytest.raises(UsageError, match="not a database branch name"):
            run(branches.create(kit, name))
    assert [b.name for b in run(kit.database.list_branches())] == ["production"]


def test_one_read_model_of_environments(kit: Kit) -> None:
    run(deploy.deploy(kit, "api", PRODUCTION))
    run(kit.database.create_branch("pr-8"))
    run(kit.previews.reserve(8, sha=SHA, max_live=5, ttl_seconds=3600))
    run(deploy.deploy(kit, "web", PREVIEW))
    run(kit.previews.reserve(9, sha=SHA, max_live=5, ttl_seconds=3600))
    run(kit.previews.set_status(9, "deleted"))
    production, preview_8 = run(list_environments(kit))
    assert production.name == "production" and production.status == "live"
    assert production.branch == "production"
    assert [s.service for s in production.services] == ["api"]
    assert production.services[0].url == "http://api.codex.localhost/"
    assert preview_8.name == "preview-8" and preview_8.status == "creating"
    assert preview_8.branch == "pr-8" and preview_8.environment.pr == 8
    assert preview_8.expires_at is not None
    assert preview_8.expires_at > datetime.now(UTC) + timedelta(minutes=50)
    assert [s.service for s in preview_8.services] == ["web"]
    data = preview_8.as_dict()
    assert data["kind"] == "preview" and data["services"][0]["service"] == "web"


def test_running_environments_are_those_with_a_live_service(kit: Kit) -> None:
    """`secret set` warns of a restart only where a service runs (a platform's
    deployment, with no local process, counts as running)."""
    assert run(deploy.running_environments(kit, ["production", "preview", "test"])) == []
    run(deploy.deploy(kit, "api", PRODUCTION, SHA))
    run(deploy.deploy(kit, "api", PREVIEW, SHA))
    assert run(deploy.running_environments(kit, ["production"])) == [PRODUCTION]
    assert run(deploy.running_environments(kit, ["preview"])) == [PREVIEW]
    assert run(deploy.running_environments(kit, ["preview-9", "test"])) == []
