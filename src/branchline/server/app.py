"""The ASGI application `branchline serve` runs."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
from collections.abc import AsyncIterator, Iterator

import psycopg
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from procrastinate.exceptions import ConnectorException

from branchline import __version__
from branchline.config import Config
from branchline.errors import StoreError
from branchline.kit import Kit
from branchline.masking import mask_url
from branchline.providers.forge import ApprovalGate
from branchline.server import api, dashboard, limits, metrics, webhooks
from branchline.server.actions import Actions
from branchline.store import Store


def webhook_secret(config: Config) -> bytes | None:
    """`[forge.github] webhook_secret`, else BRANCHLINE_WEBHOOK_SECRET; None: refuse all."""
    github = config.forge.github
    if github is not None and github.webhook_secret is not None:
        return github.webhook_secret.get_secret_value().encode()
    value = os.environ.get("BRANCHLINE_WEBHOOK_SECRET")
    return value.encode() if value else None


def create_app(
    config: Config,
    store: Store,
    *,
    secret: bytes | None = None,
    kit: Kit | None = None,
    actions: Actions | None = None,
    edge_port: int | None = None,
    body_deadline: float = limits.BODY_DEADLINE,
) -> FastAPI:
    """The server. `kit` and `actions` are a running `serve`'s; without actions the
    API and dashboard only read. Every request body is capped and must arrive within
    `body_deadline` seconds (see `limits`)."""
    kit = kit or Kit.build(config, store, edge_port=edge_port)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with store.pooled(max_size=10):  # a burst of deliveries shares ten
            yield

    app = FastAPI(title="branchline", version=__version__, lifespan=lifespan)
    app.state.project = config.project.name
    settings = webhooks.WebhookSettings(
        project=config.project.name,
        secret=secret if secret is not None else webhook_secret(config),
        repository=(config.forge.github and config.forge.github.repository)
        or config.project.github_repository,
        store=store,
        # A code host that says who may write is asked before a label approves.
        approvals_checked=isinstance(kit.forge, ApprovalGate),
    )
    sessions = dashboard.Sessions()
    app.include_router(webhooks.router(settings))
    app.include_router(api.router(kit, actions))
    app.include_router(dashboard.router(kit, actions, sessions))
    project = config.project.name
    small = limits.API_BODY
    app.add_middleware(
        limits.BodyLimits,
        rules=[
            limits.Rule("/webhooks/", limits.WEBHOOK_BODY, body_deadline,
                        webhooks.gate(settings), key="message"),
            limits.Rule("/api/", small, body_deadline, api.gate(store, project)),
            limits.Rule("/dashboard/", small, body_deadline,
                        dashboard.gate(store, project, sessions)),
        ],
        default=limits.Rule("/", small, body_deadline),
    )  # fmt: skip
    metrics_token = config.server.metrics_token

    @app.exception_handler(HTTPException)
    async def redirects(_request: Request, exc: HTTPException) -> Response:
        # The dashboard sends a visitor without a session to the log-in page.
        if exc.status_code == 303 and exc.headers and "Location" in exc.headers:
            return RedirectResponse(exc.headers["Location"], status_code=303)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code,
                            headers=exc.headers)  # fmt: skip

    @app.exception_handler(StoreError)
    @app.exception_handler(psycopg.OperationalError)
    @app.exception_handler(ConnectorException)
    async def state_unavailable(_request: Request, exc: Exception) -> Response:
        # The state database died or restarts (serve brings it back): a retryable 503
        # that says so, never a 500 or a request left hanging.
        return JSONResponse(
            {"detail": unavailable_detail(exc), "retry": True},
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER)},
        )

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={401: {"description": "`[server] metrics_token` is set and was not sent"}},
    )
    async def prometheus(request: Request) -> Response:
        if metrics_token is not None:
            scheme, _, sent = request.headers.get("authorization", "").partition(" ")
            expected = metrics_token.get_secret_value().encode()
            given = sent.strip().encode() if scheme.lower() == "bearer" else b""
            if not hmac.compare_digest(given, expected):
                return PlainTextResponse(
                    "/metrics needs `Authorization: Bearer <[server] metrics_token>`\n",
                    status_code=401, headers={"WWW-Authenticate": "Bearer"},
                )  # fmt: skip
        return PlainTextResponse(await metrics.render(store, config.project.name, kit.database))

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        async with store.connect() as conn:
            await conn.execute("SELECT 1")
        return JSONResponse({"status": "ok", "version": __version__})

    return app


RETRY_AFTER = 5  # seconds: about what an embedded state database takes to restart


def unavailable_detail(exc: Exception) -> str:
    """What a client is told while the state database does not answer."""
    why = exc.message if isinstance(exc, StoreError) else " ".join(str(exc).split())
    return (
        f"the state database is unavailable ({mask_url(why)[:300]}); branchline serve brings "
        f"it back by itself: try again in {RETRY_AFTER} s. Nothing was recorded."
    )


class EmbeddedServer(uvicorn.Server):
    """uvicorn inside `branchline serve`: the process's own handlers own the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


GRACEFUL_SHUTDOWN = 2  # seconds open requests (a streamed log) get when serve stops


async def run_server(app: FastAPI, *, port: int, host: str = "127.0.0.1") -> None:
    """Serve `app` on `host`:`port` (`[server] bind`) until cancelled."""
    server = EmbeddedServer(
        uvicorn.Config(
            app, host=host, port=port, log_level="warning", lifespan="on",
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
        )
    )  # fmt: skip
    serving = asyncio.ensure_future(server.serve())
    try:
        await asyncio.shield(serving)
    finally:
        # Cancelled (serve stops, or `branchline stop` pauses the workers): end as
        # uvicorn ends on a signal, its lifespan shut down. Cancelling it outright left
        # the lifespan task to die later with a CancelledError traceback in edge.log.
        server.should_exit = True
        await serving
