"""codex api: products, purchases, and the payment provider's webhook.

    GET  /products   -> 200 [{"id", "sku", "name", "price_cents"}]
    GET  /purchases  (Bearer token) -> 200 [{"id", "product", "amount_cents", "status"}]
    POST /purchases  (Bearer token) {"product_id"} -> 201 {"id", "amount_cents", "status"}
    POST /webhooks/payments  (Payment-Signature: t=<ts>,v1=<hex>)
         {"type": "payment.succeeded", "data": {"purchase_id"}} -> 200, the purchase is paid

The signature is Stripe's scheme: v1 is the hex HMAC-SHA256 of "<ts>.<raw body>"
keyed with PAYMENT_WEBHOOK_SECRET; a timestamp more than 5 minutes away is refused.
Sessions are checked in the shared sessions table, so AUTH_SECRET must match auth's.
Environment: PORT, DATABASE_URL, AUTH_SECRET, PAYMENT_WEBHOOK_SECRET.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
from typing import Any

from common import HttpError, Request, connect, serve, session_user

TOLERANCE = 300  # seconds between the signature's timestamp and now


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The Payment-Signature header the provider sends for `body` (tests use it too)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_signature(body: bytes, header: str, secret: str, now: float | None = None) -> bool:
    """True when one of the header's v1 signatures is right and its timestamp is recent."""
    pairs = [part.strip().partition("=") for part in header.split(",")]
    stamps = [value for key, _, value in pairs if key == "t"]
    signatures = [value for key, _, value in pairs if key == "v1"]
    if len(stamps) != 1 or not re.fullmatch(r"[0-9]{1,12}", stamps[0]) or not signatures:
        return False
    timestamp = int(stamps[0])
    if abs((time.time() if now is None else now) - timestamp) > TOLERANCE:
        return False
    expected = sign(secret, body, timestamp).rpartition("v1=")[2].encode()
    # Compare every candidate in constant time (several v1 while a secret is rotated).
    return any(hmac.compare_digest(expected, s.encode("utf-8", "replace")) for s in signatures)


def positive_id(value: Any, name: str) -> int:
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if type(value) is not int or not 0 < value < 2**63:
        raise HttpError(400, f"{name} must be a positive integer")
    return value


def products(request: Request) -> tuple[int, list[dict[str, Any]]]:
    with connect() as conn:
        rows = conn.execute("SELECT id, sku, name, price_cents FROM products ORDER BY id")
        return 200, rows.fetchall()


def my_purchases(request: Request) -> tuple[int, list[dict[str, Any]]]:
    with connect() as conn:
        user = session_user(conn, request.bearer())
        rows = conn.execute(
            "SELECT p.id, pr.name AS product, p.amount_cents, p.status, p.created_at "
            "FROM purchases p JOIN products pr ON pr.id = p.product_id "
            "WHERE p.user_id = %s ORDER BY p.id DESC",
            (user["id"],),
        )
        return 200, rows.fetchall()


def buy(request: Request) -> tuple[int, dict[str, Any]]:
    product_id = positive_id(request.json().get("product_id"), "product_id")
    with connect() as conn:
        user = session_user(conn, request.bearer())
        purchase = conn.execute(
            "INSERT INTO purchases (user_id, product_id, amount_cents) "
            "SELECT %s, id, price_cents FROM products WHERE id = %s "
            "RETURNING id, amount_cents, status",
            (user["id"], product_id),
        ).fetchone()
    if purchase is None:
        raise HttpError(404, "no such product")
    return 201, purchase


def payment_webhook(request: Request) -> tuple[int, dict[str, Any]]:
    secret = os.environ.get("PAYMENT_WEBHOOK_SECRET")
    if not secret:
        raise HttpError(503, "PAYMENT_WEBHOOK_SECRET is not set")
    signature = request.headers.get("Payment-Signature") or ""
    if not verify_signature(request.body, signature, secret):
        raise HttpError(400, "bad or expired Payment-Signature")
    event = request.json()
    if event.get("type") != "payment.succeeded":
        return 200, {"ignored": str(event.get("type"))}  # acknowledge what we do not handle
    data = event.get("data")
    purchase_id = positive_id(
        data.get("purchase_id") if isinstance(data, dict) else None, "data.purchase_id"
    )
    with connect() as conn:
        purchase = conn.execute(
            "UPDATE purchases SET status = 'paid', paid_at = coalesce(paid_at, now()) "
            "WHERE id = %s RETURNING id, status",
            (purchase_id,),
        ).fetchone()
    if purchase is None:
        raise HttpError(404, "no such purchase")
    return 200, purchase  # a replayed event finds it paid already: same answer


# What this release reads: /health fails when a migration took any of it away.
SCHEMA = {
    "products": ("id", "sku", "name", "price_cents"),
    "purchases": ("id", "user_id", "product_id", "amount_cents", "status", "created_at", "paid_at"),
}

ROUTES = {
    ("GET", "/products"): products,
    ("GET", "/purchases"): my_purchases,
    ("POST", "/purchases"): buy,
    ("POST", "/webhooks/payments"): payment_webhook,
}

if __name__ == "__main__":
    serve("api", ROUTES, SCHEMA)
