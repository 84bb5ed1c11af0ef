"""The fake GitHub's HTTP side: GitHub's REST paths (token or App JWT auth, every
request and every response validated against GitHub's OpenAPI document, rate-limit
headers on every answer) and control paths under /_fake for tests (not validated):

    POST   /_fake/faults             {"kind", "times"?, "method"?, "path"?, "retry_after"?,
                                      "status"?, "delay"?}
    GET    /_fake/calls              {"by_route": {"METHOD template": n}, "total", "invalid": [...]}
    GET    /_fake/state              everything the world keeps
    POST   /_fake/pulls              seed a pull request -> {"number"}
    PATCH  /_fake/pulls/{n}          {"sha"?, "state"?, "merged"?, "files"?}
    POST   /_fake/issues/{n}/labels  {"name"}: a label added as a person would
    PUT    /_fake/permissions/{login} {"permission"}: admin maintain write triage read none
    POST   /_fake/reset-counters
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from branchline.fakes.github import spec
from branchline.fakes.github.api import Call, Found, GitHubApi, Reply
from branchline.fakes.github.auth import Credentials
from branchline.fakes.github.faults import Fault, RateLimit, fault_answer
from branchline.fakes.github.records import Actor, ApiError
from branchline.fakes.github.render import Renderer
from branchline.fakes.github.shapes import DOCS
from branchline.fakes.github.world import GitHubWorld, snapshot
from branchline.fakes.openapi import SpecRequest, SpecResponse
from branchline.fakes.running import lifespan_answered

logger = logging.getLogger(__name__)


class FakeGitHubApp:
    """An ASGI app over a `GitHubWorld` and its `Credentials`."""

    def __init__(self, world: GitHubWorld, credentials: Credentials) -> None:
        self.world = world
        self.credentials = credentials
        self.handlers = GitHubApi(world, credentials, Renderer(world, "http://127.0.0.1"))
        self.faults: list[Fault] = []
        self.rate = RateLimit()
        self.by_route: Counter[str] = Counter()
        self.invalid: list[dict[str, Any]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if await lifespan_answered(scope, receive, send):
            return
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        if request.url.path.startswith("/_fake/"):
            response = await self.control(request, request.url.path)
        else:
            response = await self.api(request)
        await response(scope, receive, send)

    # -- GitHub's API ------------------------------------------------------------

    async def api(self, request: Request) -> Response:
        method = request.method.upper()
        # Routed undecoded: a label's name may hold an encoded slash.
        path = request.scope.get("raw_path", request.url.path.encode()).decode("latin-1")
        path = path.partition("?")[0]
        found = self.handlers.route(method, path)
        template = found[0].template if found else path
        self.by_route[f"{method} {template}"] += 1
        raw = await request.body()
        checked = spec.spec_request(
            method, spec.spec_path(template, found[1]) if found else path,
            query=list(request.query_params.multi_items()),
            headers=dict(request.headers), body=raw or None,
            content_type=request.headers.get("content-type", "application/json"),
        )  # fmt: skip
        status, body, headers = await self.answer(request, found, template, checked)
        response = JSONResponse(body, status, headers) if body is not None else Response(
            status_code=status, headers=headers)  # fmt: skip
        if found is None:
            return response  # no operation of the document to hold it to
        why = spec.response_errors(
            checked,
            SpecResponse(status, bytes(response.body) or None,
                         response.headers.get("content-type", ""), dict(response.headers)),
        )  # fmt: skip
        if why is None:
            return response
        self._record("response", method, request.url.path, status, why)
        return error(500, f"the fake GitHub answered what GitHub's document forbids: {why[:2000]}",
                     headers=self.rate.headers())  # fmt: skip

    async def answer(
        self, request: Request, found: Found | None, template: str, checked: SpecRequest
    ) -> tuple[int, Any, dict[str, str]]:
        """(status, body, headers) of one API call: a fault, a refusal or the handler's."""
        method, path = checked.method_name, request.url.path
        fault = self._take_fault(method, path, template)
        if fault is not None and fault.kind == "latency":
            await asyncio.sleep(fault.delay if fault.delay is not None else 1.0)
        elif fault is not None:
            return fault_answer(fault, self.rate)
        self.rate.spend()
        headers = self.rate.headers()
        try:
            reply = self._dispatch(request, found, checked)
        except ApiError as exc:
            body: dict[str, Any] = {"message": exc.message, "documentation_url": DOCS,
                                    "status": str(exc.status)}  # fmt: skip
            if exc.errors is not None:
                body["errors"] = exc.errors
            return exc.status, body, headers
        except Exception:  # the fake's own fault: GitHub's 500, and the log says why
            logger.exception("fake github: %s %s failed", method, path)
            return 500, {"message": "Server Error", "documentation_url": DOCS}, headers
        return reply.status, reply.body, {**headers, **reply.headers}

    def _dispatch(self, request: Request, found: Found | None, checked: SpecRequest) -> Reply:
        method, path, raw = checked.method_name, request.url.path, checked.raw_body
        if found is None:
            raise ApiError(404, "Not Found")
        route, params = found
        header = request.headers.get("authorization", "")
        actor = Actor("")
        if route.auth == "jwt":
            self.credentials.app(header)
        else:
            actor = self.credentials.actor(header)
        if "owner" in params and not self.world.owns(params["owner"], params["repo"]):
            raise ApiError(404, "Not Found")
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            self._record("request", method, path, 400, "the body is not JSON")
            raise ApiError(400, "Problems parsing JSON") from None
        why = spec.request_errors(checked)
        if why is not None:
            self._record("request", method, path, 422, why)
            raise ApiError(422, "Invalid request.\n\n" + why.splitlines()[0],
                           [{"resource": route.template, "code": "invalid", "message": line}
                            for line in why.splitlines()])  # fmt: skip
        # URLs in answers point back at the fake, wherever it was reached.
        self.handlers.render.api = str(request.base_url).rstrip("/")
        call = Call(params, dict(request.query_params), body, str(request.url), actor)
        return route.handler(call)

    def _take_fault(self, method: str, path: str, template: str) -> Fault | None:
        for fault in self.faults:
            if fault.times > 0 and fault.matches(method, path, template):
                fault.times -= 1
                self.faults = [f for f in self.faults if f.times > 0]
                return fault
        return None

    def _record(self, kind: str, method: str, path: str, status: int, why: str) -> None:
        self.invalid.append(
            {"kind": kind, "method": method, "path": path, "status": status, "errors": why}
        )
        logger.error("fake github: invalid %s %s %s: %s", kind, method, path, why)

    # -- control ------------------------------------------------------------------

    async def control(self, request: Request, path: str) -> Response:
        try:
            raw = await request.body()
            body: dict[str, Any] = json.loads(raw) if raw else {}
            out = self._control(request.method, path.removeprefix("/_fake/").split("/"), body)
        except ApiError as exc:
            return error(exc.status, exc.message)
        except (ValueError, KeyError, TypeError) as exc:
            return error(400, f"bad control request: {exc}")
        if out is None:
            return error(404, f"no such control path {request.method} {path}")
        return JSONResponse(out)

    def _control(self, method: str, parts: list[str], body: dict[str, Any]) -> Any:
        world = self.world
        match method, parts:
            case "GET", ["calls"]:
                return self.calls()
            case "GET", ["state"]:
                return {**snapshot(world), "tokens_issued": self.credentials.issued}
            case "GET", ["health"]:
                return {"repository": world.full_name}
            case "POST", ["faults"]:
                self.faults.append(Fault(**body))
                return {"faults": len(self.faults)}
            case "POST", ["reset-counters"]:
                self.by_route, self.invalid = Counter(), []
                return {"reset": True}
            case "POST", ["pulls"]:
                pull = world.add_pull(
                    head=str(body["head"]), sha=body.get("sha"), base=body.get("base", "main"),
                    base_sha=body.get("base_sha"), title=body.get("title", ""),
                    body=body.get("body"), fork=bool(body.get("fork", False)),
                    files=list(body.get("files") or []), number=body.get("number"),
                    author=Actor(body.get("author") or "octocat"),
                    state=body.get("state", "open"),
                )  # fmt: skip
                return {"number": pull.number}
            case "PATCH", ["pulls", number]:
                world.update_pull(int(number), sha=body.get("sha"), state=body.get("state"),
                                  merged=body.get("merged"), files=body.get("files"))  # fmt: skip
                return {"number": int(number)}
            case "POST", ["issues", number, "comments"]:
                said = world.add_comment(Actor(str(body["author"])), int(number), str(body["body"]))
                return {"id": said.id}
            case "POST", ["issues", number, "labels"]:
                world.add_labels(int(number), [str(body["name"])])
                return {"labels": world.issue(int(number)).labels}
            case "PUT", ["permissions", login]:
                world.set_role(login, str(body["permission"]))
                return {"login": login, "permission": body["permission"]}
        return None

    def calls(self) -> dict[str, Any]:
        return {
            "by_route": dict(self.by_route),
            "total": sum(self.by_route.values()),
            "invalid": list(self.invalid),
            "tokens_issued": self.credentials.issued,
        }


def build_app(
    repository: str = "octo/codex",
    *,
    token: str,
    app_id: int | None = None,
    app_key_pem: str | None = None,
    installation_id: int = 1,
    token_lifetime: float = 3600.0,
) -> FakeGitHubApp:
    """The fake as an ASGI app in this process (for `httpx.ASGITransport`)."""
    world = GitHubWorld(repository)
    credentials = Credentials(
        token, login=world.owner, app_id=app_id, app_key_pem=app_key_pem,
        installation_id=installation_id, token_lifetime=token_lifetime,
    )  # fmt: skip
    return FakeGitHubApp(world, credentials)


def error(status: int, message: str, *, headers: dict[str, str] | None = None) -> JSONResponse:
    """GitHub's error body."""
    return JSONResponse({"message": message, "documentation_url": DOCS}, status, headers)
