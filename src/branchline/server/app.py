"""The ASGI application `branchline serve` runs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator

import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

from branchline import __version__
from branchline.config import Config
from branchline.kit import Kit
from branchline.server import api, dashboard, metrics, webhooks
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
) -> FastAPI:
    """The server. `kit` and `actions` are a running `serve`'s; without actions the
    API and dashboard only read."""
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
        repository=config.project.github_repository,
        store=store,
    )
    app.include_router(webhooks.router(settings))
    app.include_router(api.router(kit, actions))
    app.include_router(dashboard.router(kit, actions, dashboard.Sessions()))

    @app.exception_handler(HTTPException)
    async def redirects(_request: Request, exc: HTTPException) -> Response:
        # The dashboard sends a visitor without a session to the log-in page.
        if exc.status_code == 303 and exc.headers and "Location" in exc.headers:
            return RedirectResponse(exc.headers["Location"], status_code=303)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code,
                            headers=exc.headers)  # fmt: skip

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> str:
        return await metrics.render(store, config.project.name)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        async with store.connect() as conn:
            await conn.execute("SELECT 1")
        return JSONResponse({"status": "ok", "version": __version__})

    return app


class EmbeddedServer(uvicorn.Server):
    """uvicorn inside `branchline serve`: the process's own handlers own the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def run_server(app: FastAPI, *, port: int) -> None:
    """Serve `app` on 127.0.0.1:`port` until cancelled."""
    server = EmbeddedServer(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    try:
        await server.serve()
    finally:
        server.should_exit = True
