"""Integration tests: migrate a real database, then auth and api (served in this
process) sign up, log in, buy, and take the payment webhook. Needs DATABASE_URL."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from conftest import ROOT, fetch, load

pytestmark = pytest.mark.integration
auth, api = load("auth"), load("api")
common = sys.modules["common"]
WEBHOOK_SECRET = "whsec_" + secrets.token_hex(8)


def run_migrate(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "migrate.py"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def services(database_url: str) -> Iterator[dict[str, str]]:
    """Base URLs of auth and api, on a migrated database."""
    migrated = run_migrate(database_url)
    assert migrated.returncode == 0, migrated.stderr
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AUTH_SECRET", secrets.token_hex(16))
        env.setenv("PAYMENT_WEBHOOK_SECRET", WEBHOOK_SECRET)
        env.setenv("BRANCHLINE_COMMIT", "c0ffee1")
        env.setenv("LOG_LEVEL", "warning")
        servers = {
            "auth": common.make_server("auth", auth.ROUTES),
            "api": common.make_server("api", api.ROUTES),
        }
        for server in servers.values():
            threading.Thread(target=server.serve_forever, daemon=True).start()
        yield {name: f"http://127.0.0.1:{s.server_address[1]}" for name, s in servers.items()}
        for server in servers.values():
            server.shutdown()
            server.server_close()


def webhook(api_url: str, event: dict[str, object], secret: str = WEBHOOK_SECRET):  # type: ignore[no-untyped-def]
    body = json.dumps(event).encode()
    signature = api.sign(secret, body, int(time.time()))
    return fetch("POST", api_url + "/webhooks/payments", body, {"Payment-Signature": signature})


def test_migrations_are_journaled_and_run_once(services: dict[str, str], database_url: str) -> None:
    again = run_migrate(database_url)
    assert again.returncode == 0 and "0 applied" in again.stdout
    with psycopg.connect(database_url) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]
    assert versions[:2] == ["001", "002"]


def test_health_checks_the_database(services: dict[str, str]) -> None:
    for name, url in services.items():
        status, body = fetch("GET", url + "/health")
        assert status == 200, body
        assert body == {
            "status": "ok",
            "service": name,
            "commit": "c0ffee1",
            "release": "dev",
            "database": "ok",
        }


def test_sign_up_log_in_buy_and_get_paid(services: dict[str, str], database_url: str) -> None:
    auth_url, api_url = services["auth"], services["api"]
    email = f"ada-{secrets.token_hex(4)}@Example.com"
    creds = {"email": email, "password": "correct horse battery"}

    status, user = fetch("POST", auth_url + "/signup", creds)
    assert status == 201 and user["email"] == email.lower()
    assert fetch("POST", auth_url + "/signup", creds)[0] == 409
    wrong = fetch("POST", auth_url + "/login", {**creds, "password": "wrong horse"})
    unknown = fetch("POST", auth_url + "/login", {**creds, "email": "nobody@example.com"})
    assert wrong[0] == unknown[0] == 401 and wrong[1] == unknown[1]

    status, session = fetch("POST", auth_url + "/login", creds)
    assert status == 200 and session["user"] == user
    bearer = {"Authorization": f"Bearer {session['token']}"}
    assert fetch("GET", auth_url + "/me", headers=bearer) == (200, user)
    assert fetch("GET", auth_url + "/me", headers={"Authorization": "Bearer nope"})[0] == 401
    with psycopg.connect(database_url) as conn:  # only a peppered hash is stored
        stored = conn.execute("SELECT token_hash FROM sessions WHERE user_id = %s", (user["id"],))
        assert session["token"] not in str(stored.fetchall())

    status, products = fetch("GET", api_url + "/products")
    assert status == 200 and {p["sku"] for p in products} >= {"notebook", "pen", "ink"}
    pen = next(p for p in products if p["sku"] == "pen")
    assert fetch("POST", api_url + "/purchases", {"product_id": pen["id"]})[0] == 401
    assert fetch("POST", api_url + "/purchases", {"product_id": 10**9}, bearer)[0] == 404
    status, purchase = fetch("POST", api_url + "/purchases", {"product_id": pen["id"]}, bearer)
    assert status == 201 and purchase["status"] == "pending"
    assert purchase["amount_cents"] == pen["price_cents"]

    event = {"type": "payment.succeeded", "data": {"purchase_id": purchase["id"]}}
    assert webhook(api_url, event, secret="whsec_wrong")[0] == 400
    assert fetch("GET", api_url + "/purchases", headers=bearer)[1][0]["status"] == "pending"
    assert webhook(api_url, event) == (200, {"id": purchase["id"], "status": "paid"})
    assert webhook(api_url, event) == (200, {"id": purchase["id"], "status": "paid"})  # replay
    assert webhook(api_url, {"type": "payment.refunded"})[0] == 200  # acknowledged, ignored
    status, mine = fetch("GET", api_url + "/purchases", headers=bearer)
    assert status == 200 and [(p["id"], p["status"]) for p in mine] == [(purchase["id"], "paid")]

    assert fetch("POST", auth_url + "/logout", headers=bearer)[0] == 204
    assert fetch("GET", auth_url + "/me", headers=bearer)[0] == 401
    assert fetch("GET", api_url + "/purchases", headers=bearer)[0] == 401


def test_an_expired_session_is_refused(services: dict[str, str], database_url: str) -> None:
    creds = {"email": f"bob-{secrets.token_hex(4)}@example.com", "password": "hunter2hunter2"}
    assert fetch("POST", services["auth"] + "/signup", creds)[0] == 201
    token = fetch("POST", services["auth"] + "/login", creds)[1]["token"]
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "UPDATE sessions SET expires_at = now() - interval '1 second' WHERE token_hash = %s",
            (common.token_hash(token),),
        )
    assert (
        fetch("GET", services["auth"] + "/me", headers={"Authorization": f"Bearer {token}"})[0]
        == 401
    )


def test_a_webhook_for_an_unknown_purchase_is_a_404(services: dict[str, str]) -> None:
    event = {"type": "payment.succeeded", "data": {"purchase_id": 10**12}}
    assert webhook(services["api"], event)[0] == 404
