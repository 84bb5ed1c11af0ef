"""The fake Cloudflare's HTTP side: Cloudflare's API paths under /client/v4 (Bearer
token auth, Cloudflare's envelope `success`/`errors`/`messages`/`result` on every
answer, every request and every response validated against Cloudflare's documents),
and control paths under /_fake for tests (not validated):

    POST /_fake/faults          {"kind": "rate-limit" | "error", "times"?, "method"?,
                                 "path"?, "retry_after"?, "status"?}
    GET  /_fake/calls           {"by_route": {"METHOD template": n}, "total", "invalid": [...]}
    GET  /_fake/state           everything kept (module sizes and hashes, secret names only)
    GET  /_fake/scripts/{name}  {"url", "version_id"}: where the deployed script answers
    POST /_fake/zones           {"name"} -> {"id", "name"}
    GET  /_fake/health
    POST /_fake/reset-counters

Any other request naming a host other than the fake's own address (its Host header)
is Cloudflare's edge: the custom domain or Workers route serving that host picks the
script, and its deployed version answers (a health check of a "Cloudflare" preview
reaches the uploaded bundle).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import hmac
import json
import logging
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesParser
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from branchline.fakes.cloudflare import spec
from branchline.fakes.cloudflare.runners import Deployable, Runner, RunnerError
from branchline.fakes.cloudflare.world import (
    AUTHOR,
    PROXIABLE,
    CloudflareError,
    CloudflareWorld,
    DnsRecord,
    Domain,
    Module,
    Route,
    Script,
    Version,
    invalid,
    new_id,
    stamp,
)
from branchline.fakes.openapi import SpecRequest, SpecResponse
from branchline.fakes.running import lifespan_answered
from branchline.masking import mask

logger = logging.getLogger(__name__)

ACCOUNT = "/accounts/{account_id}"
SCRIPT = ACCOUNT + "/workers/scripts/{script_name}"
ZONE = "/zones/{zone_id}"
RECORD = ZONE + "/dns_records/{dns_record_id}"
# Not passed on by a proxy (RFC 9110 7.6.1), nor the length the body is re-sent with.
HOP_HEADERS = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer",
                         "transfer-encoding", "upgrade", "content-length",
                         "content-encoding"})  # fmt: skip
DEFAULT_DNS_PAGE = 100  # the document's default per_page for DNS records


@dataclass
class Call:
    params: dict[str, str]
    query: dict[str, str]
    body: Any  # JSON, or (metadata, modules) of a multipart upload
    raw: bytes


@dataclass
class Reply:
    result: Any
    status: int = 200
    result_info: dict[str, Any] | None = None
    raw: bytes | None = None  # an answer that is not the envelope (a script download)
    content_type: str = "application/json"


Handler = Callable[[Call], Awaitable[Reply]]


@dataclass(frozen=True)
class ApiRoute:
    method: str
    template: str
    handler: Handler
    pattern: re.Pattern[str]


@dataclass
class Fault:
    kind: str  # "rate-limit": 429 with Retry-After; "error": `status` (default 500)
    times: int = 1
    method: str | None = None
    path: str | None = None  # a template (`/zones/{zone_id}/dns_records`) or a regex
    retry_after: float | None = None
    status: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("rate-limit", "error"):
            raise ValueError(f"a fault is rate-limit or error, not {self.kind!r}")

    def matches(self, method: str, path: str, template: str) -> bool:
        if self.method and self.method.upper() != method:
            return False
        if self.path is None or self.path == template:
            return True
        try:
            return re.search(self.path, path) is not None
        except re.error:
            return False


@dataclass
class Running:
    url: str
    version_id: str


@dataclass
class Counters:
    by_route: Counter[str] = field(default_factory=Counter)
    invalid: list[dict[str, Any]] = field(default_factory=list)
    faults_served: int = 0


class FakeCloudflareApp:
    """An ASGI app over a `CloudflareWorld`; deployed versions run on `runner`."""

    def __init__(self, world: CloudflareWorld, token: str, runner: Runner) -> None:
        self.world = world
        self._token = token
        self.runner = runner
        self.running: dict[str, Running] = {}
        self.faults: list[Fault] = []
        self.counters = Counters()
        # One call changes the world at a time: a deploy waits for its runner.
        self._lock = asyncio.Lock()
        self.routes = [self._route(*row) for row in self._table()]

    @staticmethod
    def _route(method: str, template: str, handler: Handler) -> ApiRoute:
        pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
        return ApiRoute(method, template, handler, re.compile(f"^{pattern}$"))

    def _table(self) -> list[tuple[str, str, Handler]]:
        a, s, z = ACCOUNT, SCRIPT, ZONE
        return [
            ("GET", a + "/workers/scripts", self.list_scripts),
            ("PUT", s, self.upload_script),
            ("GET", s, self.download_script),
            ("DELETE", s, self.delete_script),
            ("GET", s + "/versions", self.list_versions),
            ("POST", s + "/versions", self.create_version),
            ("GET", s + "/versions/{version_id}", self.get_version),
            ("GET", s + "/deployments", self.list_deployments),
            ("POST", s + "/deployments", self.create_deployment),
            ("GET", s + "/secrets", self.list_secrets),
            ("PUT", s + "/secrets", self.put_secret),
            ("GET", s + "/secrets/{secret_name}", self.get_secret),
            ("DELETE", s + "/secrets/{secret_name}", self.delete_secret),
            ("GET", a + "/workers/subdomain", self.get_subdomain),
            ("PUT", a + "/workers/subdomain", self.put_subdomain),
            ("GET", a + "/workers/domains", self.list_domains),
            ("PUT", a + "/workers/domains", self.attach_domain),
            ("GET", a + "/workers/domains/{domain_id}", self.get_domain),
            ("DELETE", a + "/workers/domains/{domain_id}", self.detach_domain),
            ("GET", z + "/workers/routes", self.list_routes),
            ("POST", z + "/workers/routes", self.create_route),
            ("GET", z + "/workers/routes/{route_id}", self.get_route),
            ("PUT", z + "/workers/routes/{route_id}", self.update_route),
            ("DELETE", z + "/workers/routes/{route_id}", self.delete_route),
            ("GET", "/zones", self.list_zones),
            ("GET", z + "/dns_records", self.list_records),
            ("POST", z + "/dns_records", self.create_record),
            ("GET", RECORD, self.get_record),
            ("PATCH", RECORD, self.patch_record),
            ("PUT", RECORD, self.put_record),
            ("DELETE", RECORD, self.delete_record),
        ]

    def route(self, method: str, path: str) -> tuple[ApiRoute, dict[str, str]] | None:
        for route in self.routes:
            match = route.pattern.match(path)
            if match and route.method == method:
                return route, match.groupdict()
        return None

    # -- ASGI -----------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if await lifespan_answered(scope, receive, send):
            return
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        path = request.url.path
        if path.startswith("/_fake/"):
            response = await self.control(request, path.removeprefix("/_fake/"))
        elif path.startswith(spec.API_PREFIX + "/"):
            response = await self.api(request, path.removeprefix(spec.API_PREFIX))
        elif self._edge_host(request) is not None:
            response = await self.edge(request)
        else:
            response = envelope_error(404, 7000, "No route for that URI")
        await response(scope, receive, send)

    # -- Cloudflare's edge: a request for a host a route or custom domain serves -----------

    def _edge_host(self, request: Request) -> str | None:
        """The host a request names when it is not for the API's own host (the
        fake's address): then it is for a Worker, as at Cloudflare's edge."""
        host = (request.headers.get("host") or "").rsplit(":", 1)[0].lower()
        if not host or host in ("127.0.0.1", "localhost", "[::1]"):
            return None
        return host

    def _script_for(self, host: str, path: str) -> str | None:
        """The script serving `host` + `path`: a custom domain's, else the route whose
        pattern matches (`host/*`, `*.host/*`; `*` matches anything)."""
        for domain in self.world.domains.values():
            if domain.hostname == host:
                return domain.service
        target = host + path
        for route in sorted(self.world.routes.values(), key=lambda r: -len(r.pattern)):
            pattern = route.pattern.split("://", 1)[-1]
            if route.script and fnmatch.fnmatchcase(target, pattern):
                return route.script
        return None

    async def edge(self, request: Request) -> Response:
        """Proxy the request to the deployed version of the script serving its host."""
        host = self._edge_host(request) or ""
        script = self._script_for(host, request.url.path)
        if script is None:
            return Response(f"no Worker serves {host}{request.url.path}", 404,
                            media_type="text/plain")  # fmt: skip
        running = self.running.get(script)
        if running is None:
            return Response(f"the Worker {script} has no deployed version running", 503,
                            media_type="text/plain")  # fmt: skip
        import httpx

        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        target = (
            running.url + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        )
        try:
            async with httpx.AsyncClient(timeout=60, trust_env=False) as client:
                answer = await client.request(
                    request.method, target, headers=headers, content=await request.body()
                )
        except httpx.HTTPError as exc:
            return Response(f"the Worker {script} did not answer: {exc.__class__.__name__}",
                            502, media_type="text/plain")  # fmt: skip
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_HEADERS}
        return Response(answer.content, answer.status_code, headers=kept)

    # -- Cloudflare's API ------------------------------------------------------------

    async def api(self, request: Request, path: str) -> Response:
        method = request.method.upper()
        found = self.route(method, path)
        template = found[0].template if found else path
        self.counters.by_route[f"{method} {template}"] += 1
        raw = await request.body()
        checked = spec.spec_request(
            method, path, query=list(request.query_params.multi_items()),
            headers=dict(request.headers), body=raw or None,
            content_type=request.headers.get("content-type", "application/json"),
        )  # fmt: skip
        response = await self.answer(request, method, path, found, checked)
        if found is None:
            return response  # no operation of the documents to hold it to
        why = spec.response_errors(
            checked,
            SpecResponse(response.status_code, bytes(response.body) or None,
                         response.headers.get("content-type", ""), dict(response.headers)),
        )  # fmt: skip
        if why is None:
            return response
        self._record("response", method, path, response.status_code, why, raw)
        return envelope_error(500, 10002, "the fake Cloudflare answered what Cloudflare's "
                              f"document forbids: {self._masked(why, raw)[:2000]}")  # fmt: skip

    async def answer(
        self,
        request: Request,
        method: str,
        path: str,
        found: tuple[ApiRoute, dict[str, str]] | None,
        checked: SpecRequest,
    ) -> Response:
        template = found[0].template if found else path
        fault = self._take_fault(method, path, template)
        if fault is not None:
            return fault_answer(fault)
        refused = self._refuse_credentials(request.headers.get("authorization"))
        if refused is not None:
            return refused
        if found is None:
            if any(r.pattern.match(path) for r in self.routes):
                return envelope_error(405, 7001, f"Method {method} not allowed for this route")
            return envelope_error(404, 7000, "No route for that URI")
        route, params = found
        if "account_id" in params and params["account_id"] != self.world.account_id:
            # Another account's identifier: Cloudflare says only that it may not.
            return envelope_error(403, 10000, "Authentication error")
        raw = checked.raw_body or b""
        why = spec.request_errors(checked)
        if why is not None:
            self._record("request", method, path, 400, why, raw)
            code, what = (1004, "DNS Validation Error") if "/dns_records" in template else (
                10021, "Invalid request")  # fmt: skip
            return envelope_error(400, code, f"{what}: {self._masked(why, raw).splitlines()[0]}")
        try:
            body = parse_body(request.headers.get("content-type", ""), raw)
        except CloudflareError as exc:
            self._record("request", method, path, exc.status, exc.message, raw)
            return envelope_error(exc.status, exc.code, exc.message)
        call = Call(params, dict(request.query_params), body, raw)
        try:
            async with self._lock:
                reply = await route.handler(call)
        except CloudflareError as exc:
            return envelope_error(exc.status, exc.code, exc.message)
        except Exception:  # the fake's own fault: Cloudflare's 500, and the log says why
            logger.exception("fake cloudflare: %s %s failed", method, template)
            return envelope_error(500, 10002, "Unexpected internal server error")
        if reply.raw is not None:
            return Response(reply.raw, reply.status, media_type=reply.content_type)
        out: dict[str, Any] = {"success": True, "errors": [], "messages": [],
                               "result": reply.result}  # fmt: skip
        if reply.result_info is not None:
            out["result_info"] = reply.result_info
        return JSONResponse(out, reply.status)

    def _refuse_credentials(self, header: str | None) -> Response | None:
        if not header:
            return envelope_error(400, 9106, "Missing X-Auth-Key, X-Auth-Email or "
                                  "Authorization headers")  # fmt: skip
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return envelope_error(400, 6003, "Invalid request headers")
        if not hmac.compare_digest(token.strip().encode(), self._token.encode()):
            return envelope_error(403, 10000, "Authentication error")
        return None

    def _take_fault(self, method: str, path: str, template: str) -> Fault | None:
        for fault in self.faults:
            if fault.times > 0 and fault.matches(method, path, template):
                fault.times -= 1
                self.counters.faults_served += 1
                self.faults = [f for f in self.faults if f.times > 0]
                return fault
        return None

    def _masked(self, text: str, raw: bytes) -> str:
        """`text` without the token, any secret kept, or any text the request carried
        (a refused secret's value is in the validator's words)."""
        values = [self._token, *_texts(raw)]
        for script in self.world.scripts.values():
            for version in script.versions:
                values.extend(version.secrets().values())
        return mask(text, values)

    def _record(self, kind: str, method: str, path: str, status: int, why: str,
                raw: bytes) -> None:  # fmt: skip
        why = self._masked(why, raw)
        self.counters.invalid.append(
            {"kind": kind, "method": method, "path": path, "status": status, "errors": why}
        )
        logger.error("fake cloudflare: invalid %s %s %s: %s", kind, method, path, why)

    # -- running deployed versions -------------------------------------------------------

    async def _run(self, script: Script) -> None:
        """Run the script's deployed version on the runner (the one answering before
        is stopped by it once the new one answers); a version that will not start
        undoes its deployment, and the one before it keeps answering."""
        version = script.deployed()
        if version is None:
            return
        deployable = Deployable(
            script=script.name, version_id=version.id, main_module=version.main_module,
            modules={m.name: m.content for m in version.modules.values()},
            module_types={m.name: m.content_type for m in version.modules.values()},
            vars={b["name"]: b["text"] for b in version.bindings if b["type"] == "plain_text"},
            secrets=version.secrets(), compatibility_date=version.compatibility_date,
            compatibility_flags=tuple(version.compatibility_flags),
        )  # fmt: skip
        try:
            url = await asyncio.to_thread(self.runner.start, deployable)
        except RunnerError as exc:
            script.deployments.pop()
            why = mask(str(exc), deployable.secrets.values())
            raise CloudflareError(400, 10021, f"the Worker failed to start: {why}") from None
        self.running[script.name] = Running(url, version.id)

    async def _stop(self, name: str) -> None:
        self.running.pop(name, None)
        await asyncio.to_thread(self.runner.stop, name)

    def close(self) -> None:
        self.runner.close()

    # -- scripts ---------------------------------------------------------------------------

    async def list_scripts(self, call: Call) -> Reply:
        return Reply([self._script_json(s) for s in self.world.scripts.values()])

    async def upload_script(self, call: Call) -> Reply:
        if "rollback_to" in call.query:
            raise invalid("the fake Cloudflare rolls back by deployment, not rollback_to")
        metadata, modules = _upload(call.body, call.raw)
        # An upload is a new version deployed at once (a first one makes the script).
        script, version = self.world.add_version(
            call.params["script_name"], metadata, modules, source="api", create=True
        )
        self.world.deploy(script.name, [(version.id, 100.0)], source="api")
        await self._run(script)
        return Reply({**self._script_json(script), "startup_time_ms": 0})

    async def download_script(self, call: Call) -> Reply:
        script = self.world.script(call.params["script_name"])
        version = script.deployed() or script.latest()
        if version is None:
            raise invalid(f"script {script.name} has no version")
        module = version.modules[version.main_module]
        return Reply(None, raw=module.content, content_type="application/javascript")

    async def delete_script(self, call: Call) -> Reply:
        name = call.params["script_name"]
        self.world.delete_script(name)
        await self._stop(name)
        return Reply(None)

    def _script_json(self, script: Script) -> dict[str, Any]:
        return {
            "id": script.name,
            "etag": script.etag,
            "created_on": stamp(script.created_on),
            "modified_on": stamp(script.modified_on),
            "usage_model": "bundled",  # the document's pattern: bundled or unbound
            "logpush": False,
            "has_modules": True,
        }

    # -- versions and deployments ---------------------------------------------------------

    async def list_versions(self, call: Call) -> Reply:
        script = self.world.script(call.params["script_name"])
        newest_first = list(reversed(script.versions))
        page, per_page = _page(call.query, 20)
        chunk = newest_first[(page - 1) * per_page : page * per_page]
        return Reply({"items": [self._version_short(v) for v in chunk]},
                     result_info={"page": page, "per_page": per_page, "count": len(chunk),
                                  "total_count": len(newest_first)})  # fmt: skip

    async def create_version(self, call: Call) -> Reply:
        metadata, modules = _upload(call.body, call.raw)
        _, version = self.world.add_version(
            call.params["script_name"], metadata, modules, source="api", create=False
        )
        return Reply({**self._version_full(version), "startup_time_ms": 0})

    async def get_version(self, call: Call) -> Reply:
        script = self.world.script(call.params["script_name"])
        return Reply(self._version_full(script.version(call.params["version_id"])))

    async def list_deployments(self, call: Call) -> Reply:
        script = self.world.script(call.params["script_name"])
        deployments = [self._deployment_json(d) for d in reversed(script.deployments)]
        return Reply({"deployments": deployments})

    async def create_deployment(self, call: Call) -> Reply:
        name = call.params["script_name"]
        body = call.body or {}
        versions = [(str(v["version_id"]), float(v["percentage"])) for v in body["versions"]]
        annotations = {str(k): str(v) for k, v in (body.get("annotations") or {}).items()}
        deployment = self.world.deploy(name, versions, source="api", annotations=annotations)
        await self._run(self.world.script(name))
        return Reply(self._deployment_json(deployment))

    def _version_short(self, version: Version) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": version.id,
            "number": version.number,
            "metadata": {
                "author_email": AUTHOR,
                "author_id": "fake",
                "created_on": stamp(version.created_on),
                "modified_on": stamp(version.created_on),
                "source": version.source,
                "hasPreview": False,
            },
        }
        if version.annotations:
            out["annotations"] = dict(version.annotations)
        return out

    def _version_full(self, version: Version) -> dict[str, Any]:
        return {
            **self._version_short(version),
            "resources": {
                "bindings": version.public_bindings(),
                "script": {
                    "etag": hashlib.sha256(
                        b"".join(m.content for m in version.modules.values())
                    ).hexdigest(),
                    "handlers": ["fetch"],
                },
                "script_runtime": {
                    "compatibility_date": version.compatibility_date,
                    "compatibility_flags": list(version.compatibility_flags),
                    "usage_model": "standard",
                },
            },
        }

    def _deployment_json(self, deployment: Any) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": deployment.id,
            "created_on": stamp(deployment.created_on),
            "source": deployment.source,
            "strategy": "percentage",
            "author_email": AUTHOR,
            "versions": [{"version_id": v, "percentage": p} for v, p in deployment.versions],
        }
        if deployment.annotations:
            out["annotations"] = dict(deployment.annotations)
        return out

    # -- secrets ------------------------------------------------------------------------------

    async def list_secrets(self, call: Call) -> Reply:
        latest = self.world.script(call.params["script_name"]).latest()
        names = sorted(latest.secrets()) if latest else []
        return Reply([{"name": n, "type": "secret_text"} for n in names])

    async def put_secret(self, call: Call) -> Reply:
        body = call.body or {}
        if body.get("type", "secret_text") != "secret_text" or not body.get("name"):
            raise invalid("a secret needs a name and type secret_text")
        name = call.params["script_name"]
        version, deploy = self.world.put_secret(name, str(body["name"]), str(body.get("text", "")))
        await self._deploy_secret_change(name, version, deploy)
        return Reply({"name": body["name"], "type": "secret_text"})

    async def get_secret(self, call: Call) -> Reply:
        latest = self.world.script(call.params["script_name"]).latest()
        secret = call.params["secret_name"]
        if latest is None or secret not in latest.secrets():
            raise CloudflareError(404, 10007, f"secret {secret} not found")
        return Reply({"name": secret, "type": "secret_text"})

    async def delete_secret(self, call: Call) -> Reply:
        name = call.params["script_name"]
        version, deploy = self.world.delete_secret(name, call.params["secret_name"])
        await self._deploy_secret_change(name, version, deploy)
        return Reply(None)

    async def _deploy_secret_change(self, name: str, version: Version, deploy: bool) -> None:
        if deploy:
            self.world.deploy(name, [(version.id, 100.0)], source="secret")
            await self._run(self.world.script(name))

    # -- subdomain, custom domains, routes --------------------------------------------------

    async def get_subdomain(self, call: Call) -> Reply:
        if self.world.subdomain is None:
            raise CloudflareError(404, 10007, "This account has no workers.dev subdomain")
        return Reply({"subdomain": self.world.subdomain})

    async def put_subdomain(self, call: Call) -> Reply:
        subdomain = str((call.body or {}).get("subdomain") or "")
        if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", subdomain):
            raise invalid(f"{subdomain!r} is not a valid subdomain")
        self.world.subdomain = subdomain
        return Reply({"subdomain": subdomain})

    async def list_domains(self, call: Call) -> Reply:
        domains = list(self.world.domains.values())
        for key in ("hostname", "service", "zone_id", "zone_name", "environment"):
            if call.query.get(key):
                domains = [d for d in domains if getattr(d, key) == call.query[key]]
        return Reply([_domain_json(d) for d in domains])

    async def attach_domain(self, call: Call) -> Reply:
        body = call.body or {}
        if not body.get("hostname") or not body.get("service"):
            raise invalid("a custom domain needs a hostname and a service")
        return Reply(_domain_json(self.world.attach_domain(body)))

    async def get_domain(self, call: Call) -> Reply:
        return Reply(_domain_json(self.world.domain(call.params["domain_id"])))

    async def detach_domain(self, call: Call) -> Reply:
        domain = self.world.domain(call.params["domain_id"])
        del self.world.domains[domain.id]
        return Reply(None)

    async def list_routes(self, call: Call) -> Reply:
        self.world.zone(call.params["zone_id"])
        routes = [r for r in self.world.routes.values() if r.zone_id == call.params["zone_id"]]
        return Reply([_route_json(r) for r in routes])

    async def create_route(self, call: Call) -> Reply:
        return Reply(_route_json(self.world.put_route(call.params["zone_id"], call.body or {})))

    async def get_route(self, call: Call) -> Reply:
        return Reply(_route_json(self.world.route(call.params["zone_id"], call.params["route_id"])))

    async def update_route(self, call: Call) -> Reply:
        route = self.world.put_route(call.params["zone_id"], call.body or {},
                                     call.params["route_id"])  # fmt: skip
        return Reply(_route_json(route))

    async def delete_route(self, call: Call) -> Reply:
        route = self.world.route(call.params["zone_id"], call.params["route_id"])
        del self.world.routes[route.id]
        return Reply({"id": route.id})

    # -- zones and DNS ---------------------------------------------------------------------

    async def list_zones(self, call: Call) -> Reply:
        zones = sorted(self.world.zones.items(), key=lambda z: z[1])
        if call.query.get("name"):
            zones = [z for z in zones if z[1] == call.query["name"]]
        # Paged: the SDK asks for the next page until one comes back empty.
        page, per_page = _page(call.query, 20)
        chunk = zones[(page - 1) * per_page : page * per_page]
        return Reply([self._zone_json(i, n) for i, n in chunk],
                     result_info={"page": page, "per_page": per_page, "count": len(chunk),
                                  "total_count": len(zones)})  # fmt: skip

    def _zone_json(self, zone_id: str, name: str) -> dict[str, Any]:
        return {
            "id": zone_id,
            "name": name,
            "status": "active",
            "paused": False,
            "type": "full",
            "development_mode": 0,
            "name_servers": ["ns1.fake-cloudflare.test", "ns2.fake-cloudflare.test"],
            "original_name_servers": None,
            "original_registrar": None,
            "original_dnshost": None,
            "created_on": "2024-08-06T00:00:00Z",
            "modified_on": "2024-08-06T00:00:00Z",
            "activated_on": "2024-08-06T00:00:00Z",
            "account": {"id": self.world.account_id, "name": "fake account"},
            "meta": {
                "cdn_only": False,
                "dns_only": False,
                "foundation_dns": False,
                "custom_certificate_quota": 0,
                "page_rule_quota": 3,
                "phishing_detected": False,
                "step": 2,
            },
            "owner": {"id": self.world.account_id, "name": "fake account", "type": "user"},
            "permissions": ["#dns_records:edit", "#dns_records:read", "#worker:edit"],
        }

    async def list_records(self, call: Call) -> Reply:
        zone_id = call.params["zone_id"]
        self.world.zone(zone_id)
        records = [r for r in self.world.records.values() if r.zone_id == zone_id]
        records = _filter_records(records, call.query)
        order = call.query.get("order", "type")
        records.sort(key=lambda r: (str(getattr(r, order)), r.name, r.id),
                     reverse=call.query.get("direction") == "desc")  # fmt: skip
        page, per_page = _page(call.query, DEFAULT_DNS_PAGE)
        chunk = records[(page - 1) * per_page : page * per_page]
        total_pages = max((len(records) + per_page - 1) // per_page, 1)
        return Reply([_record_json(r) for r in chunk],
                     result_info={"page": page, "per_page": per_page, "count": len(chunk),
                                  "total_count": len(records),
                                  "total_pages": total_pages})  # fmt: skip

    async def create_record(self, call: Call) -> Reply:
        return Reply(_record_json(self.world.create_record(call.params["zone_id"], call.body)))

    async def get_record(self, call: Call) -> Reply:
        return Reply(_record_json(self.world.record(call.params["zone_id"],
                                                    call.params["dns_record_id"])))  # fmt: skip

    async def patch_record(self, call: Call) -> Reply:
        record = self.world.update_record(call.params["zone_id"], call.params["dns_record_id"],
                                          call.body or {}, full=False)  # fmt: skip
        return Reply(_record_json(record))

    async def put_record(self, call: Call) -> Reply:
        record = self.world.update_record(call.params["zone_id"], call.params["dns_record_id"],
                                          call.body or {}, full=True)  # fmt: skip
        return Reply(_record_json(record))

    async def delete_record(self, call: Call) -> Reply:
        self.world.delete_record(call.params["zone_id"], call.params["dns_record_id"])
        return Reply({"id": call.params["dns_record_id"]})

    # -- control ---------------------------------------------------------------------

    async def control(self, request: Request, path: str) -> Response:
        try:
            raw = await request.body()
            body: dict[str, Any] = json.loads(raw) if raw else {}
            out = self._control(request.method, path.split("/"), body)
        except CloudflareError as exc:
            return envelope_error(exc.status, exc.code, exc.message)
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"error": f"bad control request: {exc}"}, 400)
        if out is None:
            return JSONResponse({"error": f"no such control path {request.method} {path}"}, 404)
        return JSONResponse(out)

    def _control(self, method: str, parts: list[str], body: dict[str, Any]) -> Any:
        match method, parts:
            case "GET", ["calls"]:
                return self.calls()
            case "GET", ["state"]:
                return self.snapshot()
            case "GET", ["health"]:
                return {"account_id": self.world.account_id}
            case "GET", ["scripts", name]:
                running = self.running.get(name)
                if running is None:
                    raise CloudflareError(404, 10007, f"script {name} runs nowhere")
                return {"url": running.url, "version_id": running.version_id}
            case "POST", ["zones"]:
                name = str(body["name"])
                return {"id": self.world.add_zone(name), "name": name}
            case "POST", ["faults"]:
                self.faults.append(Fault(**body))
                return {"faults": len(self.faults)}
            case "POST", ["reset-counters"]:
                self.counters = Counters()
                return {"reset": True}
        return None

    def calls(self) -> dict[str, Any]:
        return {
            "by_route": dict(self.counters.by_route),
            "total": sum(self.counters.by_route.values()),
            "invalid": list(self.counters.invalid),
            "faults_served": self.counters.faults_served,
        }

    def snapshot(self) -> dict[str, Any]:
        """Everything kept, as tests read it: modules by size and hash, secrets by name."""
        world = self.world
        scripts = {}
        for script in world.scripts.values():
            deployed, latest = script.deployed(), script.latest()
            scripts[script.name] = {
                "versions": [
                    {
                        "id": v.id,
                        "number": v.number,
                        "main_module": v.main_module,
                        "modules": {
                            m.name: {
                                "content_type": m.content_type,
                                "size": len(m.content),
                                "sha256": hashlib.sha256(m.content).hexdigest(),
                            }
                            for m in v.modules.values()
                        },
                        "bindings": v.public_bindings(),
                        "compatibility_date": v.compatibility_date,
                        "compatibility_flags": v.compatibility_flags,
                    }
                    for v in script.versions
                ],
                "deployments": [self._deployment_json(d) for d in script.deployments],
                "deployed_version": deployed.id if deployed else None,
                "secrets": sorted(latest.secrets()) if latest else [],
                "url": self.running[script.name].url if script.name in self.running else None,
            }
        return {
            "account_id": world.account_id,
            "subdomain": world.subdomain,
            "zones": {name: zone_id for zone_id, name in world.zones.items()},
            "scripts": scripts,
            "dns_records": [_record_json(r) for r in world.records.values()],
            "domains": [_domain_json(d) for d in world.domains.values()],
            "routes": [_route_json(r) for r in world.routes.values()],
        }


# -- bodies ---------------------------------------------------------------------------


def parse_body(content_type: str, raw: bytes) -> Any:
    """A request's body: JSON, a multipart upload's parts, a raw script, or None."""
    if not raw:
        return None
    kind = content_type.split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        return _multipart(content_type, raw)
    if kind in ("application/javascript", "text/javascript"):
        return ({"body_part": "script"}, [Module("script", kind, raw)])
    try:
        return json.loads(raw)
    except ValueError:
        raise CloudflareError(400, 10001, "Unsupported or unexpected Content Type: the body "
                              "is not JSON") from None  # fmt: skip


def _multipart(content_type: str, raw: bytes) -> tuple[dict[str, Any], list[Module]]:
    """(metadata, modules) of an upload: a module is named by its file name (the SDK
    sends every module as a part called `files`), else by its part's name."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser().parsebytes(head + raw)
    metadata: dict[str, Any] | None = None
    modules: list[Module] = []
    parts = message.get_payload()
    if not message.is_multipart() or not isinstance(parts, list):
        raise CloudflareError(400, 10006, "Unparseable script body")
    for part in parts:
        assert isinstance(part, Message)
        name = part.get_param("name", header="content-disposition")
        filename = part.get_filename()
        payload = part.get_payload(decode=True)
        content = payload if isinstance(payload, bytes) else b""
        if name == "metadata" and not filename:
            try:
                metadata = json.loads(content)
            except ValueError:
                raise CloudflareError(400, 10006, "the metadata part is not JSON") from None
            continue
        modules.append(Module(str(filename or name), part.get_content_type(), content))
    if not isinstance(metadata, dict):
        raise CloudflareError(400, 10021, "an upload needs a metadata part")
    return metadata, modules


def _upload(body: Any, raw: bytes) -> tuple[dict[str, Any], list[Module]]:
    if not isinstance(body, tuple):
        raise CloudflareError(400, 10001, "Unsupported or unexpected Content Type: an upload "
                              "is multipart/form-data")  # fmt: skip
    metadata, modules = body
    return metadata, modules


def _texts(raw: bytes) -> list[str]:
    """The `text` values a request carries (a secret's, a binding's), in a JSON body
    or in an upload's JSON metadata part: as sent and as decoded."""
    found: list[str] = []
    for quoted in _TEXT_FIELD.findall(raw.decode(errors="replace")):
        found.append(quoted)
        with contextlib.suppress(ValueError):
            found.append(str(json.loads(f'"{quoted}"')))
    return found


_TEXT_FIELD = re.compile(r'"text"\s*:\s*"((?:[^"\\]|\\.)*)"')


# -- answers --------------------------------------------------------------------------


def envelope_error(
    status: int, code: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """Cloudflare's failure envelope."""
    body = {"success": False, "errors": [{"code": code, "message": message}], "messages": [],
            "result": None}  # fmt: skip
    return JSONResponse(body, status, headers)


def fault_answer(fault: Fault) -> JSONResponse:
    if fault.kind == "rate-limit":
        wait = fault.retry_after if fault.retry_after is not None else 60
        headers = {"retry-after": f"{max(wait, 0):g}", "x-ratelimit-limit": "1200",
                   "x-ratelimit-remaining": "0"}  # fmt: skip
        # Cloudflare's code and words for its global API limit (1200 calls / 5 min).
        return envelope_error(
            429, 971, "More than 1200 requests per 300 seconds reached. Please wait and "
            "consider throttling your request speed", headers,
        )  # fmt: skip
    return envelope_error(fault.status or 500, 10002, "Unexpected internal server error")


def _page(query: dict[str, str], default: int) -> tuple[int, int]:
    """(page, per_page) of a listing (the document types both as numbers)."""
    page = max(int(float(query.get("page") or 1)), 1)
    per_page = max(int(float(query.get("per_page") or default)), 1)
    return page, per_page


def _domain_json(domain: Domain) -> dict[str, Any]:
    return {"id": domain.id, "hostname": domain.hostname, "service": domain.service,
            "environment": domain.environment, "zone_id": domain.zone_id,
            "zone_name": domain.zone_name}  # fmt: skip


def _route_json(route: Route) -> dict[str, Any]:
    return {"id": route.id, "pattern": route.pattern, "script": route.script}


def _record_json(record: DnsRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": record.id,
        "zone_id": record.zone_id,
        "zone_name": record.zone_name,
        "name": record.name,
        "type": record.type,
        "content": record.content,
        "proxiable": record.type in PROXIABLE,
        "proxied": record.proxied,
        "ttl": record.ttl,
        "locked": False,
        "meta": {"auto_added": False, "source": "primary"},
        "tags": list(record.tags),
        "created_on": stamp(record.created_on),
        "modified_on": stamp(record.modified_on),
    }
    if record.comment is not None:  # the document's comment is a string, never null
        out["comment"] = record.comment
    return out


def _filter_records(records: list[DnsRecord], query: dict[str, str]) -> list[DnsRecord]:
    """Cloudflare's filters: `name` (and name.exact/contains/startswith/endswith),
    `type`, `content`, `proxied`, `comment`; `match=any` keeps a record any one of
    them takes."""
    tests: list[Callable[[DnsRecord], bool]] = []
    for key, value in query.items():
        field_name, _, how = key.partition(".")
        if field_name not in ("name", "content", "comment") and key not in ("type", "proxied"):
            continue
        if key == "type":
            tests.append(_equals("type", value.upper()))
        elif key == "proxied":
            tests.append(_equals("proxied", value.lower() == "true"))
        else:
            tests.append(_text_test(field_name, how or "exact", value))
    if not tests:
        return records
    combine = any if query.get("match") == "any" else all
    return [r for r in records if combine(test(r) for test in tests)]


def _equals(field_name: str, value: object) -> Callable[[DnsRecord], bool]:
    return lambda record: bool(getattr(record, field_name) == value)


def _text_test(field_name: str, how: str, value: str) -> Callable[[DnsRecord], bool]:
    def test(record: DnsRecord) -> bool:
        have = str(getattr(record, field_name) or "").lower()
        want = value.lower()
        match how:
            case "contains":
                return want in have
            case "startswith":
                return have.startswith(want)
            case "endswith":
                return have.endswith(want)
            case "present":
                return bool(have)
            case "absent":
                return not have
        return have == want

    return test


def build_app(
    *, token: str, runner: Runner, account_id: str | None = None,
    zones: tuple[str, ...] = ("example.com",), subdomain: str | None = "branchline-fake",
) -> FakeCloudflareApp:  # fmt: skip
    """The fake as an ASGI app in this process (for `httpx.ASGITransport`)."""
    world = CloudflareWorld(account_id or new_id(), list(zones), subdomain)
    return FakeCloudflareApp(world, token, runner)
