"""Calls to Cloudflare's API, for every provider that makes them (DNS records, Workers),
through the official `cloudflare` SDK's async client. One home for how a call is made,
retried and explained; each provider's client adds the calls it needs.

Every call goes through the SDK's `with_raw_response` and reads the JSON envelope for
the fields branchline uses: some of the SDK's 5.9 models fail to build under pydantic
2.14, and its record models are a union of every record type.

The SDK's own retries are off (`max_retries=0`): it would retry a POST on a 5xx, and it
cannot bound the waits by a deadline. Here:
- a 429 is waited out as its `Retry-After` says (with jitter), for any method;
- a GET's 5xx, timeouts and lost connections are asked again with backoff;
- everything stops at the call's deadline, with an error saying what was met.
A refused token names the setting that holds it; the token never reaches an error or
a log.

The SDK does not block the event loop once made: its HTTP is httpx's async client,
and its one blocking probe (the platform, for a header) runs in a thread
(`asyncify`). Making it loads the CA certificates: done in a thread too.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import cloudflare
import httpx
from cloudflare import AsyncCloudflare

from branchline.errors import BranchlineError
from branchline.providers.calls import CallCount

TOKEN_VARIABLE = "CLOUDFLARE_API_TOKEN"  # noqa: S105 - the variable's name
DEFAULT_API_URL = "https://api.cloudflare.com/client/v4"
RETRIED_READING = frozenset({500, 502, 503, 504})  # a GET changes nothing: ask again
FIRST_BACKOFF = 0.2  # seconds; doubled after each retry, at most MAX_BACKOFF
MAX_BACKOFF = 5.0
BAD_ZONE = 7003  # "Could not route to /zones/..., perhaps your object identifier is invalid?"
REFUSED_TOKEN_CODES = (9106, 6003, 10000, 9109)


class CloudflareError(BranchlineError):
    """Cloudflare refused or failed a call; `status` and `cf_code` (Cloudflare's error
    code) as it gave them."""

    def __init__(
        self, message: str, *, status: int | None = None, code: int | None = None,
        hint: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message, hint=hint)
        self.status = status
        self.cf_code = code


@dataclass(frozen=True)
class Wording:
    """What a client's errors tell the user to fix: the token (its permission) and the
    table of settings (`[dns.cloudflare]`)."""

    token_hint: str
    table: str
    network_hint: str = ""

    @property
    def unreachable(self) -> str:
        return (
            self.network_hint or f"Check the network (and `{self.table} api_url`); then try again."
        )


class CloudflareApiClient:
    """The SDK client, made once per event loop, and `_call`. Construction does no I/O."""

    wording: Wording

    def __init__(
        self,
        *,
        api_token: str | None,
        base_url: str = DEFAULT_API_URL,
        timeout: float = 30.0,
        deadline: float = 120.0,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.deadline = deadline  # per call, retries and waits included
        self.count = CallCount()
        self._token = api_token
        self._base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._given_http = http_client
        self._sdk: AsyncCloudflare | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _client(self) -> AsyncCloudflare:
        """The SDK client of the running event loop: a command may run several loops
        one after the other, and a connection belongs to the loop that opened it.
        Made in a thread: its HTTP client loads the CA certificates (25-50 ms)."""
        if not self._token:
            raise CloudflareError(
                f"no Cloudflare API token: {self.wording.table} needs one",
                hint=self.wording.token_hint,
            )
        loop = asyncio.get_running_loop()
        if self._sdk is not None and self._loop is loop:
            return self._sdk
        made = await asyncio.to_thread(
            AsyncCloudflare, api_token=self._token, base_url=self._base_url, max_retries=0,
            timeout=self._timeout, http_client=self._given_http,
        )  # fmt: skip
        if self._sdk is not None and self._loop is loop:  # a concurrent call made one first
            if self._given_http is None:
                await made.close()
            return self._sdk
        self._sdk, self._loop = made, loop
        return made

    async def aclose(self) -> None:
        """Close the connections; the client may still be used (it opens new ones)."""
        sdk, self._sdk, self._loop = self._sdk, None, None
        if sdk is not None and self._given_http is None:
            await sdk.close()

    async def _call(
        self, route: str, send: Callable[[AsyncCloudflare], Awaitable[Any]]
    ) -> dict[str, Any]:
        """One API call (the JSON envelope), retried as the module says."""
        reading = route.startswith("GET ")
        give_up = time.monotonic() + self.deadline
        backoff = FIRST_BACKOFF
        while True:
            self.count.called(route)
            wait: float | None = None
            try:
                answer = await send(await self._client())
            except cloudflare.APIStatusError as exc:
                if exc.status_code == 429:
                    wait = _retry_after(exc.response.headers) + random.uniform(0, 0.1)  # noqa: S311 - jitter
                    problem = self._error(route, exc)
                elif reading and exc.status_code in RETRIED_READING:
                    wait = backoff * random.uniform(0.5, 1.0)  # noqa: S311 - jitter
                    problem = self._error(route, exc)
                else:
                    raise self._error(route, exc) from None
            except (cloudflare.APIConnectionError, cloudflare.APITimeoutError) as exc:
                problem = CloudflareError(
                    f"Cloudflare did not answer {route}: {exc.__class__.__name__}",
                    hint=self.wording.unreachable,
                )
                if not reading:
                    raise problem from None
                wait = backoff * random.uniform(0.5, 1.0)  # noqa: S311 - jitter
            else:
                text = answer.http_response.text
                body: dict[str, Any] = json.loads(text) if text else {}
                return body
            if time.monotonic() + wait > give_up:
                raise CloudflareError(
                    f"{problem.message} (still so after {self.count.retries} retries, "
                    f"the call's deadline of {self.deadline:g} s would pass)",
                    status=problem.status,
                    code=problem.cf_code,
                    hint=problem.hint,
                )
            self.count.retries += 1
            self.count.waited += wait
            await asyncio.sleep(wait)
            backoff = min(backoff * 2, MAX_BACKOFF)

    def _error(self, route: str, exc: cloudflare.APIStatusError) -> CloudflareError:
        """Cloudflare's refusal in words, with the setting to fix."""
        errors = exc.body.get("errors") if isinstance(exc.body, dict) else None
        first = (
            errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
        )
        code = first.get("code") if isinstance(first.get("code"), int) else None
        said = str(first.get("message") or exc.response.reason_phrase)[:300]
        status = exc.status_code
        hint = None
        table = self.wording.table
        if status in (401, 403) or code in REFUSED_TOKEN_CODES:
            message = f"Cloudflare refused the API token ({status}, code {code}: {said})"
            hint = (
                self.wording.token_hint + " A token limited to other zones or accounts is "
                f"refused too: check the ids in `{table}`."
            )
        elif code == BAD_ZONE or (status == 404 and code in (7000, 7003)):
            message = f"Cloudflare knows no zone with this id ({status}, code {code}: {said})"
            hint = (
                f"Set `{table} zone_id` to the zone's id (the dashboard's Overview page of "
                "the zone shows it, under API)."
            )
        elif status == 429:
            message = f"Cloudflare's rate limit met on {route} ({said})"
            hint = "Cloudflare allows 1200 calls per 5 minutes; wait, or make fewer calls."
        else:
            message = f"Cloudflare refused {route}: {status}, code {code}: {said}"
        return CloudflareError(message, status=status, code=code, hint=hint)


def _retry_after(headers: httpx.Headers) -> float:
    """Seconds a 429 asks to wait (a number or an HTTP date); 1 when it does not say."""
    value = headers.get("retry-after")
    if value is None:
        return 1.0
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 1.0
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)
