"""A typed, async client of the part of Neon's API v2 branchline uses.

A small httpx client rather than the `neon-api` package: that package is
synchronous (every call would block the event loop serve's edge shares), and its
models require every field of the document it was generated from, so a field Neon
adds or drops breaks it (its own recorded responses lack `applications` and
`integrations`, which the current document requires). Here each answer is read for
the fields branchline uses, and no more.

Neon's behaviour, handled as Neon documents it:
- a change answers at once with the operations doing it; `wait` polls
  `/operations/{id}` until each is finished, with a deadline;
- `423 Locked` (a conflicting operation runs) and `429` (honouring `Retry-After`)
  are retried with backoff, as are a GET's 5xx and lost connections;
- 401/403 name the variable that holds the key (`NEON_API_KEY`).
The key and the passwords in connection URIs never reach an error or a log.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from branchline.errors import BranchlineError, UsageError
from branchline.providers.calls import CallCount

API_KEY_VARIABLE = "NEON_API_KEY"
RETRIED = frozenset({423, 429})
RETRIED_READING = frozenset({500, 502, 503, 504})  # a GET changes nothing: ask again
FINISHED = "finished"
PAGE = 400  # branches per page of a list (Neon allows up to 10000)
FAILED = frozenset({"failed", "error", "cancelled"})


class NeonError(BranchlineError):
    """Neon refused or failed a call; `status` and `code` as Neon gave them."""

    def __init__(
        self, message: str, *, status: int | None = None, code: str = "", hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.code = code


class NeonLimitError(NeonError):
    """The project holds as many branches as its plan allows."""


@dataclass(frozen=True)
class NeonBranch:
    id: str
    name: str
    parent_id: str | None
    current_state: str
    created_at: datetime
    default: bool = False
    pending_state: str | None = None
    expires_at: datetime | None = None
    logical_size: int | None = None
    parent_timestamp: datetime | None = None
    init_source: str | None = None
    annotation: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(
        cls, data: Mapping[str, Any], annotation: Mapping[str, str] | None = None
    ) -> NeonBranch:
        return cls(
            id=str(data["id"]),
            name=str(data["name"]),
            parent_id=_opt_str(data.get("parent_id")),
            current_state=str(data.get("current_state", "")),
            pending_state=_opt_str(data.get("pending_state")),
            created_at=_time(data["created_at"]),
            default=bool(data.get("default", data.get("primary", False))),
            expires_at=_opt_time(data.get("expires_at")),
            logical_size=data.get("logical_size"),
            parent_timestamp=_opt_time(data.get("parent_timestamp")),
            init_source=_opt_str(data.get("init_source")),
            annotation=dict(annotation or {}),
        )


@dataclass(frozen=True)
class NeonOperation:
    id: str
    action: str
    status: str
    branch_id: str | None = None
    error: str | None = None

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> NeonOperation:
        return cls(
            id=str(data["id"]),
            action=str(data.get("action", "")),
            status=str(data["status"]),
            branch_id=_opt_str(data.get("branch_id")),
            error=_opt_str(data.get("error")),
        )


class NeonClient:
    """One Neon project's API. `transport` lets tests hand in a recorded exchange."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None,
        project_id: str,
        timeout: float = 30.0,
        deadline: float = 120.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.project_id = project_id
        self.deadline = deadline  # per call, retries included
        self.count = CallCount()
        self._api_key = api_key
        self._base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._transport = transport
        self._http: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _client(self) -> httpx.AsyncClient:
        """The HTTP client of the running event loop: a command may run several loops
        one after the other, and a connection belongs to the loop that opened it."""
        loop = asyncio.get_running_loop()
        if self._http is None or self._loop is not loop:
            self._http = httpx.AsyncClient(
                base_url=self._base_url,
                timeout=self._timeout,
                transport=self._transport,
                headers={"Accept": "application/json", "User-Agent": "branchline"},
            )
            self._loop = loop
        return self._http

    async def aclose(self) -> None:
        """Close the connections; the client may still be used (it opens new ones)."""
        http, self._http, self._loop = self._http, None, None
        if http is not None:
            await http.aclose()

    # -- the project --------------------------------------------------------

    async def project(self) -> Mapping[str, Any]:
        body = await self._call("GET", f"/projects/{self.project_id}", route="GET /projects/{id}")
        return dict(body["project"])

    # -- branches -------------------------------------------------------------

    async def list_branches(self, search: str | None = None) -> list[NeonBranch]:
        """Every branch of the project (each with its annotation), page by page."""
        branches: list[NeonBranch] = []
        cursor: str | None = None
        while True:
            params: dict[str, str] = {"limit": str(PAGE)}
            if search:
                params["search"] = search
            if cursor:
                params["cursor"] = cursor
            body = await self._call(
                "GET", self._project("/branches"), params=params, route="GET /branches"
            )
            notes = body.get("annotations") or {}
            for item in body.get("branches", []):
                note = notes.get(item["id"]) or {}
                branches.append(NeonBranch.parse(item, note.get("value")))
            cursor = (body.get("pagination") or {}).get("next")
            # Neon gives a `next` cursor with every page, the last included.
            if not cursor or len(body.get("branches", [])) < PAGE:
                return branches

    async def find_branch(self, name: str) -> NeonBranch | None:
        """The branch called exactly `name` (names are unique in a project)."""
        for branch in await self.list_branches(search=name):
            if branch.name == name:
                return branch
        return None

    async def get_branch(self, branch_id: str) -> NeonBranch | None:
        try:
            body = await self._call(
                "GET", self._project(f"/branches/{branch_id}"), route="GET /branches/{id}"
            )
        except NeonError as exc:
            if exc.status == 404:
                return None
            raise
        note = body.get("annotation") or {}
        return NeonBranch.parse(body["branch"], note.get("value"))

    async def create_branch(
        self,
        name: str,
        parent_id: str,
        *,
        at: datetime | None = None,
        expires: datetime | None = None,
        schema_only: bool = False,
        annotation: Mapping[str, str] | None = None,
    ) -> tuple[NeonBranch, list[NeonOperation]]:
        """A new branch with a read-write endpoint; not idempotent on Neon's side (a
        taken name is refused): callers look for it by name first."""
        branch: dict[str, Any] = {"name": name, "parent_id": parent_id}
        if at is not None:
            branch["parent_timestamp"] = _iso(at)
        if expires is not None:
            branch["expires_at"] = _iso(expires)
        if schema_only:
            branch["init_source"] = "schema-only"
        payload: dict[str, Any] = {"branch": branch, "endpoints": [{"type": "read_write"}]}
        if annotation:
            payload["annotation_value"] = dict(annotation)
        body = await self._call(
            "POST", self._project("/branches"), json=payload, route="POST /branches"
        )
        return NeonBranch.parse(body["branch"], annotation), _operations(body)

    async def delete_branch(self, branch_id: str) -> list[NeonOperation] | None:
        """None when it was already gone."""
        try:
            body = await self._call(
                "DELETE", self._project(f"/branches/{branch_id}"), route="DELETE /branches/{id}"
            )
        except NeonError as exc:
            if exc.status == 404:
                return None
            raise
        return _operations(body)

    async def restore_branch(
        self, branch_id: str, source_branch_id: str, *, at: datetime | None = None
    ) -> list[NeonOperation]:
        """The branch's data replaced by its source's (now, or as of `at`)."""
        payload: dict[str, Any] = {"source_branch_id": source_branch_id}
        if at is not None:
            payload["source_timestamp"] = _iso(at)
        body = await self._call(
            "POST",
            self._project(f"/branches/{branch_id}/restore"),
            json=payload,
            route="POST /branches/{id}/restore",
        )
        return _operations(body)

    async def reset_role_password(self, branch_id: str, role: str) -> list[NeonOperation]:
        """A password of the branch's own for `role` (a branch starts with its parent's)."""
        body = await self._call(
            "POST",
            self._project(f"/branches/{branch_id}/roles/{role}/reset_password"),
            route="POST /branches/{id}/roles/{role}/reset_password",
        )
        return _operations(body)

    async def connection_uri(
        self, branch_id: str, *, database: str, role: str, pooled: bool
    ) -> str:
        body = await self._call(
            "GET",
            self._project("/connection_uri"),
            params={
                "branch_id": branch_id,
                "database_name": database,
                "role_name": role,
                "pooled": "true" if pooled else "false",
            },
            route="GET /connection_uri",
        )
        return str(body["uri"])

    async def schema(self, branch_id: str, *, database: str) -> str:
        body = await self._call(
            "GET",
            self._project(f"/branches/{branch_id}/schema"),
            params={"db_name": database},
            route="GET /branches/{id}/schema",
        )
        return str(body.get("sql") or "")

    async def compare_schema(self, branch_id: str, base_branch_id: str, *, database: str) -> str:
        body = await self._call(
            "GET",
            self._project(f"/branches/{branch_id}/compare_schema"),
            params={"base_branch_id": base_branch_id, "db_name": database},
            route="GET /branches/{id}/compare_schema",
        )
        return str(body.get("diff") or "")

    # -- operations -------------------------------------------------------------

    async def operation(self, operation_id: str) -> NeonOperation:
        body = await self._call(
            "GET", self._project(f"/operations/{operation_id}"), route="GET /operations/{id}"
        )
        return NeonOperation.parse(body["operation"])

    async def wait(
        self, operations: Sequence[NeonOperation], *, deadline: float, what: str
    ) -> None:
        """Until every operation is finished; a failed one, or the deadline, is an error."""
        began = time.monotonic()
        pending = [op for op in operations if op.status != FINISHED]
        delay = 0.25  # Neon's operations take a second or so: no point asking sooner
        while pending:
            for op in list(pending):
                if op.status in FAILED:
                    raise NeonError(
                        f"Neon's {op.action} operation for {what} {op.status}"
                        + (f": {op.error}" if op.error else ""),
                        hint="See the project's operations in the Neon console; retry once "
                        "it is over.",
                    )
            if time.monotonic() - began > deadline:
                names = ", ".join(f"{op.action} ({op.status})" for op in pending)
                raise NeonError(
                    f"Neon did not finish {what} within {deadline:.0f} s: {names} still running",
                    hint="Neon may be slow right now; run the command again (it picks up the "
                    "branch where it is) or raise [database.neon] operation_timeout.",
                )
            await self._sleep(delay)
            delay = min(delay * 1.5, 2.0)
            pending = [
                fresh for fresh in [await self.operation(op.id) for op in pending]
                if fresh.status != FINISHED
            ]  # fmt: skip

    # -- the one place a request is made ---------------------------------------------

    def _project(self, path: str) -> str:
        return f"/projects/{self.project_id}{path}"

    async def _call(
        self,
        method: str,
        path: str,
        *,
        route: str,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        if not self._api_key:
            raise missing_key()
        began = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            self.count.called(route)
            try:
                answer = await self._client().request(
                    method, path, json=json, params=params,
                    headers={"Authorization": f"Bearer {self._api_key}"},
                )  # fmt: skip
            except httpx.TransportError as exc:
                if method == "GET" and time.monotonic() - began < self.deadline:
                    await self._backoff(attempt, None)
                    continue
                raise NeonError(
                    f"could not reach Neon at {self._base_url}: {type(exc).__name__}",
                    hint="Check the network and [database.neon] api_url.",
                ) from None
            status = answer.status_code
            if status < 400:
                return dict(answer.json()) if answer.content else {}
            retried = status in RETRIED or (method == "GET" and status in RETRIED_READING)
            if retried and time.monotonic() - began < self.deadline:
                await self._backoff(attempt, answer.headers.get("retry-after"))
                continue
            raise self._refusal(answer, method, route)

    async def _backoff(self, attempt: int, retry_after: str | None) -> None:
        self.count.retries += 1
        jitter = 0.5 + random.random() / 2  # noqa: S311 (spreading retries, not a secret)
        delay = min(0.25 * 2 ** (attempt - 1), 8.0) * jitter
        if retry_after:
            with contextlib.suppress(ValueError):  # an HTTP date: the backoff is near enough
                delay = max(delay, min(float(retry_after), 60.0))
        await self._sleep(delay)

    async def _sleep(self, seconds: float) -> None:
        self.count.waited += seconds
        await asyncio.sleep(seconds)

    def _refusal(self, answer: httpx.Response, method: str, route: str) -> NeonError:
        status = answer.status_code
        try:
            body = answer.json()
            message, code = str(body.get("message", "")), str(body.get("code", ""))
        except ValueError:
            message, code = answer.text[:200], ""
        said = f"Neon answered {status} to {method} {route}" + (f": {message}" if message else "")
        if status in (401, 403):
            return NeonError(
                said, status=status, code=code,
                hint=f"Set {API_KEY_VARIABLE} to an API key of an account or organisation that "
                f"can reach project {self.project_id} (Neon console: Account settings, API keys).",
            )  # fmt: skip
        if status == 404 and route == "GET /projects/{id}":
            return NeonError(
                f"Neon has no project {self.project_id!r} for this API key", status=status,
                code=code, hint="Check [database.neon] project_id (Neon console: Settings, "
                "General), and that the key belongs to the project's account or organisation.",
            )  # fmt: skip
        if is_branch_limit(status, code, message):
            return NeonLimitError(said, status=status, code=code)
        return NeonError(said, status=status, code=code)


def is_branch_limit(status: int, code: str, message: str) -> bool:
    words = message.lower()
    return status in (402, 409, 422) and (
        "BRANCHES_LIMIT" in code.upper() or ("branch" in words and "limit" in words)
    )


def missing_key() -> UsageError:
    return UsageError(
        f"no Neon API key: {API_KEY_VARIABLE} is not set",
        hint=f"Export {API_KEY_VARIABLE} (Neon console: Account settings, API keys), or set "
        '[database.neon] api_key = "${NEON_API_KEY}" from a secret the shell provides.',
    )


def _operations(body: Mapping[str, Any]) -> list[NeonOperation]:
    return [NeonOperation.parse(op) for op in body.get("operations", [])]


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _time(value: Any) -> datetime:
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _opt_time(value: Any) -> datetime | None:
    return None if value in (None, "") else _time(value)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)
