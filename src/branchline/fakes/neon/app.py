"""The fake Neon's HTTP side: Neon's API v2 paths under /api/v2 (Bearer auth, every
request and every response validated against Neon's OpenAPI document), and control
paths under /_fake for tests (not validated):

    POST /_fake/faults          {"status", "times", "method"?, "path"?, "retry_after"?}
    GET  /_fake/calls           calls by `METHOD path-template`, validation failures
    POST /_fake/settings        {"operation_delay"?, "branch_limit"?}
    POST /_fake/reset-counters
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from branchline.errors import BranchlineError
from branchline.fakes.neon.spec import (
    API_PREFIX,
    SpecRequest,
    SpecResponse,
    request_errors,
    response_errors,
)
from branchline.fakes.neon.world import ApiError, NeonWorld, one_line
from branchline.fakes.running import lifespan_answered
from branchline.masking import mask_url

logger = logging.getLogger(__name__)

Params = dict[str, str]
Query = dict[str, str]
Handler = Callable[[Params, Query, Any], Awaitable[tuple[int, Any]]]


@dataclass
class Fault:
    status: int
    times: int
    method: str | None = None
    path: re.Pattern[str] | None = None
    retry_after: float | None = None

    def matches(self, method: str, path: str) -> bool:
        if self.method and self.method.upper() != method:
            return False
        return self.path is None or self.path.search(path) is not None


@dataclass
class Counters:
    calls: Counter[str]
    total: int = 0
    request_failures: int = 0
    response_failures: int = 0
    faults_served: int = 0

    @classmethod
    def fresh(cls) -> Counters:
        return cls(Counter())


class FakeNeonApp:
    """An ASGI app over a `NeonWorld`."""

    def __init__(self, world: NeonWorld, api_key: str) -> None:
        self.world = world
        self._api_key = api_key
        self.faults: list[Fault] = []
        self.counters = Counters.fresh()
        self.failures: list[str] = []  # the last validation failures, for the test that hits one
        self.routes: list[tuple[str, str, re.Pattern[str], Handler]] = []
        for method, template, handler in self._table():
            pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
            self.routes.append((method, template, re.compile(f"^{pattern}$"), handler))

    def _table(self) -> list[tuple[str, str, Handler]]:
        p = "/projects/{project_id}"
        b = p + "/branches/{branch_id}"
        return [
            ("GET", p, self.get_project),
            ("GET", p + "/branches", self.list_branches),
            ("POST", p + "/branches", self.create_branch),
            ("GET", b, self.get_branch),
            ("PATCH", b, self.update_branch),
            ("DELETE", b, self.delete_branch),
            ("POST", b + "/restore", self.restore_branch),
            ("GET", b + "/schema", self.branch_schema),
            ("GET", b + "/compare_schema", self.compare_schema),
            ("GET", b + "/endpoints", self.list_endpoints),
            ("GET", b + "/databases", self.list_databases),
            ("GET", b + "/roles", self.list_roles),
            ("POST", b + "/roles/{role_name}/reset_password", self.reset_password),
            ("GET", p + "/operations/{operation_id}", self.get_operation),
            ("GET", p + "/connection_uri", self.connection_uri),
        ]

    # -- ASGI ---------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if await lifespan_answered(scope, receive, send):
            return
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        path = request.url.path
        if path.startswith("/_fake/"):
            response = await self.control(request, path)
        elif path == API_PREFIX or path.startswith(API_PREFIX + "/"):
            response = await self.api(request, path[len(API_PREFIX) :])
        else:
            response = error(404, f"no such path {path}")
        await response(scope, receive, send)

    async def api(self, request: Request, path: str) -> Response:
        method = request.method.upper()
        found = self.route(method, path)
        self.counters.total += 1
        template = found[0] if found else path
        self.counters.calls[f"{method} {template}"] += 1
        body = await request.body()
        spec_request = SpecRequest(
            method,
            path,
            query=list(request.query_params.multi_items()),
            headers=dict(request.headers),
            raw_body=body or None,
            content_type_header=request.headers.get("content-type", "application/json"),
        )
        response = await self.answer(request, method, path, found, spec_request, body)
        if found is None:
            return response
        raw = bytes(response.body)
        why = response_errors(
            spec_request,
            SpecResponse(
                response.status_code,
                raw or None,
                response.headers.get("content-type", ""),
                dict(response.headers),
            ),
        )
        if why is None:
            return response
        why = mask_url(why)  # the offending value may be a connection URI, password and all
        self.counters.response_failures += 1
        self._remember(f"response to {method} {path} ({response.status_code}): {why}")
        logger.error("fake neon: invalid response to %s %s: %s", method, template, why)
        return error(500, f"the fake Neon produced a response its OpenAPI document forbids: {why}")

    async def answer(
        self,
        request: Request,
        method: str,
        path: str,
        found: tuple[str, Params, Handler] | None,
        spec_request: SpecRequest,
        body: bytes,
    ) -> Response:
        fault = self._take_fault(method, path)
        if fault is not None:
            headers = {}
            if fault.status == 429 or fault.retry_after is not None:
                headers["Retry-After"] = f"{fault.retry_after or 1:g}"
            return error(fault.status, f"injected fault: {fault.status}", headers=headers)
        if not self._authorized(request.headers.get("authorization", "")):
            return error(401, "authentication required: a valid Bearer API key")
        if found is None:
            return error(404, f"no such path {method} {path}")
        _template, params, handler = found
        if params.get("project_id") != self.world.project_id:
            return error(404, f"project {params.get('project_id')} not found")
        why = request_errors(spec_request)
        why = mask_url(why) if why is not None else None
        if why is not None:
            self.counters.request_failures += 1
            self._remember(f"request {method} {path}: {why}")
            return error(400, why)
        self.world.sweep_expired()
        payload: Any = json.loads(body) if body else None
        try:
            status, out = await handler(params, dict(request.query_params), payload)
        except ApiError as exc:
            return error(exc.status, exc.message, code=exc.code, headers=exc.headers)
        except BranchlineError as exc:  # refused by the local provider
            return error(400, one_line(exc))
        except Exception as exc:
            logger.exception("fake neon: %s %s failed", method, path)
            return error(500, f"the fake Neon failed: {one_line(exc)}")
        return JSONResponse(out, status_code=status)

    def route(self, method: str, path: str) -> tuple[str, Params, Handler] | None:
        for verb, template, pattern, handler in self.routes:
            match = pattern.match(path)
            if match and verb == method:
                return template, match.groupdict(), handler
        return None

    def _authorized(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        return hmac.compare_digest(token.strip().encode(), self._api_key.encode())

    def _take_fault(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.times > 0 and fault.matches(method, path):
                fault.times -= 1
                self.counters.faults_served += 1
                self.faults = [f for f in self.faults if f.times > 0]
                return fault
        return None

    def _remember(self, failure: str) -> None:
        self.failures = [*self.failures[-19:], failure]

    # -- control ------------------------------------------------------------

    async def control(self, request: Request, path: str) -> Response:
        try:
            raw = await request.body()
            body: dict[str, Any] = json.loads(raw) if raw else {}
            if request.method == "GET" and path == "/_fake/calls":
                return JSONResponse(self.calls())
            if request.method == "POST" and path == "/_fake/faults":
                self.faults.append(
                    Fault(
                        status=int(body["status"]),
                        times=int(body.get("times", 1)),
                        method=body.get("method"),
                        path=re.compile(body["path"]) if body.get("path") else None,
                        retry_after=body.get("retry_after"),
                    )
                )
                return JSONResponse({"faults": len(self.faults)})
            if request.method == "POST" and path == "/_fake/settings":
                if "operation_delay" in body:
                    self.world.operation_delay = float(body["operation_delay"])
                if "branch_limit" in body:
                    self.world.branch_limit = int(body["branch_limit"])
                return JSONResponse(
                    {
                        "operation_delay": self.world.operation_delay,
                        "branch_limit": self.world.branch_limit,
                    }
                )
            if request.method == "POST" and path == "/_fake/reset-counters":
                self.counters = Counters.fresh()
                self.failures = []
                self.world.simulated_delay = 0.0
                return JSONResponse({"reset": True})
            if request.method == "GET" and path == "/_fake/health":
                return JSONResponse({"project_id": self.world.project_id})
        except (ValueError, KeyError, TypeError, re.error) as exc:
            return error(400, f"bad control request: {exc}")
        return error(404, f"no such control path {request.method} {path}")

    def calls(self) -> dict[str, Any]:
        c = self.counters
        return {
            "calls": dict(c.calls),
            "total": c.total,
            "validation_failures": {
                "request": c.request_failures,
                "response": c.response_failures,
            },
            "failures": list(self.failures),
            "faults_served": c.faults_served,
            "simulated_delay_seconds": round(self.world.simulated_delay, 3),
        }

    # -- Neon's API ------------------------------------------------------------

    async def get_project(self, params: Params, query: Query, body: Any) -> tuple[int, Any]:
        return 200, {"project": self.world.project_json()}

    async def list_branches(self, params: Params, query: Query, body: Any) -> tuple[int, Any]:
        world = self.world
        branches = list(world.branches.values())
        if search := query.get("search"):
            branches = [b for b in branches if search in b.name or search in b.id]
        sort_by = query.get("sort_by", "updated_at")
        descending = query.get("sort_order", "desc") == "desc"
        branches.sort(key=lambda b: (getattr(b, sort_by), b.id), reverse=descending)
        start = int(query.get("cursor") or 0) if (query.get("cursor") or "0").isdigit() else 0
        limit = int(query.get("limit") or 10000)
        page = branches[start : start + limit]
        pagination: dict[str, str] = {
            "sort_by": sort_by,
            "sort_order": query.get("sort_order", "desc"),
        }
        if start + limit < len(branches):
            pagination["next"] = str(start + limit)
        return 200, {
            "branches": [world.branch_json(b) for b in page],
            "annotations": {b.id: world.annotation_json(b) for b in page if b.annotation},
            "pagination": pagination,
        }

    async def create_branch(self, params: Params, query: Query, body: Any) -> tuple[int, Any]:
        return 201, self.world.create_branch(body or {})

    async def get_branch(self, params: Params, query: Query, body: Any) -> tuple[int, Any]:
        branch = self.world.branch(params["branch_id"])
        return 200, {
            **self.world.branch_body(branch),
            "annotation": self.world.annotation_json(branch),
        }

    async def update_branch(self, params: Params, query: Query, body: Any) -> tuple[int, Any]:
        return 200, self.world.update_branch(params["branch_id"], body or {})

    async def delete_branch(self, params: Params, query: Query, body: Any) -> tuple[int, Any]:
        return 200, self.world.delete_branch(params["branch_id"])

    async def restore_branch(self, params: Params, query: Query, body: Any) -> tuple[int, Any]:
        return 200, self.world.restore_branch(params["branch_id"], body or {})

    async def branch_schema(self, params: Params, query: Query, body: Any) -> tuple[int, Any]:
        if query.get("lsn") or query.get("timestamp"):
            raise ApiError(400, "the fake Neon gives a branch's current schema only")
        if query.get("format", "sql") != "sql":
            raise ApiError(400, "the fake Neon gives the schema as SQL only (format=sql)")
        sql = await self.world.schema(params["branch_id"], query["db_name"])
        return 200, {"sql": sql}

    async def compare_schema(self, params: Params, query: Query, body: Any) -> tuple[int, Any]:
        if any(query.get(k) for k in ("lsn", "timestamp", "base_lsn", "base_timestamp")):
            raise ApiError(400, "the fake Neon compares current schemas only")
        diff = await self.world.compare_schema(
            params["branch_id"], query.get("base_branch_id"), query["db_name"]
        )
        return 200, {"diff": diff}

    async def list_endpoints(self, params: Params, query: Query, body: Any) -> tuple[int, Any]:
        branch = self.world.branch(params["branch_id"])
        endpoints = [self.world.endpoint_json(branch)] if branch.endpoint_id else []
        return 200, {"endpoints": endpoints}

    async def list_databases(self, params: Params, query: Query, body: Any) -> tuple[int, Any]:
        branch = self.world.branch(params["branch_id"])
        return 200, {"databases": [self.world.database_json(branch)]}

    async def list_roles(self, params: Params, query: Query, body: Any) -> tuple[int, Any]:
        branch = self.world.branch(params["branch_id"])
        return 200, {"roles": [self.world.role_json(branch)]}

    async def reset_password(self, params: Params, query: Query, body: Any) -> tuple[int, Any]:
        """A new password for the branch's role (any `role_name` means the branch's
        application role, as in `connection_uri`); the new URI carries it."""
        return 200, self.world.reset_password(params["branch_id"])

    async def get_operation(self, params: Params, query: Query, body: Any) -> tuple[int, Any]:
        op = self.world.operations.get(params["operation_id"])
        if op is None:
            raise ApiError(404, f"operation {params['operation_id']} not found")
        return 200, {"operation": op.as_json(self.world.project_id)}

    async def connection_uri(self, params: Params, query: Query, body: Any) -> tuple[int, Any]:
        """The branch's working URI. `role_name` is accepted whatever it is (every URI is
        the branch's application role's); `pooled=true` gets the same direct URI (the
        fake has no pooler); `endpoint_id` is ignored."""
        branch_id = query.get("branch_id") or self.world.default_id
        uri = await self.world.connection_uri(branch_id, query["database_name"])
        return 200, {"uri": uri}


def error(
    status: int, message: str, *, code: str = "", headers: dict[str, str] | None = None
) -> JSONResponse:
    """Neon's GeneralError body."""
    return JSONResponse({"code": code, "message": message}, status_code=status, headers=headers)
