"""Health checks with an injected clock and httpx's MockTransport: no sleeping, no sockets."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from branchline.config import CLOUD_HEALTH_DEFAULTS, LOCAL_HEALTH_DEFAULTS, HealthConfig
from branchline.errors import UsageError
from branchline.health import (
    Attempt,
    HealthPolicy,
    HealthResult,
    ManualClock,
    check_health,
    commits_match,
)

URL = "http://api.example.test/health"
NEW = "0123456789abcdef0123456789abcdef01234567"
OLD = "fedcba9876543210fedcba9876543210fedcba98"

Handler = Callable[[httpx.Request], httpx.Response]


def cloud(**changes: Any) -> HealthPolicy:
    policy = HealthPolicy.from_config(HealthConfig.model_validate(CLOUD_HEALTH_DEFAULTS), jitter=0)
    return HealthPolicy(**{**policy.__dict__, **changes})


def local(**changes: Any) -> HealthPolicy:
    policy = HealthPolicy.from_config(HealthConfig.model_validate(LOCAL_HEALTH_DEFAULTS), jitter=0)
    return HealthPolicy(**{**policy.__dict__, **changes})


def check(
    handler: Handler,
    policy: HealthPolicy,
    clock: ManualClock | None = None,
    **kwargs: Any,
) -> HealthResult:
    async def go() -> HealthResult:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await check_health(
                kwargs.pop("url", URL),
                policy=policy,
                client=client,
                clock=clock or ManualClock(),
                **kwargs,
            )

    return asyncio.run(go())


def refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("[Errno 111] Connection refused", request=request)


def answers(*responses: httpx.Response) -> tuple[Handler, list[httpx.Request]]:
    """A handler giving these responses in turn (the last one forever), and its requests."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return responses[min(len(seen), len(responses)) - 1]

    return handler, seen


def ok_json(**fields: object) -> httpx.Response:
    return httpx.Response(200, json={"status": "ok", **fields})


# ------------------------------------------------------------------------- schedule


def test_policy_from_reference_values() -> None:
    policy = cloud()
    assert policy.wait_before(0) == 30
    assert policy.wait_before(1) == policy.wait_before(2) == 15
    assert policy.schedule() == (5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560)
    assert policy.max_attempts == 11
    assert policy.deadline == 300


def test_policy_from_local_values() -> None:
    policy = local()
    assert policy.wait_before(0) == policy.wait_before(1) == 0
    assert policy.schedule()[:4] == (0.1, 0.2, 0.4, 0.8)
    assert policy.deadline == 300


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(UsageError, match="deadline"):
        HealthPolicy(deadline=0)
    with pytest.raises(UsageError, match="retries"):
        HealthPolicy(retries=-1)
    with pytest.raises(UsageError, match="jitter"):
        HealthPolicy(jitter=2)


def test_reference_schedule_until_the_deadline() -> None:
    """30 s wait, then 5, 10, 20, 40, 80 s; the 160 s wait is cut so the last try fits."""
    clock = ManualClock()
    result = check(refused, cloud(), clock)
    assert clock.sleeps == [30, 5, 10, 20, 40, 80, 110]
    assert [a.at for a in result.attempts] == [30, 35, 45, 65, 105, 185, 295]
    assert not result.healthy
    assert result.verdict == (
        "unhealthy: deadline of 5m reached after 7 attempts; last: HTTP 000 (connection refused)"
    )


def test_local_schedule_with_few_retries() -> None:
    clock = ManualClock()
    handler, seen = answers(httpx.Response(503))
    result = check(handler, local(retries=3), clock)
    assert clock.sleeps == [0.1, 0.2, 0.4]  # no initial wait locally
    assert len(seen) == len(result.attempts) == 4
    assert [a.display for a in result.attempts] == ["HTTP 503"] * 4
    assert result.verdict == "unhealthy: 4 attempts failed in 0.7 s; last: HTTP 503"


def test_no_retries_means_one_attempt() -> None:
    clock = ManualClock()
    result = check(refused, local(retries=0), clock)
    assert len(result.attempts) == 1
    assert clock.sleeps == []


def test_jitter_stays_within_bounds_and_follows_the_rng() -> None:
    def sleeps(seed: int) -> list[float]:
        clock = ManualClock()
        policy = cloud(jitter=0.1, first_wait=0, deadline=100_000)
        check(refused, policy, clock, rng=random.Random(seed))
        return clock.sleeps

    first = sleeps(7)
    assert len(first) == 10
    for delay, nominal in zip(first, cloud().schedule(), strict=True):
        assert nominal <= delay < nominal * 1.1
    assert first != list(cloud().schedule())  # some jitter was added
    assert sleeps(7) == first
    assert sleeps(8) != first


# ------------------------------------------------------------------------- deadline


def test_deadline_stops_retries() -> None:
    clock = ManualClock()
    policy = cloud(first_wait=0, backoff_base=5, deadline=60)
    result = check(refused, policy, clock)
    assert [a.at for a in result.attempts] == [0, 5, 15, 35, 55]
    assert result.attempts[-1].at + policy.timeout_per_attempt <= 60
    assert clock.now() <= 60
    assert "deadline of 1m reached after 5 attempts" in result.verdict


def test_deadline_counts_slow_attempts_and_the_initial_wait() -> None:
    clock = ManualClock()

    def slow(request: httpx.Request) -> httpx.Response:
        clock.advance(5)
        raise httpx.ReadTimeout("timed out", request=request)

    policy = cloud(first_wait=10, backoff_base=5, deadline=60)
    result = check(slow, policy, clock)
    # attempts at 10 (ends 15), 20 (ends 25), 35 (ends 40); the 20 s wait is cut to 15
    # so the last attempt ends exactly at the deadline
    assert [a.at for a in result.attempts] == [10, 20, 35, 55]
    assert clock.sleeps == [10, 5, 10, 15]
    assert all(a.display == "HTTP 000 (timed out after 5s)" for a in result.attempts)
    assert all(a.elapsed_ms == 5000 for a in result.attempts)
    assert clock.now() == 60
    assert result.verdict.startswith("unhealthy: deadline of 1m reached after 4 attempts")


def test_no_room_left_for_a_full_attempt_stops() -> None:
    clock = ManualClock()

    def slow(request: httpx.Request) -> httpx.Response:
        clock.advance(5)
        return httpx.Response(503)

    result = check(slow, local(backoff_base=1, deadline=12), clock)
    # attempt 1 at 0 (ends 5), attempt 2 at 6 (ends 11): 1 s left, less than a timeout
    assert [a.at for a in result.attempts] == [0, 6]
    assert clock.now() == 11
    assert "deadline of 12s reached after 2 attempts; last: HTTP 503" in result.verdict


def test_initial_wait_longer_than_the_deadline_still_makes_one_attempt() -> None:
    clock = ManualClock()
    result = check(refused, cloud(first_wait=120, deadline=60), clock)
    assert len(result.attempts) == 1
    assert clock.sleeps == [55]  # leaves a full timeout for the attempt


# ------------------------------------------------------------------------- HTTP 000


def test_refused_connection_is_http_000() -> None:
    result = check(refused, local(retries=1))
    attempt = result.attempts[0]
    assert attempt.status == 0
    assert attempt.display == "HTTP 000 (connection refused)"
    assert attempt.reason == "connection refused"
    assert not attempt.ok


def test_refusal_found_in_the_exception_chain() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        try:
            raise ConnectionRefusedError(111, "nope")
        except ConnectionRefusedError as exc:
            raise httpx.ConnectError("all attempts failed", request=request) from exc

    assert check(handler, local(retries=0)).attempts[0].reason == "connection refused"


def test_timeout_is_http_000_with_the_timeout() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("read timed out", request=request)

    result = check(handler, local(retries=0, timeout_per_attempt=2.5))
    assert result.attempts[0].display == "HTTP 000 (timed out after 2.5s)"


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (httpx.ConnectError("[Errno -2] Name or service not known"), "host name not resolved"),
        (httpx.ReadError("[Errno 104] Connection reset by peer"), "connection reset"),
        (
            httpx.RemoteProtocolError("Server disconnected without sending a response."),
            "connection closed without an answer",
        ),
        (httpx.ConnectError("something odd"), "ConnectError: something odd"),
    ],
)
def test_other_network_errors_never_raise(error: httpx.HTTPError, reason: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    attempt = check(handler, local(retries=0)).attempts[0]
    assert (attempt.status, attempt.reason) == (0, reason)
    assert attempt.display == f"HTTP 000 ({reason})"


def test_recovers_after_failures() -> None:
    clock = ManualClock()
    handler, _ = answers(httpx.Response(503), httpx.Response(502), ok_json())
    result = check(handler, local(), clock)
    assert result.healthy
    assert [a.status for a in result.attempts] == [503, 502, 200]
    assert [a.ok for a in result.attempts] == [False, False, True]
    assert result.verdict == "healthy after 3 attempts in 0.3 s"


def test_redirect_is_not_healthy() -> None:
    handler, seen = answers(httpx.Response(301, headers={"Location": "https://elsewhere/"}))
    result = check(handler, local(retries=0))
    assert result.attempts[0].display == "HTTP 301"
    assert len(seen) == 1


# --------------------------------------------------------------------- commit check


def test_old_commit_keeps_failing_until_the_new_one_answers() -> None:
    handler, _ = answers(ok_json(commit=OLD), ok_json(commit=OLD), ok_json(commit=NEW))
    result = check(handler, local(), expect_commit=NEW)
    assert result.healthy
    assert [a.ok for a in result.attempts] == [False, False, True]
    assert result.attempts[0].reason == f"answered commit {OLD}, expected {NEW}"
    assert result.attempts[0].reported_commit == OLD
    assert result.attempts[2].reason is None


def test_old_commit_forever_is_unhealthy() -> None:
    handler, _ = answers(ok_json(commit=OLD[:7]))
    result = check(handler, local(retries=2), expect_commit=NEW[:7])
    assert not result.healthy
    assert len(result.attempts) == 3
    assert result.verdict == (
        f"unhealthy: answered commit {OLD[:7]} but {NEW[:7]} is being deployed "
        "(3 attempts in 0.3 s)"
    )


@pytest.mark.parametrize(
    ("reported", "expected"),
    [(NEW, NEW[:7]), (NEW[:7], NEW), (NEW[:12].upper(), NEW), (NEW, NEW.upper())],
)
def test_short_and_full_shas_match(reported: str, expected: str) -> None:
    handler, _ = answers(ok_json(commit=reported))
    assert check(handler, local(retries=0), expect_commit=expected).healthy


def test_commits_match_rules() -> None:
    assert commits_match(NEW, NEW[:7])
    assert not commits_match(NEW, NEW[:6])  # too short to say
    assert not commits_match(NEW[:6], NEW)
    assert not commits_match(NEW, OLD)
    assert not commits_match(NEW[:8], NEW[:7] + "0")


def test_commit_reported_in_a_header() -> None:
    handler, _ = answers(
        httpx.Response(200, text="ok", headers={"X-Branchline-Commit": OLD}),
        httpx.Response(200, text="ok", headers={"x-branchline-commit": NEW}),
    )
    result = check(handler, local(), expect_commit=NEW)
    assert [a.ok for a in result.attempts] == [False, True]
    assert [a.reported_commit for a in result.attempts] == [OLD, NEW]


def test_release_check() -> None:
    handler, _ = answers(
        ok_json(release="api-41"),
        httpx.Response(200, text="ok", headers={"X-Branchline-Release": "api-42"}),
    )
    result = check(handler, local(), expect_release="api-42")
    assert [a.reason for a in result.attempts] == ["answered release api-41, expected api-42", None]
    assert result.healthy


def test_commit_not_reported_passes_with_a_note() -> None:
    handler, _ = answers(httpx.Response(200, text="ok"))
    result = check(handler, local(), expect_commit=NEW)
    assert result.healthy
    assert result.attempts[0].reason == "commit not reported"
    assert "commit not reported, could not be checked" in result.verdict


def test_reported_commit_without_expectation_is_recorded() -> None:
    handler, _ = answers(ok_json(commit=OLD, release=7))
    attempt = check(handler, local()).attempts[0]
    assert attempt.ok
    assert (attempt.reported_commit, attempt.reported_release) == (OLD, "7")
    assert attempt.reason is None


def test_error_status_fails_even_with_the_right_commit() -> None:
    handler, _ = answers(httpx.Response(500, json={"commit": NEW}))
    result = check(handler, local(retries=0), expect_commit=NEW)
    assert not result.healthy
    assert result.attempts[0].reported_commit == NEW


def test_bad_expected_commit_is_a_usage_error() -> None:
    handler, seen = answers(ok_json())
    with pytest.raises(UsageError) as caught:
        check(handler, local(), expect_commit="main")
    assert "7 hexadecimal" in caught.value.hint
    assert seen == []


# ------------------------------------------------------------------- waits, callbacks


@pytest.mark.parametrize(("position", "wait"), [(0, 30), (1, 15), (2, 15)])
def test_initial_wait_depends_on_position(position: int, wait: float) -> None:
    clock = ManualClock()
    handler, _ = answers(ok_json())
    result = check(handler, cloud(), clock, position=position)
    assert clock.sleeps == [wait]
    assert result.attempts[0].at == wait
    assert result.verdict == f"healthy after 1 attempt in {wait:.1f} s"


def test_on_attempt_sees_every_attempt() -> None:
    seen: list[Attempt] = []
    handler, _ = answers(httpx.Response(503), httpx.Response(503), ok_json())
    result = check(handler, local(), on_attempt=seen.append)
    assert tuple(seen) == result.attempts
    assert [a.number for a in seen] == [1, 2, 3]


def test_host_header_is_sent() -> None:
    handler, seen = answers(ok_json())
    check(
        handler,
        local(),
        url="http://127.0.0.1:8080/health",
        host_header="api-preview-8.codex.localhost",
    )
    assert seen[0].headers["host"] == "api-preview-8.codex.localhost"
    assert seen[0].url == "http://127.0.0.1:8080/health"


def test_as_dict_is_json() -> None:
    handler, _ = answers(httpx.Response(503), ok_json(commit=NEW))
    result = check(handler, local(), expect_commit=NEW[:7])
    data = json.loads(json.dumps(result.as_dict()))
    assert data["healthy"] is True
    assert data["url"] == URL
    assert data["expected_commit"] == NEW[:7]
    assert [a["display"] for a in data["attempts"]] == ["HTTP 503", "HTTP 200"]
    assert data["attempts"][1]["reported_commit"] == NEW


@pytest.mark.parametrize("url", ["ftp://example.test/health", "example.test/health", "http://"])
def test_bad_url_is_a_usage_error_before_any_attempt(url: str) -> None:
    handler, seen = answers(ok_json())
    with pytest.raises(UsageError) as caught:
        check(handler, local(), url=url)
    assert "http://127.0.0.1:8080/health" in caught.value.hint
    assert seen == []


# ------------------------------------------------------------- deterministic answers


def test_the_same_failing_answer_three_times_fails_at_once_with_what_it_said() -> None:
    """A release that refuses its own host name answers 400 every time: three alike
    are its answer, not a warm-up; the check ends in seconds, not after ten retries."""
    page = b"<h1>Bad Request (400)</h1>" + b"x" * 1000
    handler, seen = answers(httpx.Response(400, content=page))
    clock = ManualClock()
    result = check(handler, local(), clock, host_header="web.example.test")
    assert not result.healthy
    assert len(seen) == 3 and len(result.attempts) == 3
    assert seen[0].headers["host"] == "web.example.test"
    assert "HTTP 400 3 times in a row" in result.verdict
    assert result.attempts[0].body == page[:300].decode()
    assert clock.time < 1.0


def test_a_redirect_is_recorded_with_where_it_points() -> None:
    handler, _ = answers(httpx.Response(302, headers={"Location": "/accounts/login/"}))
    result = check(handler, local())
    assert [a.location for a in result.attempts] == ["/accounts/login/"] * 3
    assert "HTTP 302 to /accounts/login/ 3 times in a row" in result.verdict


def test_not_ready_answers_and_changing_ones_are_retried() -> None:
    """503 (and 502, 504) says "not yet": retried to the end. Different failing
    answers are a service still changing: the check goes on until three agree."""
    handler, seen = answers(httpx.Response(503))
    assert len(check(handler, local(retries=6)).attempts) == 7
    handler, seen = answers(
        httpx.Response(500), httpx.Response(404), httpx.Response(500), httpx.Response(404),
        httpx.Response(404), httpx.Response(404), ok_json(),
    )  # fmt: skip
    result = check(handler, local())
    assert len(seen) == 6 and not result.healthy
    handler, seen = answers(httpx.Response(500), httpx.Response(500), ok_json())
    assert check(handler, local()).healthy
