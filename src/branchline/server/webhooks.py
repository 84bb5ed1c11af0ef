"""`POST /webhooks/github`: GitHub's deliveries, verified before they are parsed.

The signature (`X-Hub-Signature-256: sha256=<hex>`, HMAC-SHA256 of the raw body with
the webhook secret) is checked in constant time first: a missing or malformed one
(or no secret configured) is 401 before a byte of the body is read (`gate`, run by
`limits.BodyLimits`, which also caps the body at GitHub's 25 MB and reads it with a
deadline); a wrong one is 401 before anything is parsed. Then the body must be a
JSON object (else 400). `ping` is
answered; `push` and `pull_request` deliveries are parsed into branchline's own
events (`providers.forge.github_events`) and recorded (a replayed delivery id is
recorded once) for the dispatcher to act on; anything else (a tag, a label change),
or a delivery for a repository this project is not, is acknowledged (202) and
ignored. The answer never
waits for the work: recording is one insert.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import Scope

from branchline import events, naming
from branchline.providers.forge import github_events, payloads
from branchline.server.limits import Refusal
from branchline.store import Store, deliveries
from branchline.store import forge as forge_rows

logger = logging.getLogger(__name__)
_DELIVERY = re.compile(r"[A-Za-z0-9._:-]{1,100}")
_SIGNATURE = re.compile(r"sha256=([0-9a-f]{64})")


def signature_of(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes | None, body: bytes, header: str | None) -> bool:
    """True when `header` is the body's signature under `secret` (constant time)."""
    if not secret or not header or not _SIGNATURE.fullmatch(header.strip()):
        return False
    return hmac.compare_digest(signature_of(secret, body), header.strip())


def _early_refusal(secret: bytes | None, header: str | None) -> str | None:
    """Why a delivery is refused from its head alone (None: read its body)."""
    if secret is None:
        return "no webhook secret is configured; every delivery is refused"
    if not header or not _SIGNATURE.fullmatch(header.strip()):
        return "missing or wrong X-Hub-Signature-256"
    return None


@dataclass
class WebhookSettings:
    project: str
    secret: bytes | None
    repository: str | None  # "owner/name": deliveries for any other are ignored
    store: Store
    # True: a label's approval is recorded as asked, and confirmed by the dispatcher
    # once the code host says its sender may write (a payload is not trusted for it).
    approvals_checked: bool = False


def _answer(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"message": message, **extra}, status_code=status)


def gate(settings: WebhookSettings) -> Callable[[Scope], Awaitable[Refusal | None]]:
    """What `limits.BodyLimits` asks before reading a delivery's body."""

    async def check(scope: Scope) -> Refusal | None:
        header = Headers(scope=scope).get("x-hub-signature-256")
        said = _early_refusal(settings.secret, header)
        return None if said is None else Refusal(401, said)

    return check


def router(settings: WebhookSettings) -> APIRouter:
    routes = APIRouter()

    @routes.post(
        "/webhooks/github",
        responses={
            200: {"description": "ping answered, or a replay"},
            202: {"description": "accepted: recorded, or ignored"},
            400: {"description": "malformed body or headers"},
            401: {"description": "missing or wrong signature"},
            408: {"description": "the body did not arrive within the deadline"},
            413: {"description": "the body is larger than 25 MB"},
        },
    )
    async def github(request: Request) -> JSONResponse:
        header = request.headers.get("x-hub-signature-256")
        refused = _early_refusal(settings.secret, header)
        if refused is not None:
            return _answer(401, refused)
        body = await request.body()  # capped and timed by limits.BodyLimits
        if not verify(settings.secret, body, header):
            return _answer(401, "missing or wrong X-Hub-Signature-256")
        event = request.headers.get("x-github-event", "")
        delivery = request.headers.get("x-github-delivery", "")
        if not event or not _DELIVERY.fullmatch(delivery):
            return _answer(400, "X-GitHub-Event and X-GitHub-Delivery are required")
        return await _handle(settings, event, delivery, body)

    return routes


async def _handle(
    settings: WebhookSettings, event: str, delivery: str, body: bytes
) -> JSONResponse:
    """A verified delivery: parsed into its model (400 with the fields that are wrong),
    then acknowledged, ignored or recorded. Nothing malformed is stored."""
    try:
        payload = payloads.parse_json(body)
        if event != "ping" and event not in github_events.HANDLED:
            return _answer(202, f"{naming.printable(event, 60)!r} events are ignored")
        typed = github_events.validate(event, payload)
    except payloads.MalformedPayloadError as exc:
        errors = [{"field": field, "problem": problem} for field, problem in exc.errors[:20]]
        return _answer(400, str(exc), errors=errors)
    if isinstance(typed, payloads.PingPayload):
        return _answer(200, "pong", zen=typed.shown_zen)
    assert typed is not None
    repository = github_events.repository(typed)
    if settings.repository and repository.lower() != settings.repository.lower():
        return _answer(202, f"no project here is configured for {repository or 'it'}")
    parsed = github_events.event_of(typed)
    if parsed is None:
        return _answer(202, f"this {event} starts nothing here")
    head_repo = typed.head_repository if isinstance(typed, payloads.PullRequestPayload) else ""
    recorded = await _record(settings, parsed, delivery, head_repo)
    if recorded is None:
        return _answer(200, "this delivery was recorded before", delivery=delivery)
    return _answer(202, "recorded", delivery=delivery, event_id=recorded.id)


async def _record(
    settings: WebhookSettings, event: events.Event, delivery: str, head_repo: str
) -> forge_rows.EventRow | None:
    async with settings.store.connect() as conn:
        return await deliveries.record_github(
            conn, settings.project, event, delivery_id=f"github-{delivery}", source="webhook",
            head_repo=head_repo, approve=not settings.approvals_checked,
        )  # fmt: skip
