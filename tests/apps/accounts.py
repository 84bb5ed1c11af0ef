"""An app with accounts, as most have: users with e-mail addresses and password
hashes, sign-in sessions, its first superuser made by its own test suite.

python accounts.py migrate          apply migrations/NNN_*.sql once each (journal:
                                    schema_migrations)
python accounts.py first-superuser  the suite: make the first superuser; fail if a
                                    user exists (Django's createsuperuser check)
python accounts.py expect-users A.. the suite: fail unless the users are exactly A..
python accounts.py seed             add the demo users a preview starts with
python accounts.py predestroy       say what the database holds, before it goes
python accounts.py serve            HTTP on $PORT: /health, /users,
                                    /login?email=&password=, /me?token=
"""

import hashlib
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg


def db() -> psycopg.Connection:
    return psycopg.connect(os.environ["DATABASE_URL"], autocommit=True)


def migrate() -> None:
    with db() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version text PRIMARY KEY)")
        for path in sorted(Path("migrations").glob("[0-9]*_*.sql")):
            version = path.name.split("_", 1)[0]
            if not conn.execute(
                "SELECT 1 FROM schema_migrations WHERE version = %s", (version,)
            ).fetchone():
                conn.execute(path.read_text())
                conn.execute("INSERT INTO schema_migrations VALUES (%s)", (version,))
                print(f"applied {path.name}")


def first_superuser() -> None:
    with db() as conn:
        (count,) = conn.execute("SELECT count(*) FROM users").fetchone()
        if count:
            sys.exit(f"FAILED: {count} users exist already; the first superuser must be the first")
        (made,) = conn.execute(
            "INSERT INTO users (email, password_hash, is_superuser) "
            "VALUES ('admin@example.invalid', 'x', true) RETURNING id"
        ).fetchone()
        print(f"superuser #{made} created")


def expect_users(*emails: str) -> None:
    with db() as conn:
        found = [r[0] for r in conn.execute("SELECT email FROM users ORDER BY id")]
    if found != list(emails):
        sys.exit(f"FAILED: the users are {found}, not {list(emails)}")
    print(f"the users are {found}, as expected")


def seed() -> None:
    with db() as conn:
        conn.execute(
            "INSERT INTO users (email, password_hash, nickname) VALUES (%s, %s, 'demo')",
            ("demo@example.invalid", hashlib.sha256(b"demo").hexdigest()),
        )
        print("seeded: demo@example.invalid")


def predestroy() -> None:
    with db() as conn:
        (count,) = conn.execute("SELECT count(*) FROM users").fetchone()
        print(f"predestroy: {count} users in the preview's database")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        with db() as conn:
            if url.path == "/users":
                answer = [r[0] for r in conn.execute("SELECT email FROM users ORDER BY id")]
            elif url.path == "/login":
                digest = hashlib.sha256(query.get("password", "").encode()).hexdigest()
                answer = conn.execute(
                    "SELECT id FROM users WHERE email = %s AND password_hash = %s",
                    (query.get("email"), digest),
                ).fetchone()
            elif url.path == "/me":
                answer = conn.execute(
                    "SELECT user_id FROM sessions WHERE token = %s", (query.get("token"),)
                ).fetchone()
            else:
                answer = {"ok": True}
        status = 403 if answer is None else 200
        body = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "serve":
        ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
    else:
        commands = {"migrate": migrate, "first-superuser": first_superuser, "seed": seed,
                    "predestroy": predestroy, "expect-users": expect_users}  # fmt: skip
        commands[command](*sys.argv[2:])
