"""The GitHub client's handling of GitHub's limits and failures, against answers a
test gives (GitHub's own headers and bodies): rate limits waited out within a
deadline, writes spaced apart, reads retried and writes not, and errors that say
what to do without the token."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from branchline.providers.forge import github_api
from branchline.providers.forge.github import GitHubForge
from branchline.providers.forge.github_api import (
    Credentials,
    GitHubClient,
    GitHubError,
    GitHubRateLimitError,
)

TOKEN = "ghp_unit-test-token-0123456789"
DOCS = "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"
Answer = Callable[[httpx.Request], httpx.Response]


def client(answers: Iterator[Answer] | Answer, **options: float) -> GitHubClient:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers if callable(answers) else next(answers)
        return answer(request)

    made = GitHubClient(
        repository="acme/codex", credentials=Credentials(token=TOKEN),
        api_url="https://api.example.test", transport=httpx.MockTransport(handle),
        **{"write_interval": 0.0, **options},  # type: ignore[arg-type]
    )  # fmt: skip
    made.seen = seen  # type: ignore[attr-defined]
    return made


def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"number": 7, "id": 1, "state": "open"})


def primary(reset_in: float) -> Answer:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            403,
            headers={
                "x-ratelimit-remaining": "0",
                "x-ratelimit-limit": "5000",
                "x-ratelimit-reset": str(int(time.time() + reset_in)),
            },
            json={
                "message": "API rate limit exceeded for installation ID 1.",
                "documentation_url": DOCS,
            },
        )

    return answer


def secondary(retry_after: str | None) -> Answer:
    def answer(request: httpx.Request) -> httpx.Response:
        headers = {"retry-after": retry_after} if retry_after is not None else {}
        return httpx.Response(
            403, headers=headers,
            json={"message": "You have exceeded a secondary rate limit. Please wait a few "
                  "minutes before you try again.", "documentation_url": DOCS},
        )  # fmt: skip

    return answer


def status(code: int) -> Answer:
    return lambda request: httpx.Response(code, json={"message": f"status {code}"})


def get_issue(gh: GitHubClient) -> object:
    return asyncio.run(
        gh.read(
            "GET /repos/{owner}/{repo}/issues/{issue_number}",
            lambda g: g.rest.issues.async_get("acme", "codex", 7),
        )
    )


def test_a_secondary_limit_is_waited_out_for_its_retry_after() -> None:
    gh = client(iter([secondary("1"), ok]))
    began = time.monotonic()
    assert get_issue(gh) == {"number": 7, "id": 1, "state": "open"}
    assert 1.0 <= time.monotonic() - began < 3.5
    assert gh.count.retries == 1 and gh.count.waited >= 1.0
    assert gh.count.by_route["GET /repos/{owner}/{repo}/issues/{issue_number}"] == 2


def test_a_secondary_limit_without_retry_after_waits_githubs_minute(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(github_api, "SECONDARY_DEFAULT", 0.2)
    gh = client(iter([secondary(None), ok]))
    assert get_issue(gh) == {"number": 7, "id": 1, "state": "open"}
    assert gh.count.retries == 1


def test_a_primary_limit_is_waited_out_until_its_reset() -> None:
    gh = client(iter([primary(1.0), ok]))
    assert get_issue(gh) == {"number": 7, "id": 1, "state": "open"}
    assert gh.count.retries == 1


def test_a_limit_longer_than_the_deadline_fails_at_once_naming_it() -> None:
    gh = client(primary(3600.0), rate_limit_wait=5.0)
    began = time.monotonic()
    with pytest.raises(GitHubRateLimitError) as caught:
        get_issue(gh)
    assert time.monotonic() - began < 2.0  # it did not sleep toward an hour
    assert "primary rate limit" in caught.value.message
    assert "rate_limit_wait" in caught.value.message and caught.value.hint


def test_reads_are_retried_on_server_errors_and_writes_are_not() -> None:
    gh = client(iter([status(502), status(503), ok]))
    assert get_issue(gh) == {"number": 7, "id": 1, "state": "open"}
    writes = client(iter([status(502), ok]))
    with pytest.raises(GitHubError) as caught:
        asyncio.run(GitHubForge(writes).create_issue("t", "b", []))
    assert caught.value.status == 502
    assert len(writes.seen) == 1  # type: ignore[attr-defined]


def test_writes_are_spaced_apart() -> None:
    gh = client(ok, write_interval=0.3)
    forge = GitHubForge(gh)

    async def three() -> list[int]:
        return [await forge.create_issue(f"issue {n}", "b", []) for n in range(3)]

    began = time.monotonic()
    assert asyncio.run(three()) == [7, 7, 7]
    assert time.monotonic() - began >= 0.6


def test_refused_credentials_say_what_to_check_without_the_token() -> None:
    gh = client(status(401))
    with pytest.raises(GitHubError) as caught:
        get_issue(gh)
    assert caught.value.status == 401
    assert "GITHUB_TOKEN" in (caught.value.hint or "")
    assert TOKEN not in caught.value.message + (caught.value.hint or "")
    forbidden = client(status(403))
    with pytest.raises(GitHubError) as caught:
        get_issue(forbidden)
    assert "permissions" in (caught.value.hint or "")


def test_no_credentials_at_all_is_a_usage_error() -> None:
    from branchline.errors import UsageError

    gh = GitHubClient(repository="acme/codex", credentials=Credentials())
    with pytest.raises(UsageError) as caught:
        get_issue(gh)
    assert "GITHUB_TOKEN" in (caught.value.hint or "")


def test_the_token_goes_in_the_authorization_header_only() -> None:
    gh = client(ok)
    get_issue(gh)
    (request,) = gh.seen  # type: ignore[attr-defined]
    assert request.headers["authorization"] == f"token {TOKEN}"
    assert TOKEN not in str(request.url)
    assert request.headers["user-agent"] == "branchline"
