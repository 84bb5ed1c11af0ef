"""The REST API (`/api/...`): what a team reads, and the few actions it takes.

Every request carries `Authorization: Bearer <token>` (`branchline token create`):
none or an unknown one is 401; a read-only token on an action is 403. A request with
a body has its token checked before the body is read (`gate`, run by
`limits.BodyLimits`, which also caps bodies at 1 MB and reads them with a deadline). Answers never
hold a secret value, a sensitive artifact or a connection URI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.datastructures import Headers
from starlette.types import Scope

from branchline import naming
from branchline.engine import logs as run_logs
from branchline.environment import PRODUCTION
from branchline.errors import BranchlineError, StoreError, UsageError
from branchline.kit import Kit
from branchline.masking import mask_url
from branchline.operations.environments import list_environments
from branchline.operations.previews import Started
from branchline.server.actions import Actions
from branchline.server.limits import Refusal
from branchline.store import Store
from branchline.store import branches as branch_rows
from branchline.store import dns as dns_rows
from branchline.store import forge as forge_rows
from branchline.store import rollouts as rollout_rows
from branchline.store import runs as run_rows
from branchline.store import secrets as secret_rows
from branchline.store import tokens as token_rows

# Ids are Postgres bigints: anything larger is a 422, not a database error.
RunId = Annotated[int, Path(ge=1, le=2**63 - 1)]
PrNumber = Annotated[int, Path(ge=1, le=naming.MAX_PR)]


class Project(BaseModel):
    name: str
    zone: str
    production_branch: str
    github_repository: str | None
    services: list[str]
    providers: dict[str, str]


class Run(BaseModel):
    id: int
    workflow: str
    status: str
    triggered_by: str
    ref: str | None
    sha: str | None
    pr: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class Step(BaseModel):
    name: str
    status: str
    exit_code: int | None
    started_at: datetime | None
    finished_at: datetime | None


class Job(BaseModel):
    name: str
    status: str
    needs: list[str]
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None
    steps: list[Step]


class RunDetail(Run):
    jobs: list[Job]


class LogLine(BaseModel):
    id: int
    job_id: int | None
    stream: str
    line: str
    at: datetime


class ServiceState(BaseModel):
    service: str
    status: str
    release: str
    commit: str
    url: str | None


class Environment(BaseModel):
    name: str
    branch: str | None
    status: str
    expires_at: datetime | None
    services: list[ServiceState]


class Rollout(BaseModel):
    id: int
    kind: str  # rollout (a production run), or by hand: deploy, restart, rollback
    environment: str
    run_id: int | None
    sha: str | None
    triggered_by: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    detail: dict[str, Any]


class Branch(BaseModel):
    name: str
    parent: str | None
    status: str
    created_at: datetime
    expires_at: datetime | None


class Record(BaseModel):
    name: str
    type: str
    content: str
    proxied: bool
    environment: str | None


class SecretName(BaseModel):
    environment: str
    name: str
    updated_at: datetime


class PullRequest(BaseModel):
    number: int
    title: str
    head: str
    base: str
    sha: str
    state: str


class Accepted(BaseModel):
    message: str
    run_id: int | None = None


class NewBranch(BaseModel):
    name: str = Field(description="a-z, 0-9 and single '-', up to 63 characters")
    parent: str | None = Field(None, description="the branch to copy (default: production)")
    expires: str | None = Field(None, description='a duration such as "2h", or an ISO time')


class Problem(BaseModel):
    detail: str


def _problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """What an endpoint may answer besides success, for the OpenAPI document."""
    described = {
        400: "the request names something invalid; the detail says how to fix it",
        401: "no bearer token, or an unknown one",
        403: "the token may only read",
        404: "no such thing in this project",
        408: "the request body did not arrive within the deadline",
        409: "the action cannot be done in the current state; the detail says why",
        413: "the request body is larger than 1 MB",
        503: "no workers run in this process",
    }
    return {code: {"model": Problem, "description": described[code]} for code in codes}


READ_PROBLEMS = _problems(401)
ACTION_PROBLEMS = _problems(400, 401, 403, 408, 409, 413, 503)


# Declared for the OpenAPI document; a missing or malformed header is our own 401.
bearer = HTTPBearer(auto_error=False, description="a token from `branchline token create`")


_NO_BEARER = "a bearer token is required (`branchline token create`)"
_CHALLENGE = (("WWW-Authenticate", "Bearer"),)


async def known_token(store: Store, project: str, value: str) -> token_rows.TokenRow | None:
    """The token row `value` is, or None (nothing asked of the store for an empty one)."""
    if not value:
        return None
    async with store.connect() as conn:
        return await token_rows.find(conn, project, value)


def gate(store: Store, project: str) -> Callable[[Scope], Awaitable[Refusal | None]]:
    """What `limits.BodyLimits` asks before reading an API request's body: a known
    token (what it may do is the endpoint's to say, as ever)."""

    async def check(scope: Scope) -> Refusal | None:
        scheme, _, value = Headers(scope=scope).get("authorization", "").partition(" ")
        value = value.strip() if scheme.lower() == "bearer" else ""
        if not value:
            return Refusal(401, _NO_BEARER, _CHALLENGE)
        if await known_token(store, project, value) is None:
            return Refusal(401, "unknown token", _CHALLENGE)
        return None

    return check


def router(kit: Kit, actions: Actions | None = None) -> APIRouter:
    """The API over `kit`; its actions are a running `serve`'s (503 without)."""
    config, store = kit.config, kit.store
    project = config.project.name

    async def token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)] = None,
    ) -> token_rows.TokenRow:
        value = credentials.credentials.strip() if credentials else ""
        if not value:
            raise HTTPException(401, _NO_BEARER, headers={"WWW-Authenticate": "Bearer"})
        found = await known_token(store, project, value)
        if found is None:
            raise HTTPException(401, "unknown token", headers={"WWW-Authenticate": "Bearer"})
        return found

    # A default, not an annotation: `token` is local, which a string annotation cannot name.
    async def writer(found: token_rows.TokenRow = Depends(token)) -> token_rows.TokenRow:
        if found.scope != "write":
            raise HTTPException(403, "this token may only read")
        return found

    async def writer_name(found: token_rows.TokenRow = Depends(writer)) -> str:
        return f"token {found.name}"

    read = [Depends(token)]
    write = [Depends(writer)]
    routes = APIRouter(prefix="/api", responses=READ_PROBLEMS)

    @routes.get("/projects", dependencies=read)
    async def projects() -> list[Project]:
        """The project this server serves (one per `branchline serve`); never a secret."""
        return [Project(
            name=project, zone=config.project.zone,
            production_branch=config.project.production_branch,
            github_repository=config.project.github_repository,
            services=[s.name for s in config.services_in_deploy_order()],
            providers={"database": config.database.provider, "compute": config.compute.provider,
                       "dns": config.dns.provider, "forge": config.forge.provider},
        )]  # fmt: skip

    @routes.get("/runs", dependencies=read)
    async def runs(limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[Run]:
        async with store.connect() as conn:
            found = await run_rows.list_runs(conn, project, limit)
        return [_run(r) for r in found]

    @routes.get("/runs/{run_id}", dependencies=read, responses=_problems(404))
    async def run(run_id: RunId) -> RunDetail:
        async with store.connect() as conn:
            found = await project_run(conn, project, run_id)
            jobs = []
            for job in await run_rows.jobs_of(conn, run_id):
                steps = [Step(name=s.name, status=s.status, exit_code=s.exit_code,
                              started_at=s.started_at, finished_at=s.finished_at)
                         for s in await run_rows.steps_of(conn, job.id)]  # fmt: skip
                jobs.append(Job(name=job.name, status=job.status, needs=list(job.needs),
                                error=job.error, started_at=job.started_at,
                                finished_at=job.finished_at, steps=steps))  # fmt: skip
        return RunDetail(**_run(found).model_dump(), jobs=jobs)

    @routes.get(
        "/runs/{run_id}/logs",
        dependencies=read,
        response_model=list[LogLine],
        responses={200: {"content": {"text/event-stream": {}},
                         "description": "the lines; with follow=1 a stream of events"},
                   **_problems(404)},
    )  # fmt: skip
    async def logs(
        run_id: RunId,
        after: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
        follow: Annotated[int, Query(ge=0, le=1)] = 0,
    ) -> Any:
        async with store.connect() as conn:
            await project_run(conn, project, run_id)
            if follow:
                return StreamingResponse(
                    _events(store, run_id, after), media_type="text/event-stream"
                )
            lines = await run_rows.logs_after(conn, run_id, after)
        # Lines were masked before they were stored.
        return [LogLine(id=ln.id, job_id=ln.job_id, stream=ln.stream, line=ln.content, at=ln.at)
                for ln in lines]  # fmt: skip

    @routes.get("/environments", dependencies=read)
    async def environments() -> list[Environment]:
        return [
            Environment(
                name=e.name, status=e.status, branch=e.branch, expires_at=e.expires_at,
                services=[ServiceState(service=s.service, status=s.status, release=s.release,
                                       commit=s.commit, url=s.url) for s in e.services],
            )
            for e in await list_environments(kit)
        ]  # fmt: skip

    @routes.get("/deployments/history", dependencies=read)
    async def history() -> list[Rollout]:
        async with store.connect() as conn:
            found = await rollout_rows.history(conn, project)
        return [Rollout(id=r.id, kind=r.kind, environment=r.environment, run_id=r.run_id,
                        sha=r.sha, triggered_by=r.triggered_by,
                        status=r.status, started_at=r.started_at, finished_at=r.finished_at,
                        detail=r.detail) for r in found]  # fmt: skip

    @routes.get("/branches", dependencies=read)
    async def branches() -> list[Branch]:
        async with store.connect() as conn:
            found = await branch_rows.list_all(conn, project)
        return [Branch(name=b.name, parent=b.parent, status=b.status, created_at=b.created_at,
                       expires_at=b.expires_at) for b in found]  # fmt: skip

    @routes.get("/dns", dependencies=read)
    async def dns() -> list[Record]:
        async with store.connect() as conn:
            found = await dns_rows.list_all(conn, project)
        return [Record(name=r.name, type=r.type, content=r.content, proxied=r.proxied,
                       environment=r.environment) for r in found]  # fmt: skip

    @routes.get("/secrets", dependencies=read)
    async def secrets() -> list[SecretName]:
        async with store.connect() as conn:
            found = await secret_rows.list_meta(conn, project, None)
        return [SecretName(environment=s.environment, name=s.name, updated_at=s.updated_at)
                for s in found]  # fmt: skip

    @routes.get("/prs", dependencies=read)
    async def prs() -> list[PullRequest]:
        async with store.connect() as conn:
            found = await forge_rows.list_prs(conn, project)
        return [
            PullRequest(number=p.number, title=p.title, head=p.head_branch,
                        base=p.base_branch, sha=p.head_sha, state=p.state)
            for p in found
        ]  # fmt: skip

    def act() -> Actions:
        if actions is None:
            raise HTTPException(503, "no workers run in this process (`branchline serve`)")
        return actions

    async def perform(work: Callable[[Actions], Awaitable[Started]]) -> Accepted:
        try:
            done = await work(act())
        except StoreError:
            raise  # the state database is down: the app's handler answers 503
        except BranchlineError as exc:
            # A provider's error may quote a connection URI: never its password.
            said = mask_url(f"{exc.message} ({exc.hint})" if exc.hint else exc.message)
            raise HTTPException(400 if isinstance(exc, UsageError) else 409, said) from None
        return Accepted(message=done.message, run_id=done.run_id)

    acting: dict[str, Any] = {"dependencies": write, "responses": ACTION_PROBLEMS}

    @routes.post("/runs/{run_id}/cancel", **acting)
    async def cancel(run_id: RunId, who: str = Depends(writer_name)) -> Accepted:
        return await perform(lambda a: a.cancel(run_id, f"{who} (API)"))

    @routes.post("/runs/{run_id}/rerun", **acting)
    async def rerun(run_id: RunId) -> Accepted:
        return await perform(lambda a: a.rerun(run_id))

    @routes.post("/services/{service}/rollback", **acting)
    async def rollback(service: str, environment: str = PRODUCTION) -> Accepted:
        return await perform(lambda a: a.rollback(service, environment))

    @routes.post("/previews/{pr}/close", **acting)
    async def close_preview(pr: PrNumber) -> Accepted:
        return await perform(lambda a: a.close_preview(pr))

    @routes.post("/prs/{pr}/approve", **acting)
    async def approve(pr: PrNumber, who: str = Depends(writer_name)) -> Accepted:
        """Approve a fork's pull request at its head commit (its preview may follow)."""
        return await perform(lambda a: a.approve(pr, who))

    @routes.post("/pipelines/testing", **acting)
    async def trigger(branch: str) -> Accepted:
        return await perform(lambda a: a.push(branch))

    @routes.post("/branches", **acting)
    async def create_branch(branch: NewBranch) -> Accepted:
        return await perform(lambda a: a.create_branch(branch.name, branch.parent, branch.expires))

    @routes.delete("/branches/{name}", **acting)
    async def delete_branch(name: str) -> Accepted:
        return await perform(lambda a: a.delete_branch(name))

    @routes.post("/branches/{name}/reset", **acting)
    async def reset_branch(name: str) -> Accepted:
        return await perform(lambda a: a.reset_branch(name))

    return routes


async def project_run(conn: Any, project: str, run_id: int) -> run_rows.RunRow:
    """The run, when it is `project`'s; else 404 (another project's runs stay its own)."""
    found = await run_rows.get_run(conn, run_id)
    if found is None or found.project != project:
        raise HTTPException(404, f"there is no run {run_id}")
    return found


async def _events(store: Store, run_id: int, after: int) -> AsyncIterator[str]:
    """Server-sent events: each stored line after `after` as it arrives (LISTEN/NOTIFY),
    then `end`."""
    async for line in run_logs.read(store, run_id, follow=True, after=after):
        data = LogLine(id=line.id, job_id=line.job_id, stream=line.stream, line=line.content,
                       at=line.at)  # fmt: skip
        yield f"id: {line.id}\nevent: line\ndata: {data.model_dump_json()}\n\n"
    yield "event: end\ndata: {}\n\n"


def _run(r: run_rows.RunRow) -> Run:
    return Run(id=r.id, workflow=r.workflow, status=r.status, triggered_by=r.triggered_by,
               ref=r.ref, sha=r.sha, pr=r.pr, created_at=r.created_at,
               started_at=r.started_at, finished_at=r.finished_at)  # fmt: skip
