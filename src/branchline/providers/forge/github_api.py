"""The GitHub REST client branchline posts with: githubkit, signed in with a token
or as a GitHub App, with GitHub's limits handled the way GitHub documents them.

- **Signing in.** A token (`GITHUB_TOKEN` or `[forge.github] token`) or a GitHub App:
  githubkit signs a JWT with the App's key, exchanges it for an installation token
  and takes a new one a minute before it expires. The installation is looked up for
  the repository unless the config names it. A token GitHub refuses mid-way (an
  installation token revoked early) is dropped and asked for once more.
- **Rate limits.** A primary limit (`x-ratelimit-remaining: 0`, wait until
  `x-ratelimit-reset`) and a secondary one (`retry-after`, or GitHub's message
  without it: a minute) are waited out, jittered, until `rate_limit_wait` is spent;
  then the call fails naming the limit.
- **Bursts.** Writes are spaced `write_interval` apart (GitHub asks for a second),
  which keeps comment and status bursts under the secondary limits.
- **Lost answers.** A read is retried on 5xx and on a lost connection; a write is
  not (it may have happened), and its caller finds out what did.
Every answer is read as JSON for the fields branchline uses, never through the
generated models (which break when GitHub adds or drops a field). The token never
reaches an error or a log.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from githubkit import (
    AppAuthStrategy,
    AppInstallationAuthStrategy,
    GitHub,
    Response,
    TokenAuthStrategy,
)
from githubkit.cache import MemCacheStrategy
from githubkit.exception import (
    GitHubException,
    RateLimitExceeded,
    RequestError,
    RequestFailed,
    RequestTimeout,
    SecondaryRateLimitExceeded,
)

from branchline.errors import BranchlineError, UsageError
from branchline.providers.calls import CallCount

TOKEN_VARIABLE = "GITHUB_TOKEN"  # noqa: S105 - the variable's name, not a token
READ_RETRIES = 3
SECONDARY_DEFAULT = 60.0  # seconds: GitHub's advice when a secondary limit names no wait
T = TypeVar("T")


class GitHubError(BranchlineError):
    """GitHub refused or failed a call; `status` as GitHub gave it."""

    def __init__(self, message: str, *, status: int | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.status = status


class GitHubRateLimitError(GitHubError):
    """A rate limit outlasted `rate_limit_wait`."""


@dataclass(frozen=True)
class Credentials:
    """How to sign in: a token, or a GitHub App (id, PEM key, installation or None)."""

    token: str | None = None
    app_id: int | None = None
    private_key: str | None = field(default=None, repr=False)
    installation_id: int | None = None

    def __repr__(self) -> str:
        how = "app" if self.app_id is not None else "token" if self.token else "none"
        return f"Credentials({how})"


def missing_token(repository: str) -> UsageError:
    return UsageError(
        f"no GitHub token for {repository}: [forge.github] needs a token or a GitHub App",
        hint=f"Set {TOKEN_VARIABLE} (a token with the repository's pull requests, issues, "
        "commit statuses and deployments), or `app_id` and `private_key` under "
        "[forge.github]; the README's GitHub part lists the permissions.",
    )


class GitHubClient:
    """One repository's REST calls. Construction does no I/O."""

    def __init__(
        self, *, repository: str, credentials: Credentials, api_url: str = "https://api.github.com",
        rate_limit_wait: float = 600.0, write_interval: float = 1.0, timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:  # fmt: skip
        owner, _, name = repository.partition("/")
        self.repository = repository
        self.owner, self.name = owner, name
        self.credentials = credentials
        self.api_url = api_url.rstrip("/")
        self.rate_limit_wait = rate_limit_wait
        self.write_interval = write_interval
        self.timeout = timeout
        self.transport = transport  # tests answer with their own
        self.count = CallCount()
        # Per event loop (a connection pool belongs to one): the signed-in client, the
        # connections its requests share, the lock that spaces writes.
        self._githubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, GitHub[Any]] = (
            weakref.WeakKeyDictionary()
        )
        self._pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Pool] = (
            weakref.WeakKeyDictionary()
        )
        self._write_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        self._installation_id: int | None = None
        self._last_write = 0.0

    # -- signing in -------------------------------------------------------------

    async def github(self) -> GitHub[Any]:
        """The signed-in githubkit client (an App's installation found on first use)."""
        loop = asyncio.get_running_loop()
        known = self._githubs.get(loop)
        if known is not None:
            return known
        creds = self.credentials
        if creds.app_id is not None and creds.private_key:
            if self._installation_id is None:
                self._installation_id = creds.installation_id or await self._installation()
            installation = self._installation_id
            auth: Any = AppInstallationAuthStrategy(
                creds.app_id, creds.private_key, installation_id=installation
            )
        elif creds.token:
            auth = TokenAuthStrategy(creds.token)
        else:
            raise missing_token(self.repository)
        self._githubs[loop] = made = self._client(auth)
        return made

    def _client(self, auth: Any) -> GitHub[Any]:
        return GitHub(
            auth, base_url=self.api_url, auto_retry=False, timeout=self.timeout,
            user_agent="branchline", http_cache=False, cache_strategy=MemCacheStrategy(),
            async_transport=self.transport or self._pool(),
        )  # fmt: skip

    def _pool(self) -> _Pool:
        """This loop's connections. githubkit makes a client per request and closes it
        after; kept here, the connections (and TLS set-up) outlive each request."""
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is None:
            self._pools[loop] = pool = _Pool(httpx.AsyncHTTPTransport(retries=0))
        return pool

    async def aclose(self) -> None:
        """Close this loop's connections."""
        pool = self._pools.pop(asyncio.get_running_loop(), None)
        self._githubs.pop(asyncio.get_running_loop(), None)
        if pool is not None:
            await pool.inner.aclose()

    async def _installation(self) -> int:
        creds = self.credentials
        assert creds.app_id is not None and creds.private_key
        app = self._client(AppAuthStrategy(creds.app_id, creds.private_key))
        try:
            found = await self._call(
                "GET /repos/{owner}/{repo}/installation",
                lambda _: app.rest.apps.async_get_repo_installation(self.owner, self.name),
                write=False, client=app,
            )  # fmt: skip
        except GitHubError as exc:
            if exc.status == 404:
                raise GitHubError(
                    f"the GitHub App {creds.app_id} is not installed on {self.repository}",
                    status=404,
                    hint="Install the App on the repository (its settings page, "
                    "'Install App'), or set `installation_id` under [forge.github].",
                ) from None
            raise
        return int(found.json()["id"])

    # -- calls ------------------------------------------------------------------------

    async def read(
        self, route: str, call: Callable[[GitHub[Any]], Awaitable[Response[Any]]]
    ) -> Any:
        """A GET's JSON answer (retried on 5xx and lost connections)."""
        return (await self._call(route, call, write=False)).json()

    async def write(
        self, route: str, call: Callable[[GitHub[Any]], Awaitable[Response[Any]]]
    ) -> Any:
        """A change's JSON answer (None when it has no body), spaced from the last."""
        await self._pace()
        answer = await self._call(route, call, write=True)
        return answer.json() if answer.content else None

    async def read_pages(
        self, route: str, call: Callable[[GitHub[Any], int], Awaitable[Response[Any]]],
        *, limit: int = 50,
    ) -> list[Any]:  # fmt: skip
        """Every item of a paged list (100 per page), following GitHub's `Link` header."""
        items: list[Any] = []
        for page in range(1, limit + 1):
            answer = await self._call(route, functools.partial(_paged, call, page), write=False)
            data = answer.json()
            items.extend(data if isinstance(data, list) else data.get("files", []))
            if 'rel="next"' not in answer.headers.get("link", ""):
                break
        return items

    async def _pace(self) -> None:
        lock = self._write_locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())
        async with lock:
            wait = self._last_write + self.write_interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._last_write = time.monotonic()

    async def _call(
        self, route: str, send: Callable[[GitHub[Any]], Awaitable[Response[T]]], *,
        write: bool, client: GitHub[Any] | None = None,
    ) -> Response[T]:  # fmt: skip
        began = time.monotonic()
        attempt = 0
        refreshed = False
        while True:
            self.count.called(route)
            try:
                try:
                    return await send(client or await self.github())
                except RequestError as wrapped:
                    # An App's token exchange failing inside the auth flow arrives
                    # wrapped: handled as the refusal it is.
                    if isinstance(wrapped.exc, RequestFailed):
                        raise wrapped.exc from None
                    raise
            except RateLimitExceeded as exc:
                wait = exc.retry_after.total_seconds()
                kind = "secondary" if isinstance(exc, SecondaryRateLimitExceeded) else "primary"
                await self._wait_out(route, wait, began, kind)
            except RequestFailed as exc:
                status = exc.response.status_code
                if status == 403 and _secondary(exc):
                    await self._wait_out(route, SECONDARY_DEFAULT, began, "secondary")
                elif status == 401 and self.credentials.app_id is not None and not refreshed:
                    refreshed = True  # an installation token revoked early: a new one
                    await self._forget_tokens()
                elif not write and status >= 500 and attempt < READ_RETRIES:
                    attempt += 1
                    await self._backoff(attempt)
                else:
                    raise self._error(route, exc) from None
            except (RequestTimeout, RequestError) as exc:
                if write or attempt >= READ_RETRIES:
                    raise GitHubError(
                        f"GitHub did not answer {route}: {_reason(exc)}",
                        hint=f"Check that {self.api_url} is reachable from this machine.",
                    ) from None
                attempt += 1
                await self._backoff(attempt)
            except GitHubException as exc:
                raise GitHubError(f"GitHub call {route} failed: {_reason(exc)}") from None
            self.count.retries += 1

    async def _wait_out(self, route: str, wait: float, began: float, kind: str) -> None:
        wait = max(0.0, wait) + random.uniform(0.0, 1.0)  # noqa: S311 - jitter, not a secret
        spent = time.monotonic() - began
        if spent + wait > self.rate_limit_wait:
            raise GitHubRateLimitError(
                f"GitHub's {kind} rate limit held {route} back for longer than "
                f"[forge.github] rate_limit_wait ({self.rate_limit_wait:g} s)",
                status=429,
                hint="Wait for the limit to reset (GitHub's x-ratelimit-reset), or raise "
                "`rate_limit_wait`; a GitHub App gets a higher limit than a token.",
            )
        self.count.waited += wait
        await asyncio.sleep(wait)

    async def _backoff(self, attempt: int) -> None:
        await asyncio.sleep(min(8.0, 0.25 * 2**attempt) * random.uniform(0.5, 1.0))  # noqa: S311

    async def _forget_tokens(self) -> None:
        """Drop the installation token: the next call signs in afresh (each client keeps
        its tokens in a cache of its own, never shared with another project's)."""
        self._githubs.pop(asyncio.get_running_loop(), None)

    def _error(self, route: str, exc: RequestFailed) -> GitHubError:
        status = exc.response.status_code
        message = _message(exc.response)
        if status == 401:
            return GitHubError(
                f"GitHub refused the credentials for {self.repository} ({message})",
                status=status,
                hint=f"Check {TOKEN_VARIABLE} (or the App's id and key): it may be "
                "mistyped, expired or revoked.",
            )
        if status == 403:
            return GitHubError(
                f"GitHub forbade {route} on {self.repository}: {message}",
                status=status,
                hint="Give the token (or the App) the permissions the README's GitHub part "
                "lists: pull requests, issues and commit statuses read and write, "
                "deployments write, contents read.",
            )
        if status == 404:
            return GitHubError(
                f"GitHub answered 404 for {route} on {self.repository}: {message}",
                status=status,
                hint="Check `[forge.github] repository` (owner/name), and that the token "
                "can see it (a token GitHub does not let read a private repository gets 404).",
            )
        return GitHubError(f"GitHub answered {status} for {route}: {message}", status=status)


class _Pool(httpx.AsyncBaseTransport):
    """A transport githubkit's per-request clients share: their close leaves it open
    (`GitHubClient.aclose` closes it)."""

    def __init__(self, inner: httpx.AsyncHTTPTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        """Kept open: the next request's client uses it too."""


def _paged(
    call: Callable[[GitHub[Any], int], Awaitable[Response[Any]]], page: int, github: GitHub[Any]
) -> Awaitable[Response[Any]]:
    return call(github, page)


def _secondary(exc: RequestFailed) -> bool:
    return "secondary rate limit" in _message(exc.response).lower()


def _message(response: Response[Any]) -> str:
    try:
        data = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return str(data["message"])[:300]
    return f"HTTP {response.status_code}"


def _reason(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, httpx.HTTPError):
        return type(cause).__name__
    return type(exc).__name__
