"""The fake GitHub's rules without HTTP: one number sequence for issues and pulls,
labels' 404, the combined status, auto-inactive deployments and which may be deleted,
GitHub's Link header, the installation tokens' expiry and the document's patches."""

from __future__ import annotations

import json
import time

import pytest

from branchline.fakes.github.api import Call, paginate
from branchline.fakes.github.auth import Credentials
from branchline.fakes.github.records import Actor, ApiError
from branchline.fakes.github.spec import SPEC_PATH, patch
from branchline.fakes.github.world import GitHubWorld, snapshot

ME = Actor("octo")


def test_issues_and_pulls_share_numbers() -> None:
    world = GitHubWorld("octo/codex")
    first = world.create_issue(ME, "one", None, [])
    pull = world.add_pull(head="f", sha=None, base="main", base_sha=None, title="", author=ME)
    second = world.create_issue(ME, "two", None, ["bug"])
    assert (first.number, pull.number, second.number) == (1, 2, 3)
    with pytest.raises(ApiError) as taken:
        world.add_pull(head="g", sha=None, base="main", base_sha=None, title="", number=3,
                       author=ME)  # fmt: skip
    assert taken.value.status == 422
    assert len({first.id, pull.id, second.id, world.labels["bug"].id}) == 4


def test_a_label_not_on_the_issue_is_a_404() -> None:
    world = GitHubWorld()
    issue = world.create_issue(ME, "t", None, ["Preview"])
    assert [x.name for x in world.remove_label(issue.number, "preview")] == []
    with pytest.raises(ApiError) as missing:
        world.remove_label(issue.number, "preview")
    assert (missing.value.status, missing.value.message) == (404, "Label does not exist")


def test_combined_status_takes_each_contexts_latest() -> None:
    commits = GitHubWorld().commits
    sha = "a" * 40
    assert commits.combined_status(sha)[0] == "pending"  # none yet
    commits.add_status(ME, sha, {"state": "failure", "context": "ci"})
    commits.add_status(ME, sha, {"state": "success", "context": "ci"})
    assert commits.combined_status(sha)[0] == "success"
    commits.add_status(ME, sha, {"state": "error", "context": "lint"})
    state, _, latest = commits.combined_status(sha)
    assert (state, len(latest)) == ("failure", 2)


def test_a_success_makes_older_deployments_inactive_and_deletable() -> None:
    commits = GitHubWorld().commits
    body = {"ref": "main", "environment": "preview-1", "production_environment": False}
    old = commits.create_deployment(ME, body)
    commits.add_deployment_status(ME, old.id, {"state": "success"})
    with pytest.raises(ApiError) as active:
        commits.delete_deployment(old.id)
    assert active.value.status == 422
    production = commits.create_deployment(ME, {"ref": "main", "environment": "production"})
    commits.add_deployment_status(ME, production.id, {"state": "success"})
    new = commits.create_deployment(ME, body)
    commits.add_deployment_status(ME, new.id, {"state": "success", "auto_inactive": True})
    assert [s.state for s in old.statuses] == ["success", "inactive"]
    assert [s.state for s in production.statuses] == ["success"]  # another environment
    commits.delete_deployment(old.id)
    assert old.id not in commits.deployments


def test_paginate_writes_githubs_link_header() -> None:
    call = Call({}, {"per_page": "2", "page": "2"}, None, "http://f/x?per_page=2&page=2")
    page, headers = paginate(list(range(5)), call)
    assert page == [2, 3]
    assert headers["Link"] == (
        '<http://f/x?per_page=2&page=1>; rel="first", <http://f/x?per_page=2&page=1>; rel="prev", '
        '<http://f/x?per_page=2&page=3>; rel="next", <http://f/x?per_page=2&page=3>; rel="last"'
    )
    assert paginate([1], Call({}, {}, None, "http://f/x"))[1] == {}


def test_installation_tokens_expire() -> None:
    credentials = Credentials("ghp_x", login="octo", token_lifetime=0.2)
    token = credentials.issue_token(1)
    assert credentials.actor(f"token {token.token}").bot
    time.sleep(0.3)
    with pytest.raises(ApiError) as expired:
        credentials.actor(f"token {token.token}")
    assert (expired.value.status, expired.value.message) == (401, "Bad credentials")
    with pytest.raises(ApiError):
        credentials.issue_token(2)  # no such installation


def test_the_patches_touch_a_copy_of_the_document() -> None:
    original = SPEC_PATH.read_bytes()
    document = patch(json.loads(original))
    assert "401" in document["paths"]["/repos/{owner}/{repo}/issues"]["get"]["responses"]
    assert SPEC_PATH.read_bytes() == original


def test_the_state_is_plain_json() -> None:
    world = GitHubWorld()
    world.add_comment(ME, world.create_issue(ME, "t", None, ["x"]).number, "hi")
    assert json.loads(json.dumps(snapshot(world)))["comments"][0]["author"] == "octo"
