"""The ForgeProvider contract, for the in-memory fake and the local code host (pull
requests of a git repository, posts kept in the store): one sticky comment per pull
request and key, issues numbered upwards, commit statuses of known states only, and
pull requests as they are."""

from __future__ import annotations

import pytest

from branchline.errors import UsageError
from branchline.providers.forge import STATUS_STATES, ForgeProvider
from tests.contract.conftest import ForgeContract, fresh


def test_the_provider_satisfies_the_protocol(forge: ForgeContract) -> None:
    assert isinstance(forge.provider, ForgeProvider)


def test_one_sticky_comment_per_pull_request_and_key(forge: ForgeContract) -> None:
    provider, run = forge.provider, forge.run
    pr = forge.open_pr(fresh("sticky-")).number
    other = forge.open_pr(fresh("sticky-")).number
    run(provider.upsert_comment(pr, "preview", "building"))
    run(provider.upsert_comment(pr, "tests", "running"))
    run(provider.upsert_comment(other, "preview", "another pull request"))
    assert forge.comments(pr) == [("preview", "building"), ("tests", "running")]
    run(provider.upsert_comment(pr, "preview", "ready at http://x/"))
    run(provider.upsert_comment(pr, "preview", "ready at http://y/"))
    assert forge.comments(pr) == [("preview", "ready at http://y/"), ("tests", "running")]
    assert forge.comments(other) == [("preview", "another pull request")]


def test_issues_are_numbered_upwards(forge: ForgeContract) -> None:
    provider, run = forge.provider, forge.run
    first = run(provider.create_issue("Preview failed", "details", ["branchline"]))
    second = run(provider.create_issue("Preview failed again", "details", []))
    third = run(provider.create_issue("Rollout stuck", "details", ["branchline", "urgent"]))
    assert 0 < first < second < third


def test_an_issue_closes_once_with_its_comment(forge: ForgeContract) -> None:
    provider, run = forge.provider, forge.run
    number = run(provider.create_issue("Rollout failed", "details", ["incident"]))
    other = run(provider.create_issue("Rollout failed again", "details", ["incident"]))
    assert forge.issue_state(number) == "open"
    run(provider.close_issue(number, "Production is healthy again."))
    run(provider.close_issue(number, "Said twice: nothing more happens."))
    assert (forge.issue_state(number), forge.issue_state(other)) == ("closed", "open")


def test_commit_statuses_of_known_states_only(forge: ForgeContract) -> None:
    provider, run = forge.provider, forge.run
    sha = forge.open_pr(fresh("status-")).head_sha
    for state in ["bogus", "SUCCESS", "", "ok"]:
        with pytest.raises(UsageError):
            run(provider.set_status(sha, "branchline/preview", state))
    assert forge.status(sha, "branchline/preview") is None
    for state in STATUS_STATES:
        run(provider.set_status(sha, "branchline/preview", state, "http://x/", "described"))
        assert forge.status(sha, "branchline/preview") == state
    run(provider.set_status(sha, "branchline/tests", "pending"))
    assert forge.status(sha, "branchline/preview") == STATUS_STATES[-1]
    assert forge.status(sha, "branchline/tests") == "pending"


def test_pull_requests_as_the_code_host_has_them(forge: ForgeContract) -> None:
    provider, run = forge.provider, forge.run
    assert run(provider.pull_request(4242)) is None
    branch = fresh("feature-")
    opened = forge.open_pr(branch)
    found = run(provider.pull_request(opened.number))
    assert found is not None and found.is_open and found.state == "open"
    assert (found.number, found.head_branch, found.base_branch, found.head_sha) == (
        opened.number, branch, "main", opened.head_sha,
    )  # fmt: skip
    assert len(found.head_sha) == 40
    later = forge.open_pr(fresh("feature-"))
    assert later.number > opened.number
    listed = run(provider.pull_requests())
    assert [(p.number, p.head_branch, p.state) for p in listed] == [
        (later.number, later.head_branch, "open"), (opened.number, branch, "open"),
    ]  # fmt: skip
    assert run(provider.pull_request(later.number + 1)) is None
