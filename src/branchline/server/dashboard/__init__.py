"""Server-rendered pages (Jinja2, a little JavaScript for live logs).

Log-in with an API token; the session is a signed cookie (HttpOnly, SameSite=Lax)
holding the token's name, scope and a fingerprint of it, never the token. Every
request checks the session against the store: once its token is deleted, replaced
or given another scope, the session is over (every page and button sends to the
log-in page), at once. Every form carries a CSRF token derived from the session; a
POST without the right one is refused. A form's body is read only once the session
is known live (`gate`). Reading works without JavaScript.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import httpx
from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.types import Scope

from branchline.engine import logs as run_logs
from branchline.environment import Environment as EnvironmentValue
from branchline.errors import BranchlineError
from branchline.kit import Kit
from branchline.masking import mask_url
from branchline.operations.environments import list_environments
from branchline.operations.previews import Started
from branchline.server.actions import Actions
from branchline.server.api import RunId, project_run
from branchline.server.limits import Refusal
from branchline.store import Store
from branchline.store import branches as branch_rows
from branchline.store import forge as forge_rows
from branchline.store import runs as run_rows
from branchline.store import tokens as token_rows

COOKIE = "branchline_session"
SESSION_SECONDS = 12 * 3600
_templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
)


class Sessions:
    """Signed session cookies: `<payload b64>.<hmac>`, payload = name, scope, expiry."""

    def __init__(self, key: bytes | None = None) -> None:
        self.key = key or secrets.token_bytes(32)

    def _sign(self, payload: str) -> str:
        return hmac.new(self.key, payload.encode(), hashlib.sha256).hexdigest()

    def fingerprint(self, token_hash: str) -> str:
        """Binds a session to one token value (a token re-made under the same name
        is another token), without putting anything that opens the API in the cookie."""
        return hmac.new(self.key, b"token:" + token_hash.encode(), hashlib.sha256).hexdigest()

    def issue(self, name: str, scope: str, token_hash: str) -> str:
        payload = json.dumps({"n": name, "s": scope, "e": int(time.time()) + SESSION_SECONDS,
                              "f": self.fingerprint(token_hash), "r": secrets.token_hex(8)},
                             separators=(",", ":"))  # fmt: skip
        return f"{payload.encode().hex()}.{self._sign(payload)}"

    async def live(self, store: Store, project: str, cookie: str | None) -> dict[str, Any] | None:
        """The session in `cookie` when its signature holds, it has not expired, and
        its token still exists, is the same token and has the same scope."""
        session = self.read(cookie)
        if session is None or not isinstance(session.get("n"), str):
            return None
        async with store.connect() as conn:
            now = await token_rows.current(conn, project, session["n"])
        if now is None:
            return None
        scope, token_hash = now
        same = hmac.compare_digest(self.fingerprint(token_hash), str(session.get("f", "")))
        return session if same and scope == session.get("s") else None

    def read(self, cookie: str | None) -> dict[str, Any] | None:
        if not cookie or "." not in cookie:
            return None
        raw, signature = cookie.rsplit(".", 1)
        try:
            payload = bytes.fromhex(raw).decode()
        except ValueError:
            return None
        if not hmac.compare_digest(self._sign(payload), signature):
            return None
        data: dict[str, Any] = json.loads(payload)
        return data if data.get("e", 0) > time.time() else None

    def csrf(self, cookie: str) -> str:
        return hmac.new(self.key, b"csrf:" + cookie.encode(), hashlib.sha256).hexdigest()


def _ago(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    seconds = (datetime.now(UTC) - moment).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _size(value: int | None) -> str:
    return f"{value / 1e6:.1f} MB" if value else ""


def _seconds(start: datetime | None, end: datetime | None) -> str:
    return f"{(end - start).total_seconds():.1f}" if start and end else ""


async def _probe(client: httpx.AsyncClient, url: str | None) -> str:
    """One health check, now: "healthy", "unhealthy (HTTP 503)", "not answering"."""
    if url is None:
        return "unknown"
    try:
        answer = await client.get(url)
    except httpx.HTTPError:
        return "not answering"
    return "healthy" if answer.status_code == 200 else f"unhealthy (HTTP {answer.status_code})"


LOGIN = "/dashboard/login"


def gate(
    store: Store, project: str, sessions: Sessions
) -> Callable[[Scope], Awaitable[Refusal | None]]:
    """What `limits.BodyLimits` asks before reading a dashboard form: a live session
    (the log-in form itself excepted)."""

    async def check(scope: Scope) -> Refusal | None:
        if scope["path"] == LOGIN:
            return None
        cookie = Request(scope).cookies.get(COOKIE)
        if await sessions.live(store, project, cookie) is None:
            return Refusal(303, "log in first", (("Location", LOGIN),))
        return None

    return check


def router(kit: Kit, actions: Actions | None, sessions: Sessions) -> APIRouter:
    config, store = kit.config, kit.store
    project = config.project.name
    routes = APIRouter(prefix="/dashboard", include_in_schema=False)

    def page(
        request: Request, session: dict[str, Any] | None, name: str, **context: Any
    ) -> HTMLResponse:
        """`name` rendered; with the live `session`, the navigation and its log-out form
        (never for a session that is not live: a log-in page under a dead one)."""
        cookie = request.cookies.get(COOKIE, "")
        html = _templates.get_template(name).render(
            project=project, user=session["n"] if session else None,
            csrf=sessions.csrf(cookie) if session else "", **context,
        )  # fmt: skip
        return HTMLResponse(html)

    async def user(request: Request) -> dict[str, Any]:
        session = await sessions.live(store, project, request.cookies.get(COOKIE))
        if session is None:
            raise HTTPException(303, headers={"Location": LOGIN})
        return session

    async def checked(request: Request, csrf: str) -> dict[str, Any]:
        session = await user(request)
        expected = sessions.csrf(request.cookies.get(COOKIE, ""))
        if not hmac.compare_digest(expected, csrf):
            raise HTTPException(403, "the form's CSRF token is missing or wrong; reload the page")
        return session

    @routes.get("/login")
    async def login_page(request: Request) -> HTMLResponse:
        return page(request, None, "login.html", title="Log in")

    @routes.post("/login")
    async def login(request: Request, token: str = Form(...)) -> Response:
        async with store.connect() as conn:
            found = await token_rows.find(conn, project, token.strip())
        if found is None:
            return page(request, None, "login.html", title="Log in", notice="unknown token")
        answer = RedirectResponse("/dashboard/", status_code=303)
        cookie = sessions.issue(found.name, found.scope, token_rows.digest(token.strip()))
        answer.set_cookie(COOKIE, cookie, httponly=True,
                          samesite="lax", max_age=SESSION_SECONDS, path="/dashboard")  # fmt: skip
        return answer

    @routes.post("/logout")
    async def logout(request: Request, csrf: str = Form("")) -> Response:
        await checked(request, csrf)
        answer = RedirectResponse(LOGIN, status_code=303)
        answer.delete_cookie(COOKIE, path="/dashboard")
        return answer

    @routes.get("/")
    async def environments(request: Request, notice: str | None = None) -> HTMLResponse:
        session = await user(request)
        found = await list_environments(kit)
        # Health as it is now, not as it was at deploy time: every service asked at once.
        # A short timeout, since the page waits on them.
        every = [service for environment in found for service in environment.services]
        async with httpx.AsyncClient(timeout=1.0, trust_env=False) as probes:
            checks = await asyncio.gather(*(_probe(probes, s.health_url) for s in every))
        health = dict(zip((id(s) for s in every), checks, strict=True))
        shown = [
            {"name": e.name, "status": e.status, "branch": e.branch or "-",
             "expires_at": e.expires_at, "pr": e.environment.pr,
             "size": _size(e.branch_size), "age": _ago(e.branch_created_at),
             "services": [{"service": s.service, "url": s.url or "-", "release": s.release,
                           "commit": s.commit, "health": health[id(s)]}
                          for s in e.services]}
            for e in found
        ]  # fmt: skip
        return page(request, session, "environments.html", title="Environments",
                    environments=shown, notice=notice)  # fmt: skip

    @routes.get("/runs")
    async def runs(request: Request) -> HTMLResponse:
        session = await user(request)
        async with store.connect() as conn:
            found = await run_rows.list_runs(conn, project, 100)
        rows = [{**r.__dict__, "seconds": _seconds(r.started_at, r.finished_at)} for r in found]
        return page(request, session, "runs.html", title="Runs", runs=rows)

    @routes.get("/runs/{run_id}")
    async def run(request: Request, run_id: RunId) -> HTMLResponse:
        session = await user(request)
        async with store.connect() as conn:
            found = await project_run(conn, project, run_id)
            jobs = []
            for job in await run_rows.jobs_of(conn, run_id):
                steps = await run_rows.steps_of(conn, job.id)
                jobs.append({"name": job.name, "needs": job.needs, "status": job.status,
                             "seconds": _seconds(job.started_at, job.finished_at),
                             "steps": steps})  # fmt: skip
            lines = await run_rows.logs_after(conn, run_id, 0, limit=5000)
        last = lines[-1].id if lines else 0
        return page(request, session, "run.html", title=f"Run {run_id}", run=found, jobs=jobs,
                    lines=[ln.content for ln in lines], last=last)  # fmt: skip

    @routes.get("/runs/{run_id}/events")
    async def events(
        request: Request, run_id: RunId, after: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0
    ) -> StreamingResponse:
        await user(request)
        async with store.connect() as conn:
            await project_run(conn, project, run_id)

        async def stream() -> AsyncIterator[str]:
            async for line in run_logs.read(store, run_id, follow=True, after=after):
                yield f"event: line\ndata: {json.dumps({'line': line.content})}\n\n"
            yield "event: end\ndata: {}\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    @routes.get("/deployments")
    async def deployments(request: Request, notice: str | None = None) -> HTMLResponse:
        session = await user(request)
        live = [d for d in await kit.compute.list_deployments() if d.status == "live"]
        rollouts = await kit.rollouts.history()
        rows = [
            {"environment": d.environment.name, "service": d.service, "release": d.release.name}
            for d in sorted(live, key=lambda d: (d.environment.name, d.service))
        ]
        history = [{**r.__dict__, "seconds": _seconds(r.started_at, r.finished_at)}
                   for r in rollouts]  # fmt: skip
        return page(request, session, "deployments.html", title="Deployments", live=rows,
                    rollouts=history, notice=notice)  # fmt: skip

    async def act(
        request: Request, csrf: str, back: str, work: Callable[[Actions], Awaitable[Started]]
    ) -> Response:
        """Every button: a session, the form's CSRF token, a token that may write; then
        the action, and back to the page with what happened."""
        session = await checked(request, csrf)
        if session["s"] != "write":
            raise HTTPException(403, "this token may only read")
        if actions is None:
            raise HTTPException(503, "no workers run in this process (`branchline serve`)")
        try:
            notice = (await work(actions)).message
        except BranchlineError as exc:
            notice = mask_url(f"{exc.message} ({exc.hint})" if exc.hint else exc.message)
        return RedirectResponse(f"{back}?notice={quote(notice)}", status_code=303)

    @routes.post("/rollback")
    async def rollback(
        request: Request, service: str = Form(...), environment: str = Form(...),
        csrf: str = Form(""),
    ) -> Response:  # fmt: skip
        return await act(request, csrf, "/dashboard/deployments",
                         lambda a: a.rollback(service, environment))  # fmt: skip

    @routes.post("/branches/create")
    async def create_branch(
        request: Request, name: str = Form(...), parent: str = Form(""),
        expires: str = Form(""), csrf: str = Form(""),
    ) -> Response:  # fmt: skip
        return await act(
            request, csrf, "/dashboard/branches",
            lambda a: a.create_branch(name, parent or None, expires or None),
        )  # fmt: skip

    @routes.post("/branches/delete")
    async def delete_branch(
        request: Request, name: str = Form(...), csrf: str = Form("")
    ) -> Response:
        return await act(request, csrf, "/dashboard/branches",
                         lambda a: a.delete_branch(name))  # fmt: skip

    @routes.post("/branches/reset")
    async def reset_branch(
        request: Request, name: str = Form(...), csrf: str = Form("")
    ) -> Response:
        return await act(request, csrf, "/dashboard/branches",
                         lambda a: a.reset_branch(name))  # fmt: skip

    @routes.post("/previews/close")
    async def close_preview(
        request: Request, pr: int = Form(...), csrf: str = Form("")
    ) -> Response:
        return await act(request, csrf, "/dashboard/",
                         lambda a: a.close_preview(pr))  # fmt: skip

    @routes.get("/branches")
    async def branches(request: Request, notice: str | None = None) -> HTMLResponse:
        session = await user(request)
        async with store.connect() as conn:
            found = await branch_rows.list_all(conn, project)
        nodes: dict[str, dict[str, Any]] = {
            b.name: {
                "name": b.name, "status": b.status, "size": _size(b.size_bytes),
                "age": _ago(b.created_at), "children": [],
                "expires": f"{b.expires_at:%Y-%m-%d %H:%M}" if b.expires_at else "",
            }
            for b in found
        }  # fmt: skip
        roots: list[dict[str, Any]] = []
        for b in found:
            parent = nodes.get(b.parent or "")
            siblings: list[dict[str, Any]] = parent["children"] if parent else roots
            siblings.append(nodes[b.name])
        # Production's branch gets no buttons: the API refuses to reset or delete it.
        production = await kit.database_branch(EnvironmentValue.production())
        return page(request, session, "branches.html", title="Branches", roots=roots,
                    notice=notice, production=production)  # fmt: skip

    @routes.get("/prs")
    async def prs(request: Request) -> HTMLResponse:
        session = await user(request)
        found = []
        async with store.connect() as conn:
            for pr in await forge_rows.list_prs(conn, project):
                comments = await forge_rows.comments(conn, project, pr.number)
                statuses = await forge_rows.statuses(conn, project, pr.head_sha)
                found.append({**pr.__dict__, "comments": comments, "statuses": statuses})
        return page(request, session, "prs.html", title="Pull requests", prs=found)

    return routes
