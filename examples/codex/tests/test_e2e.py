"""End-to-end: web, auth and api run as their own processes (as branchline starts
them: `python app.py` in the service's directory with PORT and DATABASE_URL), and
a user drives web over HTTP: sign up, see products, buy, get paid, log out, log in."""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator

import pytest

from conftest import ROOT, SERVICES, fetch, load

pytestmark = pytest.mark.e2e
api = load("api")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def app(database_url: str) -> Iterator[dict[str, str]]:
    """The three services on free ports against a migrated DATABASE_URL; their URLs."""
    subprocess.run(
        [sys.executable, "migrate.py"],
        cwd=ROOT,
        check=True,
        timeout=60,
        env={**os.environ, "DATABASE_URL": database_url},
    )
    ports = {name: free_port() for name in ("auth", "api", "web")}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "BRANCHLINE_COMMIT": "e2e0001",
        "AUTH_SECRET": secrets.token_hex(16),
        "PAYMENT_WEBHOOK_SECRET": "whsec_e2e",
        "AUTH_URL": urls["auth"],
        "API_URL": urls["api"],
        "LOG_LEVEL": "warning",
    }
    processes = [
        subprocess.Popen(
            [sys.executable, "app.py"], cwd=SERVICES / name, env={**env, "PORT": str(port)}
        )
        for name, port in ports.items()
    ]
    try:
        for name, url in urls.items():
            wait_healthy(name, url)
        yield {**urls, "webhook_secret": env["PAYMENT_WEBHOOK_SECRET"]}
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            assert process.wait(timeout=10) == 0  # SIGTERM is a clean stop


def wait_healthy(name: str, url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, body = fetch("GET", url + "/health")
            if status == 200:
                assert body["service"] == name and body["commit"] == "e2e0001"
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{name} did not become healthy at {url}/health")
        time.sleep(0.05)


class Browser:
    """Enough of a browser: cookies, forms, redirects."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))

    def get(self, path: str) -> tuple[int, str]:
        return fetch("GET", self.base + path, opener=self.opener)

    def post(self, path: str, **form: object) -> tuple[int, str]:
        body = urllib.parse.urlencode(form).encode()
        return fetch("POST", self.base + path, body, opener=self.opener)


def test_sign_up_buy_get_paid_log_out_log_in(app: dict[str, str]) -> None:
    browser = Browser(app["web"])
    status, home = browser.get("/")
    assert status == 200 and "Fountain pen" in home and "Log in" in home and "Buy" not in home

    email, password = f"e2e-{secrets.token_hex(4)}@example.com", "correct horse battery"
    status, home = browser.post("/signup", email=email, password=password)  # then redirected
    assert status == 200 and f"Signed in as <b>{email}</b>" in home and "none yet" in home
    cookie = next(c for c in browser.cookies if c.name == "codex_session")
    assert cookie.has_nonstandard_attr("HttpOnly")

    pen = re.search(r'<td>Fountain pen</td>.*?name="product_id" value="(\d+)"', home)
    assert pen, home
    status, home = browser.post("/buy", product_id=pen.group(1))
    assert status == 200
    bought = re.search(r"<li>#(\d+) Fountain pen \$35\.00 <b class=\"status\">pending</b>", home)
    assert bought, home

    # The payment provider calls api's webhook; the page then shows the purchase paid.
    event = json.dumps({"type": "payment.succeeded", "data": {"purchase_id": int(bought[1])}})
    signature = api.sign(app["webhook_secret"], event.encode(), int(time.time()))
    headers = {"Payment-Signature": signature}
    assert fetch("POST", app["api"] + "/webhooks/payments", event.encode(), headers)[0] == 200
    assert f'#{bought[1]} Fountain pen $35.00 <b class="status">paid</b>' in browser.get("/")[1]

    status, home = browser.post("/logout")
    assert status == 200 and "Log in" in home and "Signed in" not in home
    status, page = browser.post("/login", email=email, password="wrong password")
    assert status == 401 and "wrong email or password" in page
    status, home = browser.post("/login", email=email, password=password)
    assert status == 200 and f"Signed in as <b>{email}</b>" in home and "paid" in home


def test_every_service_reports_its_commit_and_database(app: dict[str, str]) -> None:
    for name in ("web", "auth", "api"):
        status, body = fetch("GET", app[name] + "/health")
        assert status == 200 and body["commit"] == "e2e0001" and body["database"] == "ok"
