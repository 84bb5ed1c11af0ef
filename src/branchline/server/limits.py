"""Limits on what a client may send the server: a cap on every request body and a
deadline to send it in, enforced before any handler sees a byte.

An ASGI middleware (`BodyLimits`) picks the rule of the request's path. A body
announced larger than the rule's cap (Content-Length) is refused with 413 at once,
before anything is read; then the rule's gate runs (the webhook's signature header,
the API's bearer token, the dashboard's session), so that a stranger's body is never
read at all; then the body is read, counting bytes as they come (chunked bodies
too), and refused with 413 as soon as it passes the cap, or with 408 when it has not
all arrived by the deadline. Only a body that passed all of that is handed to the
application, whole. Every refusal closes the connection, so the rest of a refused
body is never read: the server holds at most one cap's worth per request.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from branchline.errors import StoreError

MB = 1024 * 1024
WEBHOOK_BODY = 25 * MB
"""GitHub's own cap on a delivery's payload."""
API_BODY = 1 * MB
"""JSON actions and forms are a few hundred bytes; a megabyte is generous."""
BODY_DEADLINE = 10.0
"""Seconds a whole body may take to arrive (GitHub itself gives a delivery 10 s)."""


@dataclass(frozen=True)
class Refusal:
    """What a gate answers instead of letting a request's body be read."""

    status: int
    message: str
    headers: tuple[tuple[str, str], ...] = ()


Gate = Callable[[Scope], Awaitable[Refusal | None]]
"""Looks at a request's head (never its body); a Refusal ends the request."""


@dataclass(frozen=True)
class Rule:
    prefix: str  # the paths it covers
    max_bytes: int
    deadline: float = BODY_DEADLINE
    gate: Gate | None = None
    key: str = "detail"  # the answer's field for the message ("message" for webhooks)


class BodyLimits:
    """The middleware: `rules` by longest matching path prefix, else `default`."""

    def __init__(self, app: ASGIApp, rules: Sequence[Rule], default: Rule) -> None:
        self.app = app
        self.rules = sorted(rules, key=lambda r: len(r.prefix), reverse=True)
        self.default = default

    def rule(self, path: str) -> Rule:
        return next((r for r in self.rules if path.startswith(r.prefix)), self.default)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rule = self.rule(scope["path"])
        length, chunked = _framing(scope)
        if not chunked and not length:
            await self.app(scope, receive, send)  # no body: nothing to limit
            return
        if length is not None and length > rule.max_bytes:
            await _refuse(send, rule, Refusal(413, _too_large(length, rule)))
            return
        if rule.gate is not None:
            try:
                refusal = await rule.gate(scope)
            except (StoreError, psycopg.OperationalError):
                # Who is asking cannot be known now (the state database is down, or
                # died under this very query); the body is not read blind.
                refusal = Refusal(503, "the state database cannot be reached; try again soon",
                                  (("Retry-After", "5"),))  # fmt: skip
            if refusal is not None:
                await _refuse(send, rule, refusal)
                return
        try:
            body = await _read(receive, rule)
        except _BodyRefusedError as exc:
            await _refuse(send, rule, exc.refusal)
            return
        if body is None:
            return  # the client left before its body was complete
        await self.app(scope, _replay(body, receive), send)


class _BodyRefusedError(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


def _framing(scope: Scope) -> tuple[int | None, bool]:
    """(Content-Length, chunked) of the request. The HTTP server already refused
    a malformed or contradictory framing."""
    length: int | None = None
    chunked = False
    for name, value in scope.get("headers", ()):
        if name == b"content-length" and value.strip().isdigit():
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = True
    return length, chunked


def _too_large(size: int | None, rule: Rule) -> str:
    said = f"of {size:,} bytes " if size is not None else ""
    return (
        f"the request body {said}is larger than the {rule.max_bytes:,} bytes this "
        f"endpoint accepts; send a smaller one"
    )


async def _read(receive: Receive, rule: Rule) -> bytes | None:
    """The whole body, or None when the client disconnected. Refused (413) the moment
    it passes the cap, and (408) when it is not complete by the deadline."""
    pieces: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(rule.deadline):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                piece = message.get("body", b"")
                size += len(piece)
                if size > rule.max_bytes:
                    raise _BodyRefusedError(Refusal(413, _too_large(None, rule)))
                if piece:
                    pieces.append(piece)
                if not message.get("more_body", False):
                    return b"".join(pieces)
    except TimeoutError:
        raise _BodyRefusedError(
            Refusal(
                408,
                f"the request body did not arrive within {rule.deadline:g} s "
                f"({size:,} bytes came); send it at once",
            )
        ) from None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the application the body read already, then passes on
    (a streaming answer waits on it for the client's disconnect)."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _refuse(send: Send, rule: Rule, refusal: Refusal) -> None:
    """The refusal as JSON, and the connection closed: the rest of the body is never
    read (nor would another request on this connection be)."""
    content = json.dumps({rule.key: refusal.message}).encode()
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(content)).encode()),
        (b"connection", b"close"),
    ]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in refusal.headers]
    start: dict[str, Any] = {"type": "http.response.start", "status": refusal.status,
                             "headers": headers}  # fmt: skip
    await send(start)
    await send({"type": "http.response.body", "body": content, "more_body": False})
