"""Server-rendered pages (Jinja2, a little JavaScript for live logs).

Log-in with an API token; the session is a signed cookie (HttpOnly, SameSite=Lax)
holding the token's name and scope, never the token. Every form carries a CSRF
token derived from the session; a POST without the right one is refused. Reading
works without JavaScript.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import httpx
from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from branchline import naming
from branchline.config import Config
from branchline.engine import logs as run_logs
from branchline.errors import BranchlineError
from branchline.server.api import Action, RunId, project_run
from branchline.store import Store, mask_url
from branchline.store import branches as branch_rows
from branchline.store import compute as compute_rows
from branchline.store import forge as forge_rows
from branchline.store import previews as preview_rows
from branchline.store import rollouts as rollout_rows
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

    def issue(self, name: str, scope: str) -> str:
        payload = json.dumps({"n": name, "s": scope, "e": int(time.time()) + SESSION_SECONDS,
                              "r": secrets.token_hex(8)}, separators=(",", ":"))  # fmt: skip
        return f"{payload.encode().hex()}.{self._sign(payload)}"

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


def router(
    config: Config, store: Store, actions: dict[str, Action] | None, sessions: Sessions,
    edge_port: int | None = None,
) -> APIRouter:  # fmt: skip
    project = config.project.name
    routes = APIRouter(prefix="/dashboard", include_in_schema=False)

    def health_url(d: compute_rows.DeploymentRow) -> str | None:
        service = config.services.get(d.service)
        port = d.detail.get("port")
        if service is None or not port:
            return None
        return f"http://127.0.0.1:{int(port)}{service.health_path}"

    def page(request: Request, name: str, **context: Any) -> HTMLResponse:
        cookie = request.cookies.get(COOKIE, "")
        session = sessions.read(cookie)
        html = _templates.get_template(name).render(
            project=project, user=session["n"] if session else None,
            csrf=sessions.csrf(cookie) if session else "", **context,
        )  # fmt: skip
        return HTMLResponse(html)

    def user(request: Request) -> dict[str, Any]:
        session = sessions.read(request.cookies.get(COOKIE))
        if session is None:
            raise HTTPException(303, headers={"Location": "/dashboard/login"})
        return session

    def checked(request: Request, csrf: str) -> dict[str, Any]:
        session = user(request)
        expected = sessions.csrf(request.cookies.get(COOKIE, ""))
        if not hmac.compare_digest(expected, csrf):
            raise HTTPException(403, "the form's CSRF token is missing or wrong; reload the page")
        return session

    @routes.get("/login")
    async def login_page(request: Request) -> HTMLResponse:
        return page(request, "login.html", title="Log in")

    @routes.post("/login")
    async def login(request: Request, token: str = Form(...)) -> Response:
        async with store.connect() as conn:
            found = await token_rows.find(conn, project, token.strip())
        if found is None:
            return page(request, "login.html", title="Log in", notice="unknown token")
        answer = RedirectResponse("/dashboard/", status_code=303)
        answer.set_cookie(COOKIE, sessions.issue(found.name, found.scope), httponly=True,
                          samesite="lax", max_age=SESSION_SECONDS, path="/dashboard")  # fmt: skip
        return answer

    @routes.post("/logout")
    async def logout(request: Request, csrf: str = Form("")) -> Response:
        checked(request, csrf)
        answer = RedirectResponse("/dashboard/login", status_code=303)
        answer.delete_cookie(COOKIE, path="/dashboard")
        return answer

    @routes.get("/")
    async def environments(request: Request, notice: str | None = None) -> HTMLResponse:
        user(request)
        async with store.connect() as conn:
            live = await compute_rows.deployments(conn, project, statuses=("live",))
            previews = [p for p in await preview_rows.list_previews(conn, project)
                        if p.status != "deleted"]  # fmt: skip
            branches = {b.name: b for b in await branch_rows.list_all(conn, project)}
            production = await rollout_rows.branch_of(conn, project, naming.PRODUCTION)
            releases = {d.release_id: await compute_rows.get_release(conn, d.release_id)
                        for d in live}  # fmt: skip
        port = f":{edge_port}" if edge_port and edge_port != 80 else ""
        # Health as it is now, not as it was at deploy time: every service asked at once.
        # A short timeout, since the page waits on them.
        async with httpx.AsyncClient(timeout=1.0, trust_env=False) as probes:
            checks = await asyncio.gather(*(_probe(probes, health_url(d)) for d in live))
        health = {d.id: found for d, found in zip(live, checks, strict=True)}

        def env(
            name: str, status: str, branch: str, expires: datetime | None, pr: int | None = None
        ) -> dict[str, Any]:
            services = []
            for d in sorted((d for d in live if d.environment == name), key=lambda d: d.service):
                release = releases.get(d.release_id)
                services.append({
                    "service": d.service, "url": f"http://{d.detail.get('host')}{port}/",
                    "release": release.name if release else "-",
                    "commit": release.commit_sha if release else "",
                    "health": health[d.id],
                })  # fmt: skip
            row = branches.get(branch)
            return {"name": name, "status": status, "branch": branch, "expires_at": expires,
                    "pr": pr,
                    "size": _size(row.size_bytes) if row else "",
                    "age": _ago(row.created_at) if row else "", "services": services}  # fmt: skip

        found = [env(naming.PRODUCTION, "live", production or config.database.parent, None)]
        found += [env(naming.environment_for_pr(p.pr), p.status, f"pr-{p.pr}", p.expires_at,
                      p.pr) for p in previews]  # fmt: skip
        return page(request, "environments.html", title="Environments", environments=found,
                    notice=notice)  # fmt: skip

    @routes.get("/runs")
    async def runs(request: Request) -> HTMLResponse:
        user(request)
        async with store.connect() as conn:
            found = await run_rows.list_runs(conn, project, 100)
        rows = [{**r.__dict__, "seconds": _seconds(r.started_at, r.finished_at)} for r in found]
        return page(request, "runs.html", title="Runs", runs=rows)

    @routes.get("/runs/{run_id}")
    async def run(request: Request, run_id: RunId) -> HTMLResponse:
        user(request)
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
        return page(request, "run.html", title=f"Run {run_id}", run=found, jobs=jobs,
                    lines=[ln.content for ln in lines], last=last)  # fmt: skip

    @routes.get("/runs/{run_id}/events")
    async def events(
        request: Request, run_id: RunId, after: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0
    ) -> StreamingResponse:
        user(request)
        async with store.connect() as conn:
            await project_run(conn, project, run_id)

        async def stream() -> AsyncIterator[str]:
            async for line in run_logs.read(store, run_id, follow=True, after=after):
                yield f"event: line\ndata: {json.dumps({'line': line.content})}\n\n"
            yield "event: end\ndata: {}\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    @routes.get("/deployments")
    async def deployments(request: Request, notice: str | None = None) -> HTMLResponse:
        user(request)
        async with store.connect() as conn:
            live = await compute_rows.deployments(conn, project, statuses=("live",))
            rollouts = await rollout_rows.history(conn, project)
            releases = {d.release_id: await compute_rows.get_release(conn, d.release_id)
                        for d in live}  # fmt: skip
        rows = []
        for d in sorted(live, key=lambda d: (d.environment, d.service)):
            release = releases.get(d.release_id)
            name = release.name if release else "-"
            rows.append({"environment": d.environment, "service": d.service, "release": name})
        history = [{**r.__dict__, "seconds": _seconds(r.started_at, r.finished_at)}
                   for r in rollouts]  # fmt: skip
        return page(request, "deployments.html", title="Deployments", live=rows,
                    rollouts=history, notice=notice)  # fmt: skip

    async def act(
        request: Request, csrf: str, back: str, action_name: str, **params: Any
    ) -> Response:
        """Every button: a session, the form's CSRF token, a token that may write; then
        the action, and back to the page with what happened."""
        session = checked(request, csrf)
        if session["s"] != "write":
            raise HTTPException(403, "this token may only read")
        action = (actions or {}).get(action_name)
        if action is None:
            raise HTTPException(503, "no workers run in this process (`branchline serve`)")
        try:
            done = await action(**params)
            notice = str(done["message"])
        except BranchlineError as exc:
            notice = mask_url(f"{exc.message} ({exc.hint})" if exc.hint else exc.message)
        return RedirectResponse(f"{back}?notice={quote(notice)}", status_code=303)

    @routes.post("/rollback")
    async def rollback(
        request: Request, service: str = Form(...), environment: str = Form(...),
        csrf: str = Form(""),
    ) -> Response:  # fmt: skip
        return await act(request, csrf, "/dashboard/deployments", "rollback",
                         service=service, environment=environment)  # fmt: skip

    @routes.post("/branches/create")
    async def create_branch(
        request: Request, name: str = Form(...), parent: str = Form(""),
        expires: str = Form(""), csrf: str = Form(""),
    ) -> Response:  # fmt: skip
        return await act(request, csrf, "/dashboard/branches", "create_branch", name=name,
                         parent=parent or None, expires=expires or None)  # fmt: skip

    @routes.post("/branches/delete")
    async def delete_branch(
        request: Request, name: str = Form(...), csrf: str = Form("")
    ) -> Response:
        return await act(request, csrf, "/dashboard/branches", "delete_branch", name=name)

    @routes.post("/branches/reset")
    async def reset_branch(
        request: Request, name: str = Form(...), csrf: str = Form("")
    ) -> Response:
        return await act(request, csrf, "/dashboard/branches", "reset_branch", name=name)

    @routes.post("/previews/close")
    async def close_preview(
        request: Request, pr: int = Form(...), csrf: str = Form("")
    ) -> Response:
        return await act(request, csrf, "/dashboard/", "close_preview", pr=pr)

    @routes.get("/branches")
    async def branches(request: Request, notice: str | None = None) -> HTMLResponse:
        user(request)
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
        async with store.connect() as conn:
            production = await rollout_rows.branch_of(conn, project, naming.PRODUCTION)
        return page(request, "branches.html", title="Branches", roots=roots, notice=notice,
                    production=production or config.database.parent)  # fmt: skip

    @routes.get("/prs")
    async def prs(request: Request) -> HTMLResponse:
        user(request)
        found = []
        async with store.connect() as conn:
            for pr in await forge_rows.list_prs(conn, project):
                comments = await forge_rows.comments(conn, project, pr.number)
                statuses = await forge_rows.statuses(conn, project, pr.head_sha)
                found.append({**pr.__dict__, "comments": comments, "statuses": statuses})
        return page(request, "prs.html", title="Pull requests", prs=found)

    return routes
