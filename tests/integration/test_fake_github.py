"""The fake GitHub REST API, driven through githubkit: every request githubkit makes and
every answer the fake gives is held to GitHub's OpenAPI document (none may be invalid),
with GitHub's semantics (one number sequence for issues and pulls, auto-inactive
deployments, labels' 404), App JWTs and expiring installation tokens, rate-limit
faults as GitHub sends them, and a stop that leaves nothing running."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from githubkit import AppAuthStrategy, AppInstallationAuthStrategy, GitHub, TokenAuthStrategy
from githubkit.cache import MemCacheStrategy
from githubkit.exception import (
    PrimaryRateLimitExceeded,
    RequestFailed,
    SecondaryRateLimitExceeded,
)
from githubkit.utils import UNSET

from branchline.fakes.github import FakeGitHub
from branchline.fakes.github.app import build_app
from branchline.fakes.github.spec import SPEC_PATH
from tests.conftest import REPO, leftover_processes, new_state_dir, remove_state_dir

pytestmark = pytest.mark.integration

T = TypeVar("T")
TOKEN = "ghp_fake_github_test_token_0123456789"
OWNER, NAME = "octo", "codex"
APP_ID = 4242
SHARED_SPEC = REPO.parent / "shared" / "realworld" / "github-rest" / "api.github.com.subset.json"
# GitHub's document as shared (a subset of @octokit/openapi 23.0.2's): byte for byte.
SPEC_SHA256 = "4d7a598d2499de1145d5c50ed07612d112de63b0b1a946115e63f4aad812bc74"
# The one request the tests send against the document on purpose (its path says so).
DELIBERATE = "deliberately-invalid"


def run(work: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(work)


@pytest.fixture(scope="module")
def app_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@pytest.fixture(scope="module")
def fake(cluster_root: Path, app_key: str) -> Iterator[FakeGitHub]:
    state = new_state_dir(cluster_root)
    github = FakeGitHub.start(
        state, repository=f"{OWNER}/{NAME}", token=TOKEN, app_id=APP_ID,
        app_private_key_pem=app_key, installation_id=7,
    )  # fmt: skip
    try:
        yield github
        # githubkit's requests and the fake's answers: all as GitHub's document says.
        invalid = [x for x in github.calls()["invalid"] if DELIBERATE not in x["path"]]
        assert invalid == []
    finally:
        github.stop()
        remove_state_dir(state)


def client(fake: FakeGitHub, token: str = TOKEN, *, retry: bool = False) -> GitHub[Any]:
    return GitHub(TokenAuthStrategy(token), base_url=fake.url, auto_retry=retry)


def test_the_document_is_githubs_byte_for_byte() -> None:
    assert hashlib.sha256(SPEC_PATH.read_bytes()).hexdigest() == SPEC_SHA256
    if SHARED_SPEC.exists():
        assert SPEC_PATH.read_bytes() == SHARED_SPEC.read_bytes()


def test_comments_paginate_edit_and_delete(fake: FakeGitHub) -> None:
    async def work() -> None:
        gh = client(fake)
        issue = (await gh.rest.issues.async_create(OWNER, NAME, title="comments")).parsed_data
        made = []
        for i in range(5):
            answer = await gh.rest.issues.async_create_comment(
                OWNER, NAME, issue.number, body=f"comment {i}"
            )
            assert answer.status_code == 201
            made.append(answer.parsed_data)
        assert made[0].user is not None and made[0].user.login == OWNER
        assert made[0].html_url.startswith(f"https://github.com/{OWNER}/{NAME}/issues/")

        first = await gh.rest.issues.async_list_comments(
            OWNER, NAME, issue.number, per_page=3, page=1
        )
        assert [c.body for c in first.parsed_data] == ["comment 0", "comment 1", "comment 2"]
        assert 'rel="next"' in first.headers["link"]
        assert "page=2" in first.headers["link"]
        # githubkit's paginator follows the Link header over both pages.
        bodies = [
            c.body
            async for c in gh.rest.paginate(
                gh.rest.issues.async_list_comments,
                owner=OWNER,
                repo=NAME,
                issue_number=issue.number,
                per_page=3,
            )
        ]
        assert bodies == [f"comment {i}" for i in range(5)]

        edited = await gh.rest.issues.async_update_comment(OWNER, NAME, made[1].id, body="edited")
        assert edited.parsed_data.body == "edited"
        got = await gh.rest.issues.async_get_comment(OWNER, NAME, made[1].id)
        assert got.parsed_data.body == "edited"
        deleted = await gh.rest.issues.async_delete_comment(OWNER, NAME, made[2].id)
        assert deleted.status_code == 204
        with pytest.raises(RequestFailed) as gone:
            await gh.rest.issues.async_get_comment(OWNER, NAME, made[2].id)
        assert gone.value.response.status_code == 404
        again = await gh.rest.issues.async_get(OWNER, NAME, issue.number)
        assert again.parsed_data.comments == 4

    run(work())
    kept = [c for c in fake.state()["comments"] if c["body"] == "edited"]
    assert len(kept) == 1


def test_issues_and_pulls_share_one_number_sequence(fake: FakeGitHub) -> None:
    async def work() -> tuple[int, int]:
        gh = client(fake)
        a = (await gh.rest.issues.async_create(OWNER, NAME, title="a", labels=["bug"])).parsed_data
        pull = fake.add_pull(head="feature/numbers", sha="1" * 40, title="numbers")
        b = (await gh.rest.issues.async_create(OWNER, NAME, title="b", body="x")).parsed_data
        assert a.number < pull < b.number
        assert b.number == pull + 1
        closed = await gh.rest.issues.async_update(
            OWNER, NAME, b.number, state="closed", state_reason="not_planned"
        )
        assert closed.parsed_data.state == "closed"
        assert closed.parsed_data.state_reason == "not_planned"
        assert closed.parsed_data.closed_at is not None
        # A pull is an issue too: listed with its `pull_request`.
        listed = await gh.rest.issues.async_list_for_repo(OWNER, NAME, state="all", per_page=100)
        numbers = {i.number: i for i in listed.parsed_data}
        assert numbers[pull].pull_request is not None
        assert numbers[a.number].pull_request is UNSET
        assert [x.name for x in numbers[a.number].labels if not isinstance(x, str)] == ["bug"]
        opened = await gh.rest.issues.async_list_for_repo(OWNER, NAME, state="open", per_page=100)
        assert b.number not in {i.number for i in opened.parsed_data}
        pr_issue = await gh.rest.issues.async_get(OWNER, NAME, pull)
        assert pr_issue.parsed_data.html_url.endswith(f"/pull/{pull}")
        return a.number, b.number

    run(work())


def test_statuses_and_the_combined_status(fake: FakeGitHub) -> None:
    sha = "2" * 40

    async def work() -> None:
        gh = client(fake)
        made = await gh.rest.repos.async_create_commit_status(
            OWNER, NAME, sha, state="pending", context="branchline/preview",
            target_url="https://preview.example/8", description="deploying",
        )  # fmt: skip
        assert made.status_code == 201
        assert made.parsed_data.creator is not None
        combined = (
            await gh.rest.repos.async_get_combined_status_for_ref(OWNER, NAME, sha)
        ).parsed_data
        assert (combined.state, combined.total_count) == ("pending", 1)
        await gh.rest.repos.async_create_commit_status(
            OWNER, NAME, sha, state="success", context="branchline/preview"
        )
        await gh.rest.repos.async_create_commit_status(
            OWNER, NAME, sha, state="success", context="branchline/tests"
        )
        combined = (
            await gh.rest.repos.async_get_combined_status_for_ref(OWNER, NAME, sha)
        ).parsed_data
        assert (combined.state, combined.total_count, combined.sha) == ("success", 2, sha)
        await gh.rest.repos.async_create_commit_status(
            OWNER, NAME, sha, state="failure", context="branchline/tests"
        )
        combined = (
            await gh.rest.repos.async_get_combined_status_for_ref(OWNER, NAME, sha)
        ).parsed_data
        assert combined.state == "failure"
        # A pull's head ref resolves to its sha.
        fake.add_pull(head="feature/status", sha=sha)
        by_ref = await gh.rest.repos.async_get_combined_status_for_ref(
            OWNER, NAME, "feature/status"
        )
        assert by_ref.parsed_data.sha == sha

    run(work())


def test_check_runs(fake: FakeGitHub) -> None:
    async def work() -> None:
        gh = client(fake)
        made = await gh.rest.checks.async_create(
            OWNER, NAME, name="preview", head_sha="3" * 40, status="in_progress",
            external_id="run-1", details_url="https://branchline.example/runs/1",
        )  # fmt: skip
        run_ = made.parsed_data
        assert (run_.status, run_.conclusion, run_.completed_at) == ("in_progress", None, None)
        done = await gh.rest.checks.async_update(
            OWNER, NAME, run_.id, conclusion="success",
            output={"title": "Preview", "summary": "deployed"},
        )  # fmt: skip
        assert done.parsed_data.status == "completed"
        assert done.parsed_data.conclusion == "success"
        assert done.parsed_data.completed_at is not None
        got = (await gh.rest.checks.async_get(OWNER, NAME, run_.id)).parsed_data
        assert got.output.title == "Preview"
        assert got.external_id == "run-1"

    run(work())


def test_deployments_statuses_auto_inactive_and_delete(fake: FakeGitHub) -> None:
    async def work() -> None:
        gh = client(fake)

        async def deploy(environment: str) -> int:
            made = await gh.rest.repos.async_create_deployment(
                OWNER, NAME, ref="feature/deploy", environment=environment,
                auto_merge=False, required_contexts=[], transient_environment=False,
                production_environment=False, payload={"pr": 8},
            )  # fmt: skip
            assert made.status_code == 201
            deployment = made.parsed_data
            assert not isinstance(deployment, dict) and hasattr(deployment, "id")
            return int(deployment.id)

        first = await deploy("preview-8")
        status = await gh.rest.repos.async_create_deployment_status(
            OWNER, NAME, first, state="success", environment_url="https://api-preview-8.example",
            log_url="https://branchline.example/runs/8", description="live",
        )  # fmt: skip
        assert status.parsed_data.environment_url == "https://api-preview-8.example"
        other = await deploy("preview-9")
        await gh.rest.repos.async_create_deployment_status(OWNER, NAME, other, state="success")
        # An active deployment may not be deleted.
        with pytest.raises(RequestFailed) as active:
            await gh.rest.repos.async_delete_deployment(OWNER, NAME, first)
        assert active.value.response.status_code == 422

        second = await deploy("preview-8")
        await gh.rest.repos.async_create_deployment_status(
            OWNER, NAME, second, state="success", environment_url="https://api-preview-8.example"
        )
        states = await gh.rest.repos.async_list_deployment_statuses(OWNER, NAME, first)
        assert [s.state for s in states.parsed_data] == ["inactive", "success"]
        kept = await gh.rest.repos.async_list_deployment_statuses(OWNER, NAME, other)
        assert [s.state for s in kept.parsed_data] == ["success"]  # another environment

        listed = await gh.rest.repos.async_list_deployments(OWNER, NAME, environment="preview-8")
        assert [d.id for d in listed.parsed_data] == [second, first]
        assert (
            await gh.rest.repos.async_get_deployment(OWNER, NAME, first)
        ).parsed_data.id == first
        assert (await gh.rest.repos.async_delete_deployment(OWNER, NAME, first)).status_code == 204
        with pytest.raises(RequestFailed) as gone:
            await gh.rest.repos.async_get_deployment(OWNER, NAME, first)
        assert gone.value.response.status_code == 404

    run(work())
    environments = {d["id"]: d["environment"] for d in fake.state()["deployments"]}
    assert "preview-8" in environments.values()


def test_labels_add_replace_remove_and_404(fake: FakeGitHub) -> None:
    async def work() -> None:
        gh = client(fake)
        number = fake.add_pull(head="feature/labels", sha="4" * 40)
        fake.add_label(number, "preview")  # as a person would on github.com
        added = await gh.rest.issues.async_add_labels(OWNER, NAME, number, labels=["deployed"])
        assert [x.name for x in added.parsed_data] == ["preview", "deployed"]
        listed = await gh.rest.issues.async_list_labels_on_issue(OWNER, NAME, number)
        assert [x.name for x in listed.parsed_data] == ["preview", "deployed"]
        left = await gh.rest.issues.async_remove_label(OWNER, NAME, number, "deployed")
        assert [x.name for x in left.parsed_data] == ["preview"]
        with pytest.raises(RequestFailed) as missing:
            await gh.rest.issues.async_remove_label(OWNER, NAME, number, "deployed")
        assert missing.value.response.status_code == 404
        assert missing.value.response.json()["message"] == "Label does not exist"
        replaced = await gh.rest.issues.async_set_labels(OWNER, NAME, number, labels=["a", "b"])
        assert [x.name for x in replaced.parsed_data] == ["a", "b"]
        cleared = await gh.rest.issues.async_remove_all_labels(OWNER, NAME, number)
        assert cleared.status_code == 204
        pull = (await gh.rest.pulls.async_get(OWNER, NAME, number)).parsed_data
        assert pull.labels == []

    run(work())


def test_pulls_files_and_compare(fake: FakeGitHub) -> None:
    files = [f"services/api/f{i}.py" for i in range(35)]
    head, base_sha = "5" * 40, "6" * 40
    number = fake.add_pull(
        head="feature/fork", sha=head, base_sha=base_sha, title="From a fork", fork=True,
        files=files, author="mallory",
    )  # fmt: skip

    async def work() -> None:
        gh = client(fake)
        pull = (await gh.rest.pulls.async_get(OWNER, NAME, number)).parsed_data
        assert (pull.head.ref, pull.head.sha, pull.base.ref, pull.base.sha) == (
            "feature/fork", head, "main", base_sha,
        )  # fmt: skip
        assert pull.head.repo.fork is True
        assert pull.head.repo.full_name == f"mallory/{NAME}"
        assert pull.base.repo.full_name == f"{OWNER}/{NAME}"
        assert (pull.state, pull.merged, pull.merged_at, pull.title) == (
            "open", False, None, "From a fork",
        )  # fmt: skip
        assert pull.user.login == "mallory"
        page = await gh.rest.pulls.async_list_files(OWNER, NAME, number, per_page=30)
        assert len(page.parsed_data) == 30 and 'rel="next"' in page.headers["link"]
        every = [
            f.filename
            async for f in gh.rest.paginate(
                gh.rest.pulls.async_list_files, owner=OWNER, repo=NAME, pull_number=number
            )
        ]
        assert every == files
        compared = await gh.rest.repos.async_compare_commits(OWNER, NAME, f"main...{head}")
        assert [f.filename for f in compared.parsed_data.files or []] == files
        by_ref = await gh.rest.repos.async_compare_commits(OWNER, NAME, "main...feature/fork")
        assert by_ref.parsed_data.total_commits == 1
        assert compared.parsed_data.status == "ahead"
        with pytest.raises(RequestFailed) as unknown:
            await gh.rest.repos.async_compare_commits(OWNER, NAME, "main...no-such-branch")
        assert unknown.value.response.status_code == 404

        # A push, then a merge (seeded as GitHub would show them).
        fake.update_pull(number, sha="7" * 40)
        assert (await gh.rest.pulls.async_get(OWNER, NAME, number)).parsed_data.head.sha == "7" * 40
        fake.update_pull(number, merged=True)
        merged = (await gh.rest.pulls.async_get(OWNER, NAME, number)).parsed_data
        assert (merged.state, merged.merged) == ("closed", True)
        assert merged.merged_at is not None
        closed = await gh.rest.pulls.async_list(OWNER, NAME, state="closed", per_page=100)
        assert number in {p.number for p in closed.parsed_data}
        opened = await gh.rest.pulls.async_list(OWNER, NAME, state="open", per_page=100)
        assert number not in {p.number for p in opened.parsed_data}

        made = await gh.rest.pulls.async_create(
            OWNER, NAME, head="feature/made", base="main", title="Made by a client"
        )
        assert made.status_code == 201
        shut = await gh.rest.pulls.async_update(
            OWNER, NAME, made.parsed_data.number, state="closed"
        )
        assert (shut.parsed_data.state, shut.parsed_data.merged) == ("closed", False)

    run(work())
    assert fake.state()["pulls"][str(number)]["merged"] is True


def test_collaborator_permission(fake: FakeGitHub) -> None:
    async def work() -> None:
        gh = client(fake)
        roles = (("admin", "admin"), ("maintain", "write"), ("write", "write"),
                 ("triage", "read"), ("read", "read"), ("none", "none"))  # fmt: skip
        for role, permission in roles:
            fake.set_permission("carol", role)
            got = await gh.rest.repos.async_get_collaborator_permission_level(OWNER, NAME, "carol")
            assert (got.parsed_data.permission, got.parsed_data.role_name) == (permission, role)
        owner = await gh.rest.repos.async_get_collaborator_permission_level(OWNER, NAME, OWNER)
        assert owner.parsed_data.permission == "admin"
        repo = (await gh.rest.repos.async_get(OWNER, NAME)).parsed_data
        assert (repo.full_name, repo.default_branch, repo.fork) == (
            f"{OWNER}/{NAME}",
            "main",
            False,
        )

    run(work())


def test_bad_credentials_and_unknown_repositories(fake: FakeGitHub) -> None:
    async def work() -> None:
        wrong = client(fake, "ghp_wrong")
        with pytest.raises(RequestFailed) as refused:
            await wrong.rest.issues.async_get(OWNER, NAME, 1)
        answer = refused.value.response
        assert answer.status_code == 401
        assert answer.json()["message"] == "Bad credentials"
        assert answer.json()["documentation_url"].startswith("https://docs.github.com/")
        assert answer.headers["x-ratelimit-limit"]
        right = client(fake)
        with pytest.raises(RequestFailed) as unknown:
            await right.rest.issues.async_get(OWNER, "elsewhere", 1)
        assert unknown.value.response.status_code == 404
        assert unknown.value.response.json()["message"] == "Not Found"

    run(work())
    response = httpx.get(f"{fake.url}/repos/{OWNER}/{NAME}", timeout=10)  # no credentials
    assert response.status_code == 401


def test_rate_limit_headers_on_every_answer(fake: FakeGitHub) -> None:
    headers = {"Authorization": f"token {TOKEN}"}
    first = httpx.get(f"{fake.url}/repos/{OWNER}/{NAME}", headers=headers, timeout=10)
    second = httpx.get(f"{fake.url}/repos/{OWNER}/{NAME}", headers=headers, timeout=10)
    for name in ("limit", "remaining", "reset", "used", "resource"):
        assert f"x-ratelimit-{name}" in second.headers
    assert int(second.headers["x-ratelimit-used"]) == int(first.headers["x-ratelimit-used"]) + 1
    assert second.headers["x-ratelimit-resource"] == "core"


def test_primary_and_secondary_rate_limits(fake: FakeGitHub) -> None:
    template = "/repos/{owner}/{repo}/issues/{issue_number}"

    async def work() -> None:
        gh = client(fake)
        number = (await gh.rest.issues.async_create(OWNER, NAME, title="limits")).parsed_data.number

        fake.inject("rate-limit", path=template, retry_after=30)
        with pytest.raises(PrimaryRateLimitExceeded) as primary:
            await gh.rest.issues.async_get(OWNER, NAME, number)
        answer = primary.value.response
        assert answer.status_code == 403
        assert answer.headers["x-ratelimit-remaining"] == "0"
        assert 25 <= int(answer.headers["x-ratelimit-reset"]) - time.time() <= 31
        assert answer.json()["message"].startswith("API rate limit exceeded for ")
        assert 25 <= primary.value.retry_after.total_seconds() <= 31

        fake.inject("rate-limit", path=template, status=429, retry_after=30)
        with pytest.raises(PrimaryRateLimitExceeded) as too_many:
            await gh.rest.issues.async_get(OWNER, NAME, number)
        assert too_many.value.response.status_code == 429

        fake.inject("secondary-rate-limit", method="GET", path=template, retry_after=45)
        with pytest.raises(SecondaryRateLimitExceeded) as secondary:
            await gh.rest.issues.async_get(OWNER, NAME, number)
        answer = secondary.value.response
        assert (answer.status_code, answer.headers["retry-after"]) == (403, "45")
        assert answer.json()["message"].startswith("You have exceeded a secondary rate limit")

        # The fault is spent: the next call is answered.
        assert (await gh.rest.issues.async_get(OWNER, NAME, number)).status_code == 200

    run(work())


def test_githubkit_auto_retry_waits_out_the_limits(fake: FakeGitHub) -> None:
    """githubkit's default retry (auto_retry=True): once per rate limit, after
    retry-after or until x-ratelimit-reset; thrice per 5xx, after 1, 4, 9 s."""
    template = "/repos/{owner}/{repo}"

    async def work() -> None:
        gh = client(fake, retry=True)
        fake.reset_counters()
        fake.inject("secondary-rate-limit", path=template, retry_after=1)
        started = time.monotonic()
        assert (await gh.rest.repos.async_get(OWNER, NAME)).status_code == 200
        assert time.monotonic() - started >= 0.9
        fake.inject("rate-limit", path=template, retry_after=2)
        started = time.monotonic()
        assert (await gh.rest.repos.async_get(OWNER, NAME)).status_code == 200
        assert time.monotonic() - started >= 0.9  # the reset is in whole epoch seconds
        fake.inject("error", path=template, status=502)
        assert (await gh.rest.repos.async_get(OWNER, NAME)).status_code == 200
        # Twice in a row: githubkit retries a rate limit only once.
        fake.inject("secondary-rate-limit", path=template, retry_after=1, times=2)
        with pytest.raises(SecondaryRateLimitExceeded):
            await gh.rest.repos.async_get(OWNER, NAME)

    run(work())
    assert fake.calls()["by_route"]["GET /repos/{owner}/{repo}"] == 2 + 2 + 2 + 2


def test_errors_and_latency(fake: FakeGitHub) -> None:
    async def work() -> None:
        gh = client(fake)
        fake.inject("error", method="GET", path="/repos/{owner}/{repo}", status=503)
        with pytest.raises(RequestFailed) as failed:
            await gh.rest.repos.async_get(OWNER, NAME)
        assert failed.value.response.status_code == 503
        fake.inject("latency", path="/repos/{owner}/{repo}", delay=0.5)
        started = time.monotonic()
        assert (await gh.rest.repos.async_get(OWNER, NAME)).status_code == 200
        assert time.monotonic() - started >= 0.45

    run(work())


def test_app_jwt_installation_token_and_its_expiry(fake: FakeGitHub, app_key: str) -> None:
    async def work() -> None:
        as_app = GitHub(AppAuthStrategy(APP_ID, app_key), base_url=fake.url, auto_retry=False)
        app = (await as_app.rest.apps.async_get_authenticated()).parsed_data
        assert app is not None and app.id == APP_ID
        installation = await as_app.rest.apps.async_get_repo_installation(OWNER, NAME)
        assert installation.parsed_data.id == 7
        # A JWT signed by another key is refused.
        stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        wrong_pem = stranger.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()  # fmt: skip
        # (githubkit's default cache is one per process, its JWTs kept by app id: the
        # impostor needs a cache of its own or it would send the real app's JWT.)
        impostor = GitHub(
            AppAuthStrategy(APP_ID, wrong_pem), base_url=fake.url, auto_retry=False,
            cache_strategy=MemCacheStrategy(),
        )  # fmt: skip
        with pytest.raises(RequestFailed) as refused:
            await impostor.rest.apps.async_get_authenticated()
        assert refused.value.response.status_code == 401
        with_token = client(fake)
        with pytest.raises(RequestFailed) as no_token:  # a token is no JWT
            await with_token.rest.apps.async_get_authenticated()
        assert no_token.value.response.status_code == 401

        # The installation strategy gets a token once and reuses it (lifetime 1 h).
        before = fake.calls()["tokens_issued"]
        gh = GitHub(
            AppInstallationAuthStrategy(APP_ID, app_key, installation_id=7),
            base_url=fake.url, auto_retry=False,
        )  # fmt: skip
        made = await gh.rest.issues.async_create(OWNER, NAME, title="from the app")
        assert made.parsed_data.user is not None
        assert (made.parsed_data.user.login, made.parsed_data.user.type) == (
            "branchline[bot]", "Bot",
        )  # fmt: skip
        await gh.rest.issues.async_get(OWNER, NAME, made.parsed_data.number)
        assert fake.calls()["tokens_issued"] == before + 1

        token = await as_app.rest.apps.async_create_installation_access_token(7)
        assert token.status_code == 201 and token.parsed_data.token.startswith("ghs_")
        installed = client(fake, token.parsed_data.token)
        got = await installed.rest.repos.async_get(OWNER, NAME)
        assert got.status_code == 200
        with pytest.raises(RequestFailed) as unknown:
            await as_app.rest.apps.async_create_installation_access_token(8)
        assert unknown.value.response.status_code == 404

    run(work())


def test_installation_tokens_expire_and_githubkit_gets_new_ones(
    cluster_root: Path, app_key: str
) -> None:
    """With a 2 s lifetime: a token is refused once expired (401 Bad credentials);
    githubkit keeps a token until a minute before its `expires_at`, so with so short
    a lifetime it asks for a new one before every call (it never retries on a 401)."""
    state = new_state_dir(cluster_root)
    fake = FakeGitHub.start(
        state, token=TOKEN, app_id=APP_ID, app_private_key_pem=app_key, token_lifetime=2.0
    )
    try:

        async def work() -> None:
            as_app = GitHub(AppAuthStrategy(APP_ID, app_key), base_url=fake.url, auto_retry=False)
            minted = (await as_app.rest.apps.async_create_installation_access_token(1)).parsed_data
            with_token = client(fake, minted.token)
            assert (await with_token.rest.repos.async_get(OWNER, NAME)).status_code == 200
            await asyncio.sleep(2.5)
            with pytest.raises(RequestFailed) as expired:
                await with_token.rest.repos.async_get(OWNER, NAME)
            assert expired.value.response.status_code == 401
            assert expired.value.response.json()["message"] == "Bad credentials"

            gh = GitHub(
                AppInstallationAuthStrategy(APP_ID, app_key, installation_id=1),
                base_url=fake.url, auto_retry=False,
            )  # fmt: skip
            before = fake.calls()["tokens_issued"]
            assert (await gh.rest.repos.async_get(OWNER, NAME)).status_code == 200
            await asyncio.sleep(2.5)
            assert (await gh.rest.repos.async_get(OWNER, NAME)).status_code == 200
            assert fake.calls()["tokens_issued"] == before + 2

        run(work())
        assert fake.calls()["invalid"] == []
    finally:
        fake.stop()
        remove_state_dir(state)


def test_environments_and_their_secrets(fake: FakeGitHub) -> None:
    async def work() -> None:
        gh = client(fake)
        env = "preview-12"
        with pytest.raises(RequestFailed) as missing:
            await gh.rest.repos.async_get_environment(OWNER, NAME, env)
        assert missing.value.response.status_code == 404
        made = await gh.rest.repos.async_create_or_update_environment(OWNER, NAME, env)
        assert made.parsed_data.name == env
        key = (await gh.rest.actions.async_get_repo_public_key(OWNER, NAME)).parsed_data
        assert len(base64.b64decode(key.key)) == 32
        sealed = base64.b64encode(os.urandom(64)).decode()  # what a sealed box looks like
        first = await gh.rest.actions.async_create_or_update_environment_secret(
            OWNER, NAME, env, "database_url", encrypted_value=sealed, key_id=key.key_id
        )
        assert first.status_code == 201
        again = await gh.rest.actions.async_create_or_update_environment_secret(
            OWNER, NAME, env, "DATABASE_URL", encrypted_value=sealed, key_id=key.key_id
        )
        assert again.status_code == 204
        with pytest.raises(RequestFailed) as stale:
            await gh.rest.actions.async_create_or_update_environment_secret(
                OWNER, NAME, env, "OTHER", encrypted_value=sealed, key_id="1"
            )
        assert stale.value.response.status_code == 422
        got = await gh.rest.actions.async_get_environment_secret(OWNER, NAME, env, "DATABASE_URL")
        assert got.parsed_data.name == "DATABASE_URL"
        state = fake.state()
        assert {"environment": env, "name": "DATABASE_URL"}.items() <= state["secrets"][0].items()
        assert sealed not in str(state)
        gone = await gh.rest.actions.async_delete_environment_secret(
            OWNER, NAME, env, "DATABASE_URL"
        )
        assert gone.status_code == 204
        assert (
            await gh.rest.repos.async_delete_an_environment(OWNER, NAME, env)
        ).status_code == 204
        # A first deployment to an environment makes it, as on GitHub.
        await gh.rest.repos.async_create_deployment(
            OWNER, NAME, ref="main", environment="preview-13", auto_merge=False,
            required_contexts=[],
        )  # fmt: skip
        assert (
            await gh.rest.repos.async_get_environment(OWNER, NAME, "preview-13")
        ).status_code == 200

    run(work())


def test_a_jwt_longer_than_ten_minutes_is_refused(fake: FakeGitHub, app_key: str) -> None:
    moment = int(time.time())
    token = jwt.encode(
        {"iss": str(APP_ID), "iat": moment - 30, "exp": moment + 3600}, app_key, "RS256"
    )
    response = httpx.get(f"{fake.url}/app", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert "too far in the future" in response.json()["message"]
    stranger = jwt.encode({"iss": "1", "iat": moment - 30, "exp": moment + 300}, app_key, "RS256")
    response = httpx.get(f"{fake.url}/app", headers={"Authorization": f"Bearer {stranger}"})
    assert response.status_code == 401


def test_an_invalid_request_gets_422_and_is_counted(fake: FakeGitHub) -> None:
    before = len(fake.calls()["invalid"])
    response = httpx.post(
        f"{fake.url}/repos/{OWNER}/{NAME}/statuses/{DELIBERATE}",
        json={"state": "splendid"},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert response.status_code == 422
    body = response.json()
    assert body["message"].startswith("Invalid request.")
    assert body["errors"] and body["documentation_url"]
    invalid = fake.calls()["invalid"][before:]
    assert [(x["kind"], x["method"], x["status"]) for x in invalid] == [("request", "POST", 422)]
    assert "splendid" in invalid[0]["errors"]
    broken = httpx.post(
        f"{fake.url}/repos/{OWNER}/{NAME}/statuses/{DELIBERATE}",
        content=b"{not json",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        timeout=10,
    )
    assert (broken.status_code, broken.json()["message"]) == (400, "Problems parsing JSON")
    assert len(fake.calls()["invalid"]) == before + 2
    assert not [s for s in fake.state()["statuses"] if s["sha"] == DELIBERATE]


def test_state_keeps_everything(fake: FakeGitHub) -> None:
    state = fake.state()
    for key in ("issues", "pulls", "labels", "comments", "statuses", "check_runs",
                "deployments", "roles"):  # fmt: skip
        assert key in state
    calls = fake.calls()
    assert calls["by_route"] and isinstance(calls["invalid"], list)


def test_in_process_app_serves_githubkit() -> None:
    app = build_app(f"{OWNER}/{NAME}", token=TOKEN)

    async def work() -> None:
        gh = GitHub(
            TokenAuthStrategy(TOKEN), base_url="http://fake-github.test", auto_retry=False,
            async_transport=httpx.ASGITransport(app=app),
        )  # fmt: skip
        made = await gh.rest.issues.async_create(OWNER, NAME, title="in process")
        await gh.rest.issues.async_create_comment(OWNER, NAME, made.parsed_data.number, body="hi")
        listed = await gh.rest.issues.async_list_comments(OWNER, NAME, made.parsed_data.number)
        assert [c.body for c in listed.parsed_data] == ["hi"]

    run(work())
    assert app.calls()["invalid"] == []


def test_stop_leaves_nothing_running(cluster_root: Path) -> None:
    state = new_state_dir(cluster_root)
    fake = FakeGitHub.start(state, token=TOKEN)
    try:
        assert leftover_processes(state)
        assert httpx.get(f"{fake.url}/_fake/health", timeout=10).status_code == 200
        assert fake.stop() == 0
        assert leftover_processes(state) == []
    finally:
        fake.stop()
        remove_state_dir(state)
