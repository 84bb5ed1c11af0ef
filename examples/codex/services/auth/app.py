"""codex auth: sign-up, log-in and session tokens (tables users and sessions).

    POST /signup  {"email", "password"}  -> 201 {"id", "email"}
    POST /login   {"email", "password"}  -> 200 {"token", "expires_at", "user"}
    GET  /me      Authorization: Bearer <token> -> 200 {"id", "email"}
    POST /logout  Authorization: Bearer <token> -> 204

Environment: PORT, DATABASE_URL, AUTH_SECRET (peppers the stored token hashes;
api needs the same value), SESSION_DAYS (default 14).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from common import HttpError, Request, connect, serve, session_user, token_hash

EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
SCRYPT = {"n": 2**14, "r": 8, "p": 1}  # 16 MB and ~50 ms per hash


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **SCRYPT)
    return f"scrypt${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    try:
        kind, salt, digest = stored.split("$")
        expected = bytes.fromhex(digest)
        actual = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), **SCRYPT)
    except ValueError:
        return False
    return kind == "scrypt" and hmac.compare_digest(actual, expected)


# Checked against when the email is unknown, so both answers take as long.
_DUMMY_HASH = hash_password(secrets.token_urlsafe())


def credentials(body: dict[str, Any]) -> tuple[str, str]:
    """The (normalised email, password) of a sign-up or log-in body; 400 when unusable."""
    email, password = body.get("email"), body.get("password")
    if not isinstance(email, str) or len(email) > 254 or not EMAIL.fullmatch(email.strip()):
        raise HttpError(400, "email must look like name@example.com")
    if not isinstance(password, str) or not 8 <= len(password) <= 1024:
        raise HttpError(400, "password must be 8 to 1024 characters")
    return email.strip().lower(), password


def signup(request: Request) -> tuple[int, dict[str, Any]]:
    email, password = credentials(request.json())
    try:
        with connect() as conn:
            user = conn.execute(
                "INSERT INTO users (email, password_hash) VALUES (%s, %s) RETURNING id, email",
                (email, hash_password(password)),
            ).fetchone()
    except psycopg.errors.UniqueViolation:
        raise HttpError(409, "that email is already registered") from None
    return 201, user


def login(request: Request) -> tuple[int, dict[str, Any]]:
    email, password = credentials(request.json())
    with connect() as conn:
        user = conn.execute(
            "SELECT id, email, password_hash FROM users WHERE email = %s", (email,)
        ).fetchone()
        if not check_password(password, user["password_hash"] if user else _DUMMY_HASH):
            raise HttpError(401, "wrong email or password")
        token = secrets.token_urlsafe(32)
        expires = datetime.now(UTC) + timedelta(days=int(os.environ.get("SESSION_DAYS", "14")))
        conn.execute(
            "DELETE FROM sessions WHERE user_id = %s AND expires_at < now()", (user["id"],)
        )
        conn.execute(
            "INSERT INTO sessions (token_hash, user_id, expires_at) VALUES (%s, %s, %s)",
            (token_hash(token), user["id"], expires),
        )
    return 200, {
        "token": token,
        "expires_at": expires.isoformat(),
        "user": {"id": user["id"], "email": user["email"]},
    }


def me(request: Request) -> tuple[int, dict[str, Any]]:
    with connect() as conn:
        return 200, session_user(conn, request.bearer())


def logout(request: Request) -> tuple[int, None]:
    token = request.bearer()
    if token:
        with connect() as conn:
            conn.execute("DELETE FROM sessions WHERE token_hash = %s", (token_hash(token),))
    return 204, None


# What this release reads: /health fails when a migration took any of it away.
SCHEMA = {
    "users": ("id", "email", "password_hash"),
    "sessions": ("token_hash", "user_id", "expires_at"),
}

ROUTES = {
    ("POST", "/signup"): signup,
    ("POST", "/login"): login,
    ("GET", "/me"): me,
    ("POST", "/logout"): logout,
}

if __name__ == "__main__":
    serve("auth", ROUTES, SCHEMA)
