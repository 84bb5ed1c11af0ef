"""What every codex service shares: HTTP plumbing, /health, the database, sessions.

branchline deploys each service from its own directory only, so each service
keeps an identical copy of this file (tests/unit/test_common.py checks that they match).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

MAX_BODY = 1024 * 1024


class HttpError(Exception):
    """Answered as `{"error": message}` with this status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Request:
    method: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> dict[str, Any]:
        try:
            data = json.loads(self.body)
        except ValueError:
            raise HttpError(400, "the body must be JSON") from None
        if not isinstance(data, dict):
            raise HttpError(400, "the body must be a JSON object")
        return data

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode("utf-8", "replace")))

    def cookie(self, name: str) -> str | None:
        for pair in (self.headers.get("Cookie") or "").split(";"):
            key, _, value = pair.strip().partition("=")
            if key == name:
                return value
        return None

    def bearer(self) -> str | None:
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        return token.strip() or None


# A route answers (status, body) or (status, body, headers); a dict or list body
# is sent as JSON, a str as HTML, None as nothing.
Route = Callable[[Request], tuple[Any, ...]]


def connect() -> psycopg.Connection[dict[str, Any]]:
    """A connection to DATABASE_URL (or, when empty, to what PGHOST, PGPORT, ... say)."""
    url = os.environ.get("DATABASE_URL", "")
    return psycopg.connect(url, connect_timeout=5, row_factory=dict_row)


Schema = Mapping[str, tuple[str, ...]]  # table -> the columns a service reads


def health(service: str, schema: Schema | None = None) -> tuple[int, dict[str, str]]:
    """200 when the database answers and has every table and column this release
    reads: so that a release checked against a migrated copy tells whether it still
    works on the new schema (branchline's production pre-flight relies on it)."""
    body = {
        "status": "ok",
        "service": service,
        "commit": os.environ.get("BRANCHLINE_COMMIT") or "dev",
        "release": os.environ.get("BRANCHLINE_RELEASE") or "dev",
        "database": "ok",
    }
    try:
        with connect() as conn:
            conn.execute("SELECT 1")
            for table, columns in (schema or {}).items():
                conn.execute(
                    sql.SQL("SELECT {} FROM {} LIMIT 0").format(
                        sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier(table)
                    )
                )
    except psycopg.Error as error:
        body["status"] = "error"
        body["database"] = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return 503, body
    return 200, body


def token_hash(token: str) -> str:
    """Sessions are stored hashed, peppered with AUTH_SECRET (auth and api share it)."""
    key = os.environ.get("AUTH_SECRET", "").encode()
    return hmac.new(key, token.encode(), hashlib.sha256).hexdigest()


def session_user(conn: psycopg.Connection[dict[str, Any]], token: str | None) -> dict[str, Any]:
    """The user a bearer token belongs to; 401 when it is missing, unknown or expired."""
    row = None
    if token:
        row = conn.execute(
            "SELECT u.id, u.email FROM sessions s JOIN users u ON u.id = s.user_id "
            "WHERE s.token_hash = %s AND s.expires_at > now()",
            (token_hash(token),),
        ).fetchone()
    if row is None:
        raise HttpError(401, "sign in first (Authorization: Bearer <token>)")
    return row


def make_server(
    service: str,
    routes: dict[tuple[str, str], Route],
    port: int = 0,
    schema: Schema | None = None,
) -> ThreadingHTTPServer:
    """An HTTP server answering `routes` and GET /health, on loopback unless HOST says."""
    routes = {("GET", "/health"): lambda request: health(service, schema), **routes}
    verbose = os.environ.get("LOG_LEVEL", "info").lower() in ("debug", "info")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # else keep-alive answers wait 40 ms for an ACK

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            try:
                request = Request(self.command, url.path, self.headers, self.read_body())
                route = routes.get((self.command, url.path))
                if route is None:
                    raise HttpError(404, f"no route for {self.command} {url.path}")
                status, body, *rest = route(request)
                headers = rest[0] if rest else {}
            except HttpError as error:
                status, body, headers = error.status, {"error": error.message}, {}
            except psycopg.OperationalError as error:
                print(f"database unavailable: {error}", file=sys.stderr, flush=True)
                status, body, headers = 503, {"error": "database unavailable"}, {}
            except Exception:
                traceback.print_exc()
                status, body, headers = 500, {"error": "internal error"}, {}
            self.respond(status, body, headers)

        do_POST = do_GET  # noqa: N815 (the name http.server looks for)

        def read_body(self) -> bytes:
            length = self.headers.get("Content-Length") or "0"
            if not (length.isascii() and length.isdigit() and int(length) <= MAX_BODY):
                self.close_connection = True  # the rest of the stream cannot be trusted
                raise HttpError(413 if length.isdigit() else 400, "bad or too long a body")
            return self.rfile.read(int(length))

        def respond(self, status: int, body: Any, headers: Mapping[str, str]) -> None:
            if body is None:
                data, kind = b"", None
            elif isinstance(body, str):
                data, kind = body.encode(), "text/html; charset=utf-8"
            else:
                data, kind = json.dumps(body, default=str).encode(), "application/json"
            self.send_response(status)
            if kind:
                self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            if verbose:
                super().log_message(format, *args)

    return ThreadingHTTPServer((os.environ.get("HOST", "127.0.0.1"), port), Handler)


def serve(service: str, routes: dict[tuple[str, str], Route], schema: Schema | None = None) -> None:
    """Serve on PORT until SIGTERM or Ctrl-C."""
    server = make_server(service, routes, int(os.environ.get("PORT", "8000")), schema)
    stop = lambda *_: threading.Thread(target=server.shutdown).start()  # noqa: E731
    signal.signal(signal.SIGTERM, stop)
    host, port = server.server_address[:2]
    print(f"{service} listening on http://{host}:{port}", file=sys.stderr, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever(poll_interval=0.1)  # stops within 0.1 s of SIGTERM
    server.server_close()
