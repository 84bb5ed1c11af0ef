"""Health checks after a deploy, with the reference's waits and exponential backoff.

The reference (a shell loop around curl) waits before the first check (30 s for
the first service deployed, 15 s for later ones, 0 s locally), then retries with
exponential backoff (5, 10, 20, 40 s ...) up to 10 times, at most 5 minutes per
service, and reports a missing connection as "HTTP 000". `check_health` keeps
all of that and adds:

- jitter on every backoff wait (a fraction of the wait, drawn from an injectable rng);
- a deadline that bounds the whole check, initial wait included: no wait runs
  past it, and the last attempt is placed so that its timeout ends by it;
- version checks: when the answer reports a commit or a release (JSON fields
  `commit` / `release`, or headers `X-Branchline-Commit` / `X-Branchline-Release`)
  and one is expected, the attempt passes only when it is the one being deployed,
  so an old process still answering cannot pass a new deploy;
- one `Attempt` record per try (status, reason, what the service reported) and a
  final `HealthResult` with a one-sentence verdict.

Network problems never raise: they become attempts with status 0 shown as
"HTTP 000 (<reason>)". Only a malformed URL or expectation raises `UsageError`,
before any attempt. Time comes from a `Clock`, so tests run without sleeping
(`ManualClock`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import ipaddress
import json
import random
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

from branchline.config import HealthConfig, format_duration
from branchline.errors import UsageError

if TYPE_CHECKING:  # httpx is imported by the checks: commands that only read do not load it
    import httpx

__all__ = [
    "COMMIT_HEADER",
    "RELEASE_HEADER",
    "Attempt",
    "Clock",
    "HealthPolicy",
    "HealthResult",
    "ManualClock",
    "RealClock",
    "check_health",
    "commits_match",
]

COMMIT_HEADER = "X-Branchline-Commit"
RELEASE_HEADER = "X-Branchline-Release"

_MAX_BODY = 64 * 1024  # a health answer is small; never read more than this
_SHOWN_BODY = 300  # bytes of a failed answer's body kept to show (an error page's start)
# The same answer this many times in a row is the release's answer, not a warm-up: the
# check stops there (a 400 from a host check, a redirect to a login page, a 500 on
# every request) instead of retrying for minutes. 502, 503 and 504 say "not ready
# yet" (a proxy in front, a readiness endpoint): those are retried to the end.
_DETERMINISTIC_AFTER = 3
_NOT_READY = frozenset({502, 503, 504})
_MAX_REPORTED = 200  # characters kept of a reported commit or release
_MIN_SHA = 7
_SHA = re.compile(r"[0-9a-f]{7,64}")
_MIN_ATTEMPT_TIMEOUT = 0.05
_USER_AGENT = "branchline-health"


# --------------------------------------------------------------------------- clocks


class Clock(Protocol):
    """Monotonic time and sleeping, injectable so tests never really sleep."""

    def now(self) -> float:
        """Monotonic seconds (only differences matter)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` (zero or more)."""
        ...


class RealClock:
    """The event loop's real time."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))


class ManualClock:
    """A clock for tests: `sleep` advances time at once and records the duration.

    `advance()` moves time forward without recording a sleep (e.g. from a mock
    transport, to simulate a slow answer).
    """

    def __init__(self, start: float = 0.0) -> None:
        self.time = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.time

    async def sleep(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        self.sleeps.append(seconds)
        self.time += seconds
        await asyncio.sleep(0)  # still a suspension point, like a real sleep

    def advance(self, seconds: float) -> None:
        self.time += seconds


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class HealthPolicy:
    """Timing of one check, in seconds. Build it from `[health]` with `from_config`.

    Attempts: 1 + `retries`. Before retry i (0-based) the check waits
    `backoff_base * 2**i` plus a jitter in [0, `jitter` * that wait).
    `deadline` bounds the whole check, the initial wait included.
    """

    first_wait: float = 0.0
    later_wait: float = 0.0
    retries: int = 10
    backoff_base: float = 0.1
    timeout_per_attempt: float = 5.0
    deadline: float = 300.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        for name in ("first_wait", "later_wait", "backoff_base"):
            if not getattr(self, name) >= 0:
                _bad_policy(f"{name} must be zero or more, got {getattr(self, name)!r}")
        for name in ("timeout_per_attempt", "deadline"):
            if not getattr(self, name) > 0:
                _bad_policy(f"{name} must be more than zero, got {getattr(self, name)!r}")
        if self.retries < 0:
            _bad_policy(f"retries must be zero or more, got {self.retries!r}")
        if not 0 <= self.jitter <= 1:
            _bad_policy(f"jitter must be between 0 and 1, got {self.jitter!r}")

    @classmethod
    def from_config(
        cls, health: HealthConfig, *, timeout_per_attempt: float = 5.0, jitter: float = 0.1
    ) -> HealthPolicy:
        """The policy of a `[health]` table (service_timeout becomes the deadline)."""
        return cls(
            first_wait=health.first_wait.total_seconds(),
            later_wait=health.later_wait.total_seconds(),
            retries=health.retries,
            backoff_base=health.backoff_base.total_seconds(),
            timeout_per_attempt=timeout_per_attempt,
            deadline=health.service_timeout.total_seconds(),
            jitter=jitter,
        )

    @property
    def max_attempts(self) -> int:
        return 1 + self.retries

    def wait_before(self, position: int) -> float:
        """The initial wait for the service deployed at `position` (0 = first)."""
        return self.first_wait if position == 0 else self.later_wait

    def backoff(self, retry: int) -> float:
        """The nominal wait before retry `retry` (0-based), without jitter."""
        return self.backoff_base * 2.0**retry

    def schedule(self) -> tuple[float, ...]:
        """Every nominal backoff wait: 5, 10, 20, 40 ... with the reference's values."""
        return tuple(self.backoff(retry) for retry in range(self.retries))

    def jittered(self, retry: int, rng: random.Random) -> float:
        delay = self.backoff(retry)
        return delay + rng.random() * self.jitter * delay


def _bad_policy(message: str) -> None:
    raise UsageError(
        f"invalid health check policy: {message}",
        hint="fix the `[health]` table in branchline.toml (or the option you passed)",
    )


# -------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Attempt:
    """One try: when, what came back, and whether it counts as healthy."""

    number: int  # 1-based
    at: float  # seconds since the check started (initial wait included)
    status: int  # HTTP status; 0 when nothing answered
    display: str  # "HTTP 200", "HTTP 000 (connection refused)"
    reason: str | None  # why it failed, or a note on a pass ("commit not reported")
    reported_commit: str | None
    reported_release: str | None
    elapsed_ms: float
    ok: bool
    location: str | None = None  # where a redirect pointed
    body: str | None = None  # the start of a failed answer's body

    def describe(self) -> str:
        """One line for logs: `#2 at 5.0 s: HTTP 200: answered commit ..., expected ...`."""
        text = f"#{self.number} at {self.at:.1f} s: {self.display}"
        if self.reason and self.status:
            text += f": {self.reason}"
        return text


@dataclass(frozen=True)
class HealthResult:
    """The outcome of a check: every attempt and a one-sentence verdict."""

    url: str
    healthy: bool
    attempts: tuple[Attempt, ...]
    verdict: str
    elapsed: float = 0.0  # seconds, initial wait included
    expected_commit: str | None = None
    expected_release: str | None = None

    @property
    def last(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        data = asdict(self)
        data["attempts"] = [asdict(attempt) for attempt in self.attempts]
        return data


# ---------------------------------------------------------------------- expectations


def commits_match(reported: str, expected: str) -> bool:
    """Short and full SHAs match: one is a prefix of the other, both >= 7 characters."""
    a, b = reported.strip().lower(), expected.strip().lower()
    if min(len(a), len(b)) < _MIN_SHA:
        return False
    return a.startswith(b) or b.startswith(a)


@dataclass(frozen=True)
class _Expectation:
    commit: str | None = None
    release: str | None = None

    @classmethod
    def build(cls, commit: str | None, release: str | None) -> _Expectation:
        if commit is not None:
            commit = commit.strip().lower()
            if not _SHA.fullmatch(commit):
                raise UsageError(
                    f"`{commit}` is not a commit SHA",
                    hint="pass at least 7 hexadecimal characters, e.g. --expect-commit abc1234",
                )
        if release is not None:
            release = release.strip()
            if not release:
                raise UsageError("the expected release is empty", hint="pass a release id")
        return cls(commit, release)

    def problems(self, commit: str | None, release: str | None) -> tuple[list[str], list[str]]:
        """(mismatches, notes): what fails the attempt, what cannot be checked."""
        mismatches: list[str] = []
        notes: list[str] = []
        if self.commit is not None:
            if commit is None:
                notes.append("commit not reported")
            elif not commits_match(commit, self.commit):
                mismatches.append(f"answered commit {commit}, expected {self.commit}")
        if self.release is not None:
            if release is None:
                notes.append("release not reported")
            elif release != self.release:
                mismatches.append(f"answered release {release}, expected {self.release}")
        return mismatches, notes


# ------------------------------------------------------------------------ answers


def _reported(headers: Mapping[str, str], body: bytes) -> tuple[str | None, str | None]:
    """The commit and release an answer reports: headers first, then JSON fields."""
    fields = _json_fields(body)
    commit = headers.get(COMMIT_HEADER) or fields.get("commit")
    release = headers.get(RELEASE_HEADER) or fields.get("release")
    return _clean(commit), _clean(release)


def _json_fields(body: bytes) -> dict[str, str]:
    if not body.lstrip().startswith(b"{"):
        return {}
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    found: dict[str, str] = {}
    for key in ("commit", "release"):
        value = data.get(key)
        if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
            found[key] = str(value)
    return found


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    value = " ".join(value.split())[:_MAX_REPORTED]
    return value or None


def _seconds(value: float) -> str:
    """5 -> "5s", 0.5 -> "0.5s", 4.998 -> "5s"."""
    return f"{value:.2f}".rstrip("0").rstrip(".") + "s"


def _no_answer_reason(exc: BaseException, timeout: float) -> str:
    """A short reason for "HTTP 000": connection refused, timed out after 5s, ..."""
    import httpx

    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return f"timed out after {_seconds(timeout)}"
    for cause in _causes(exc):
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, ConnectionResetError):
            return "connection reset"
        if isinstance(cause, socket.gaierror):
            return "host name not resolved"
        if isinstance(cause, ssl.SSLError):
            return f"TLS error: {_first_line(cause)}"
        if isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED:
            return "connection refused"
    return _reason_from_text(exc)


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _reason_from_text(exc: BaseException) -> str:
    text = _first_line(exc)
    lowered = text.lower()
    for needle, reason in (
        ("refused", "connection refused"),
        ("reset", "connection reset"),
        ("name or service not known", "host name not resolved"),
        ("nodename nor servname", "host name not resolved"),
        ("temporary failure in name resolution", "host name not resolved"),
        ("server disconnected", "connection closed without an answer"),
    ):
        if needle in lowered:
            return reason
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else ""


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _validate_url(url: str) -> httpx.URL:
    import httpx

    hint = "pass a full URL such as http://127.0.0.1:8080/health"
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        raise UsageError(f"`{url}` is not a valid URL", hint=hint) from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise UsageError(f"`{url}` is not an http:// or https:// URL", hint=hint)
    return parsed


# ------------------------------------------------------------------------- the check


async def check_health(
    url: str,
    *,
    policy: HealthPolicy,
    position: int = 0,
    expect_commit: str | None = None,
    expect_release: str | None = None,
    client: httpx.AsyncClient | None = None,
    clock: Clock | None = None,
    rng: random.Random | None = None,
    on_attempt: Callable[[Attempt], None] | None = None,
    host_header: str | None = None,
) -> HealthResult:
    """Check `url` until it answers 2xx (with the expected commit/release) or give up.

    `position` is the service's place in the deploy order (0 waits `first_wait`,
    later ones `later_wait`). `host_header` is sent as Host (the edge proxy routes
    by it). Redirects are not followed: like the reference's curl, only a 2xx passes.
    Raises UsageError for a malformed URL or expectation; never for network errors.
    """
    target = _validate_url(url)
    expectation = _Expectation.build(expect_commit, expect_release)
    headers = {"User-Agent": _USER_AGENT, "Accept": "application/json, */*"}
    if host_header:
        headers["Host"] = host_header
    check = _Check(
        url=str(target),
        policy=policy,
        expectation=expectation,
        clock=clock or RealClock(),
        rng=rng or random.Random(),  # noqa: S311 - jitter, not security
        on_attempt=on_attempt,
        headers=headers,
    )
    async with _client_scope(client, target) as http:
        return await check.run(http, position)


@contextlib.asynccontextmanager
async def _client_scope(
    client: httpx.AsyncClient | None, target: httpx.URL
) -> AsyncIterator[httpx.AsyncClient]:
    import httpx

    if client is not None:
        yield client
        return
    # Loopback checks must never go through a proxy from the environment.
    async with httpx.AsyncClient(
        follow_redirects=False, trust_env=not _is_loopback(target.host)
    ) as own:
        yield own


@dataclass
class _Check:
    url: str
    policy: HealthPolicy
    expectation: _Expectation
    clock: Clock
    rng: random.Random
    on_attempt: Callable[[Attempt], None] | None
    headers: dict[str, str]
    start: float = 0.0
    deadline_hit: bool = False
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def deadline_at(self) -> float:
        return self.start + self.policy.deadline

    async def run(self, http: httpx.AsyncClient, position: int) -> HealthResult:
        self.start = self.clock.now()
        last = await self._initial_wait(self.policy.wait_before(position))
        for number in range(1, self.policy.max_attempts + 1):
            attempt = await self._attempt(http, number)
            self.attempts.append(attempt)
            if self.on_attempt is not None:
                self.on_attempt(attempt)
            if attempt.ok or last or number == self.policy.max_attempts or self._same_answer():
                break
            go, last = await self._backoff_wait(self.policy.jittered(number - 1, self.rng))
            if not go:
                break
        return self._result()

    def _same_answer(self) -> bool:
        """The last attempts all got the same failing answer: it will not change."""
        recent = self.attempts[-_DETERMINISTIC_AFTER:]
        if len(recent) < _DETERMINISTIC_AFTER:
            return False
        first = recent[0]
        if first.status < 300 or first.status in _NOT_READY:
            return False  # no answer (still starting), or one that says "not yet"
        return all((a.status, a.location) == (first.status, first.location) for a in recent)

    # -- waits: never past the deadline; the last attempt's timeout ends by it

    def _room(self) -> float:
        """How long we may still wait and then make an attempt with a full timeout."""
        return self.deadline_at - self.clock.now() - self.policy.timeout_per_attempt

    async def _initial_wait(self, wait: float) -> bool:
        """Wait before the first attempt (always made); True when it is also the last."""
        room = max(self._room(), 0.0)
        if wait > 0:
            await self.clock.sleep(min(wait, room))
        if wait >= room:
            self.deadline_hit = True
            return True
        return False

    async def _backoff_wait(self, delay: float) -> tuple[bool, bool]:
        """Wait before a retry: (whether to attempt at all, whether it is the last)."""
        room = self._room()
        if room <= 0:
            self.deadline_hit = True
            return False, True
        if delay >= room:
            self.deadline_hit = True
            await self.clock.sleep(room)
            return True, True
        await self.clock.sleep(delay)
        return True, False

    # -- one attempt

    def _attempt_timeout(self) -> float:
        remaining = self.deadline_at - self.clock.now()
        return min(self.policy.timeout_per_attempt, max(remaining, _MIN_ATTEMPT_TIMEOUT))

    async def _attempt(self, http: httpx.AsyncClient, number: int) -> Attempt:
        import httpx

        began = self.clock.now()
        timeout = self._attempt_timeout()
        try:
            async with asyncio.timeout(timeout):
                status, answer_headers, body = await self._get(http, timeout)
        except (httpx.HTTPError, OSError, TimeoutError) as exc:
            why = _no_answer_reason(exc, timeout)
            return self._record(number, began, 0, f"HTTP 000 ({why})", why, None, None)
        commit, release = _reported(answer_headers, body)
        if not 200 <= status < 300:
            attempt = self._record(number, began, status, f"HTTP {status}", None, commit, release)
            shown = body[:_SHOWN_BODY].decode(errors="replace").strip()
            return dataclasses.replace(
                attempt, location=answer_headers.get("location"), body=shown or None
            )
        mismatches, notes = self.expectation.problems(commit, release)
        note = "; ".join(mismatches + notes) or None
        return self._record(
            number, began, status, f"HTTP {status}", note, commit, release, ok=not mismatches
        )

    async def _get(
        self, http: httpx.AsyncClient, timeout: float
    ) -> tuple[int, httpx.Headers, bytes]:
        async with http.stream("GET", self.url, headers=self.headers, timeout=timeout) as answer:
            body = bytearray()
            async for chunk in answer.aiter_bytes():
                body += chunk
                if len(body) >= _MAX_BODY:
                    break
            return answer.status_code, answer.headers, bytes(body[:_MAX_BODY])

    def _record(
        self,
        number: int,
        began: float,
        status: int,
        display: str,
        reason: str | None,
        commit: str | None,
        release: str | None,
        *,
        ok: bool = False,
    ) -> Attempt:
        return Attempt(
            number=number,
            at=round(began - self.start, 3),
            status=status,
            display=display,
            reason=reason,
            reported_commit=commit,
            reported_release=release,
            elapsed_ms=round((self.clock.now() - began) * 1000, 1),
            ok=ok,
        )

    # -- the verdict

    def _result(self) -> HealthResult:
        elapsed = self.clock.now() - self.start
        last = self.attempts[-1]
        return HealthResult(
            url=self.url,
            healthy=last.ok,
            attempts=tuple(self.attempts),
            verdict=self._verdict(last, elapsed),
            elapsed=round(elapsed, 3),
            expected_commit=self.expectation.commit,
            expected_release=self.expectation.release,
        )

    def _verdict(self, last: Attempt, elapsed: float) -> str:
        count = len(self.attempts)
        tries = f"{count} attempt{'s' if count != 1 else ''}"
        if last.ok:
            note = f" ({last.reason}, could not be checked)" if last.reason else ""
            return f"healthy after {tries} in {elapsed:.1f} s{note}"
        if last.status and last.reason:  # answered, but not the version being deployed
            mismatch = _deployed_phrase(last.reason)
            return f"unhealthy: {mismatch} ({tries} in {elapsed:.1f} s)"
        if self._same_answer():
            where = f" to {last.location}" if last.location else ""
            return (
                f"unhealthy: {last.display}{where} {count} times in a row in {elapsed:.1f} s: "
                "the release answers this way, not a warm-up"
            )
        if self.deadline_hit:
            deadline = format_duration(timedelta(seconds=self.policy.deadline))
            return f"unhealthy: deadline of {deadline} reached after {tries}; last: {last.display}"
        return f"unhealthy: {tries} failed in {elapsed:.1f} s; last: {last.display}"


def _deployed_phrase(reason: str) -> str:
    """ "answered commit X, expected Y" -> "answered commit X but Y is being deployed"."""
    return re.sub(r", expected (\S+)", r" but \1 is being deployed", reason)
