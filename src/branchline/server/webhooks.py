"""`POST /webhooks/github`: GitHub's deliveries, verified before they are parsed.

The signature (`X-Hub-Signature-256: sha256=<hex>`, HMAC-SHA256 of the raw body with
the webhook secret) is checked in constant time first: a bad or missing one is 401
and nothing is read. Then the body must be a JSON object (else 400). `ping` is
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
import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from branchline import events
from branchline.providers.forge import github_events
from branchline.store import Store, approvals
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


@dataclass
class WebhookSettings:
    project: str
    secret: bytes | None
    repository: str | None  # "owner/name": deliveries for any other are ignored
    store: Store


def _answer(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"message": message, **extra}, status_code=status)


def router(settings: WebhookSettings) -> APIRouter:
    routes = APIRouter()

    @routes.post(
        "/webhooks/github",
        responses={
            200: {"description": "ping answered, or a replay"},
            202: {"description": "accepted: recorded, or ignored"},
            400: {"description": "malformed body or headers"},
            401: {"description": "missing or wrong signature"},
        },
    )
    async def github(request: Request) -> JSONResponse:
        body = await request.body()
        if settings.secret is None:
            return _answer(401, "no webhook secret is configured; every delivery is refused")
        if not verify(settings.secret, body, request.headers.get("x-hub-signature-256")):
            return _answer(401, "missing or wrong X-Hub-Signature-256")
        event = request.headers.get("x-github-event", "")
        delivery = request.headers.get("x-github-delivery", "")
        if not event or not _DELIVERY.fullmatch(delivery):
            return _answer(400, "X-GitHub-Event and X-GitHub-Delivery are required")
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _answer(400, "the body is not JSON")
        if not isinstance(payload, dict):
            return _answer(400, "the body is not a JSON object")
        if event == "ping":
            return _answer(200, "pong", zen=str(payload.get("zen", "")))
        if event not in github_events.HANDLED:
            return _answer(202, f"{event!r} events are ignored")
        repository = github_events.repository(payload)
        if settings.repository and repository.lower() != settings.repository.lower():
            return _answer(202, f"no project here is configured for {repository or 'it'}")
        try:
            parsed = github_events.parse(event, payload)
        except github_events.MalformedDeliveryError as exc:
            return _answer(400, f"the {event} payload is malformed: {exc}")
        if parsed is None:
            return _answer(202, f"this {event} starts nothing here")
        recorded = await _record(settings, parsed, delivery)
        if recorded is None:
            return _answer(200, "this delivery was recorded before", delivery=delivery)
        return _answer(202, "recorded", delivery=delivery, event_id=recorded.id)

    return routes


async def _record(
    settings: WebhookSettings, event: events.Event, delivery: str
) -> forge_rows.EventRow | None:
    async with settings.store.connect() as conn, conn.transaction():
        if isinstance(event, events.PullRequestChanged):
            await forge_rows.mirror_pr(
                conn, settings.project, number=event.number, title=event.title,
                head=event.head_branch, base=event.base_branch, sha=event.head_sha,
                state=github_events.state_of(event), fork=event.fork,
            )  # fmt: skip
        if isinstance(event, events.PullRequestApproved):
            await approvals.approve(conn, settings.project, event.number, event.sha, event.by)
        return await forge_rows.record(
            conn, settings.project, event, delivery_id=f"github-{delivery}", source="webhook"
        )
