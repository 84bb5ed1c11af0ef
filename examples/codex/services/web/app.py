"""codex web: the pages users see, rendered on the server from auth and api answers.

    GET  /         the products (api), who is signed in (auth) and their purchases (api)
    GET  /login    the log-in and sign-up forms
    POST /login, /signup, /logout   the forms; the session token lives in an HttpOnly cookie
    POST /buy      buys a product through api

Environment: PORT, DATABASE_URL (checked by /health), AUTH_URL and API_URL (base
URLs of the other two services, e.g. http://127.0.0.1:8001). When one is unset
or down the pages say "auth unavailable" / "api unavailable" instead of failing.
AUTH_HOST and API_HOST, when set, are sent as the Host header: through an edge
that routes by host name, AUTH_URL=http://127.0.0.1:8080 AUTH_HOST=auth.codex.localhost.
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.error
import urllib.request
from datetime import UTC, datetime
from html import escape
from typing import Any

from common import Request, serve

COOKIE = "codex_session"


class UnavailableError(Exception):
    """The service is not configured, not reachable, or answered 5xx."""


def call(
    service: str, method: str, path: str, body: Any = None, token: str | None = None
) -> tuple[int, Any]:
    """(status, JSON answer) of `method path` on auth or api."""
    base = os.environ.get(f"{service.upper()}_URL", "").rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise UnavailableError(f"{service} unavailable ({service.upper()}_URL is not set)")
    headers = {"Content-Type": "application/json"}
    if os.environ.get(f"{service.upper()}_HOST"):  # e.g. the edge's name for the service
        headers["Host"] = os.environ[f"{service.upper()}_HOST"]
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    # Only http(s) URLs get here (checked above): S310 is about file: and others.
    request = urllib.request.Request(base + path, data, headers, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310
            status, raw = answer.status, answer.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    except OSError as error:
        raise UnavailableError(f"{service} unavailable") from error
    try:
        result = json.loads(raw) if raw else None
    except ValueError:
        raise UnavailableError(f"{service} unavailable (not JSON)") from None
    if status >= 500:
        raise UnavailableError(f"{service} unavailable ({status})")
    return status, result


def message(body: Any, default: str) -> str:
    """The `error` of a service's JSON answer."""
    return str(body.get("error", default)) if isinstance(body, dict) else default


# -- rendering --------------------------------------------------------------------------


def page(
    title: str,
    content: str,
    user: dict[str, Any] | None = None,
    notices: list[str] | tuple[str, ...] = (),
) -> str:
    if user:
        who = (
            f"Signed in as <b>{escape(user['email'])}</b> "
            '<form method="post" action="/logout"><button>Log out</button></form>'
        )
    else:
        who = '<a href="/login">Log in</a>'
    alerts = "".join(f'<p class="notice">{escape(n)}</p>' for n in notices)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{escape(title)} · codex</title>
<style>body{{font:16px system-ui;max-width:40em;margin:2em auto}} form{{display:inline}}
.notice{{background:#fee;padding:.5em}} td{{padding:.2em 1em .2em 0}}</style></head>
<body><header><a href="/">codex</a> · {who}</header><h1>{escape(title)}</h1>
{alerts}{content}</body></html>"""


def money(cents: int) -> str:
    return f"${cents / 100:.2f}"


def product_rows(products: list[dict[str, Any]], can_buy: bool) -> str:
    rows = []
    for p in products:
        button = (
            '<form method="post" action="/buy"><button>Buy</button>'
            f'<input type="hidden" name="product_id" value="{int(p["id"])}"></form>'
        )
        rows.append(
            f"<tr><td>{escape(p['name'])}</td><td>{money(p['price_cents'])}</td>"
            f"<td>{button if can_buy else ''}</td></tr>"
        )
    return f"<table>{''.join(rows)}</table>" if rows else "<p>No products.</p>"


def purchase_list(purchases: list[dict[str, Any]]) -> str:
    items = "".join(
        f"<li>#{int(p['id'])} {escape(p['product'])} {money(p['amount_cents'])} "
        f'<b class="status">{escape(p["status"])}</b></li>'
        for p in purchases
    )
    return f"<h2>Your purchases</h2><ul>{items or '<li>none yet</li>'}</ul>"


def login_form(error: str | None = None, notices: tuple[str, ...] = ()) -> str:
    fields = (
        '<input name="email" type="email" placeholder="email" required> '
        '<input name="password" type="password" placeholder="password" required> '
    )
    content = (f'<p class="notice">{escape(error)}</p>' if error else "") + (
        f'<h2>Log in</h2><form method="post" action="/login">{fields}<button>Log in</button></form>'
        f'<h2>Sign up</h2><form method="post" action="/signup">{fields}'
        "<button>Sign up</button></form>"
    )
    return page("Log in", content, notices=notices)


# -- routes: each answers (status, html) or (status, body, headers) --------------------


def redirect(location: str, cookie: str | None = None) -> tuple:
    return 303, None, {"Location": location, **({"Set-Cookie": cookie} if cookie else {})}


def index(request: Request) -> tuple:
    token, user, notices = request.cookie(COOKIE), None, []
    products: list[dict[str, Any]] = []
    try:
        products = call("api", "GET", "/products")[1]
    except UnavailableError as error:
        notices.append(str(error))
    if not token and not os.environ.get("AUTH_URL"):
        notices.append("auth unavailable (AUTH_URL is not set)")
    if token:
        try:
            status, body = call("auth", "GET", "/me", token=token)
            user = body if status == 200 else None
        except UnavailableError as error:
            notices.append(str(error))
    purchases = ""
    if user:
        try:
            status, body = call("api", "GET", "/purchases", token=token)
            purchases = purchase_list(body if status == 200 else [])
        except UnavailableError as error:
            notices.append(str(error))
    content = product_rows(products, can_buy=user is not None) + purchases
    return 200, page("Products", content, user, notices)


def login_page(request: Request) -> tuple:
    return 200, login_form()


def _session(email: str, password: str, signup: bool = False) -> tuple:
    """Sign up (when asked) and log in through auth; set the cookie and go home."""
    creds = {"email": email, "password": password}
    try:
        if signup:
            status, body = call("auth", "POST", "/signup", creds)
            if status != 201:
                return status, login_form(message(body, "could not sign up"))
        status, body = call("auth", "POST", "/login", creds)
    except UnavailableError as error:
        return 503, login_form(notices=(str(error),))
    if status != 200:
        return status, login_form(message(body, "could not log in"))
    expires = datetime.fromisoformat(body["expires_at"]) - datetime.now(UTC)
    cookie = (
        f"{COOKIE}={body['token']}; Path=/; HttpOnly; SameSite=Lax; "
        f"Max-Age={int(expires.total_seconds())}"
    )
    return redirect("/", cookie)


def login(request: Request) -> tuple:
    form = request.form()
    return _session(form.get("email", ""), form.get("password", ""))


def signup(request: Request) -> tuple:
    form = request.form()
    return _session(form.get("email", ""), form.get("password", ""), signup=True)


def logout(request: Request) -> tuple:
    token = request.cookie(COOKIE)
    if token:
        with contextlib.suppress(UnavailableError):  # then the session just expires
            call("auth", "POST", "/logout", token=token)
    return redirect("/", f"{COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0")


def buy(request: Request) -> tuple:
    token = request.cookie(COOKIE)
    if not token:
        return redirect("/login")
    try:
        status, body = call(
            "api", "POST", "/purchases", {"product_id": request.form().get("product_id")}, token
        )
    except UnavailableError as error:
        return 503, page("Buy", "", notices=[str(error)])
    if status == 401:
        return redirect("/login")
    if status != 201:
        return status, page("Buy", "", notices=[message(body, "could not buy")])
    return redirect("/")


ROUTES = {
    ("GET", "/"): index,
    ("GET", "/login"): login_page,
    ("POST", "/login"): login,
    ("POST", "/signup"): signup,
    ("POST", "/logout"): logout,
    ("POST", "/buy"): buy,
}

if __name__ == "__main__":
    serve("web", ROUTES)
