"""`branchline secret` end to end: the real command on a real state database. No value
ever reaches stdout or stderr, and no value is taken from the command line."""

from __future__ import annotations

import asyncio
import base64
import fcntl
import json
import os
import pty
import re
import select
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from branchline.config import load_config
from branchline.postgres import Cluster
from branchline.secrets import Secrets, load_key
from branchline.store import Store, locate_state
from tests.conftest import run_cli

CONFIG = """\
[project]
name = "shop"
zone = "shop.localhost"

[database]
migrate = "true"

[services.api]
path = "api"
run = "python -m api"

[services.web]
path = "web"
run = "python -m web"

[secrets.production]
names = ["STRIPE_KEY"]

[secrets.preview]
names = ["AUTH_SECRET", "STRIPE_KEY"]
generate = ["AUTH_SECRET"]
"""

VALUE = "sk_live_e2e-never-shown-42"


class Project:
    def __init__(self, root: Path, env: dict[str, str], state_dir: Path) -> None:
        self.root, self.env, self.state_dir = root, env, state_dir
        self.outputs: list[str] = []

    def run(
        self, *args: str, input: str | None = "", env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        # input="" so stdin is never a terminal (and never the test runner's).
        result = run_cli(*args, cwd=self.root, env={**self.env, **(env or {})}, input=input)
        self.outputs.append(result.stdout + result.stderr)
        return result

    def json(self, *args: str, input: str | None = "") -> object:
        result = self.run("--json", *args, input=input)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


@pytest.fixture
def project(tmp_path: Path, state_dir: Path, pg_cluster: Cluster) -> Iterator[Project]:
    name = f"t_cli_secret_{os.urandom(4).hex()}"
    with psycopg.connect(pg_cluster.uri(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    (tmp_path / "api").mkdir()
    (tmp_path / "web").mkdir()
    (tmp_path / "branchline.toml").write_text(CONFIG)
    env = {"BRANCHLINE_STATE_DIR": str(state_dir), "BRANCHLINE_DATABASE_URL": pg_cluster.uri(name)}
    proj = Project(tmp_path, env, state_dir)
    yield proj
    for output in proj.outputs:
        assert VALUE not in output
    with psycopg.connect(pg_cluster.uri(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def test_set_list_delete_never_show_the_value(project: Project) -> None:
    result = project.run("secret", "set", "STRIPE_KEY", "--env", "production", input=VALUE + "\n")
    assert result.returncode == 0, result.stderr
    assert "set STRIPE_KEY for production" in result.stdout
    # Nothing runs in production: no service keeps an old value, nothing to restart.
    assert "restart" not in result.stderr
    key_file = project.state_dir / "secret.key"
    assert key_file.stat().st_mode & 0o777 == 0o600

    listed = project.json("secret", "list")
    assert isinstance(listed, list)
    by_key = {(e["environment"], e["name"]): e for e in listed}
    stripe = by_key["production", "STRIPE_KEY"]
    assert stripe["set"] is True and stripe["declared"] is True and stripe["updated_at"]
    assert "value" not in stripe
    # Declared names without a value are listed as not set.
    assert by_key["preview", "STRIPE_KEY"]["set"] is False
    assert ("preview", "AUTH_SECRET") not in by_key  # generated per preview: not missing
    human = project.run("secret", "list", "--env", "production")
    assert human.returncode == 0 and "STRIPE_KEY" in human.stdout

    # The trailing newline was dropped: the stored value is exactly VALUE.
    with psycopg.connect(project.env["BRANCHLINE_DATABASE_URL"]) as conn:
        stored = conn.execute(
            "SELECT ciphertext FROM branchline.secrets WHERE project = 'shop'"
        ).fetchall()
    assert len(stored) == 1 and VALUE.encode() not in bytes(stored[0][0])
    assert len(bytes(stored[0][0])) == len(VALUE) + 16  # AES-GCM tag, no newline

    first = project.json("secret", "delete", "STRIPE_KEY", "--env", "production")
    assert first == {"environment": "production", "name": "STRIPE_KEY", "deleted": True}
    second = project.json("secret", "delete", "STRIPE_KEY", "--env", "production")
    assert second == {"environment": "production", "name": "STRIPE_KEY", "deleted": False}
    gone = project.json("secret", "list", "--env", "production")
    assert gone == [
        {
            "environment": "production",
            "name": "STRIPE_KEY",
            "updated_at": None,
            "generated": False,
            "key_id": None,
            "set": False,
            "declared": True,
        }
    ]


def test_a_value_on_the_command_line_is_refused(project: Project) -> None:
    for args in (
        ("secret", "set", "STRIPE_KEY", VALUE, "--env", "production"),
        ("secret", "set", "STRIPE_KEY", "--env", "production", VALUE),
        ("secret", "set", "STRIPE_KEY", "--env", "production", f"--value={VALUE}"),
    ):
        result = project.run(*args, input=VALUE)
        assert result.returncode == 2, result.stderr
        assert "error:" in result.stderr and "hint:" in result.stderr
        assert "Traceback" not in result.stderr
    assert project.json("secret", "list", "--env", "production")[0]["set"] is False  # type: ignore[index]


def test_empty_stdin_and_bad_names_are_usage_errors(project: Project) -> None:
    empty = project.run("secret", "set", "STRIPE_KEY", "--env", "production", input="\n")
    assert empty.returncode == 2 and "no value on stdin" in empty.stderr
    bad_env = project.run("secret", "set", "STRIPE_KEY", "--env", "staging", input=VALUE)
    assert bad_env.returncode == 2 and "hint:" in bad_env.stderr
    bad_name = project.run("secret", "set", VALUE, "--env", "production", input=VALUE)
    assert bad_name.returncode == 2 and "not a valid secret name" in bad_name.stderr


def test_undeclared_name_is_stored_with_a_warning(project: Project) -> None:
    result = project.run("secret", "set", "EXTRA_TOKEN", "--env", "test", input=VALUE)
    assert result.returncode == 0, result.stderr
    assert "not declared in [secrets.test]" in result.stderr
    listed = project.json("secret", "list", "--env", "test")
    assert isinstance(listed, list) and listed[0]["declared"] is False


def test_rotate(project: Project) -> None:
    refused = project.run("secret", "rotate", "STRIPE_KEY", "--env", "production")
    assert refused.returncode == 2
    assert "secret set STRIPE_KEY --env production" in refused.stderr

    nothing = project.json("secret", "rotate", "AUTH_SECRET", "--env", "preview")
    assert nothing == {
        "name": "AUTH_SECRET",
        "environments": [],
        "rotated_at": None,
        "restarted": [],
    }

    rotated = project.run("--json", "secret", "rotate", "AUTH_SECRET", "--env", "preview-8")
    assert rotated.returncode == 0, rotated.stderr
    data = json.loads(rotated.stdout)
    assert data["environments"] == ["preview-8"]
    assert data["restarted"] == []  # not asked to (--restart)
    # No service of preview-8 runs: no restart to suggest (tests/unit/test_operations.py
    # holds which environments count as running).
    assert "restart" not in rotated.stderr
    listed = project.json("secret", "list", "--env", "preview-8")
    assert isinstance(listed, list)
    assert [(e["name"], e["generated"], e["set"]) for e in listed] == [
        ("AUTH_SECRET", True, True),
        ("STRIPE_KEY", False, False),  # declared for previews, not set yet
    ]
    # The generated value exists, and was never printed.
    generated = asyncio.run(_values(project, "preview-8"))["AUTH_SECRET"]
    assert len(base64.b64decode(generated, validate=True)) == 32
    for output in project.outputs:
        assert generated not in output
    assert not any(re.search(r"[A-Za-z0-9+/]{43}=", output) for output in project.outputs)


async def _values(project: Project, environment: str) -> dict[str, str]:
    env = project.env
    store = Store(locate_state(project.root, env))
    await store.start()
    secrets = Secrets(store, "shop", load_config(project.root / "branchline.toml").secrets,
                      load_key(project.state_dir, {}))  # fmt: skip
    return await secrets.get_all(environment)


def test_malformed_key_variable_is_reported_with_a_hint(project: Project) -> None:
    result = project.run(
        "secret",
        "set",
        "STRIPE_KEY",
        "--env",
        "production",
        input=VALUE,
        env={"BRANCHLINE_SECRET_KEY": "not-a-key"},
    )
    assert result.returncode == 1
    assert "BRANCHLINE_SECRET_KEY is not the base64 encoding of 32 bytes" in result.stderr
    assert "openssl rand -base64 32" in result.stderr
    assert "not-a-key" not in result.stderr and "Traceback" not in result.stderr


def test_wrong_key_file_permissions_are_refused(project: Project) -> None:
    assert (
        project.run("secret", "set", "STRIPE_KEY", "--env", "production", input=VALUE).returncode
        == 0
    )
    key_file = project.state_dir / "secret.key"
    key_file.chmod(0o644)
    result = project.run("secret", "rotate", "AUTH_SECRET", "--env", "preview-3")
    assert result.returncode == 1
    assert f"chmod 600 {key_file}" in result.stderr


def test_a_terminal_is_prompted_twice_with_hidden_input(project: Project) -> None:
    """In a terminal the value is asked for twice, and not echoed back."""
    master, slave = pty.openpty()

    def controlling_terminal() -> None:  # in the child, after setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    env = {k: v for k, v in os.environ.items() if not k.startswith("BRANCHLINE_")}
    env.update(project.env)
    child = subprocess.Popen(
        [sys.executable, "-m", "branchline", "secret", "set", "STRIPE_KEY", "--env", "production"],
        cwd=project.root,
        env=env,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        preexec_fn=controlling_terminal,
    )
    os.close(slave)
    seen = b""

    def read_until(marker: bytes, timeout: float = 60) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while marker not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    seen += os.read(master, 4096)
                except OSError:
                    break
        assert marker in seen, seen

    try:
        # getpass writes the prompt's last space once echo is off: type only then.
        read_until(b"value of STRIPE_KEY for production: ")
        os.write(master, VALUE.encode() + b"\r")
        read_until(b"Repeat for confirmation: ")
        os.write(master, VALUE.encode() + b"\r")
        read_until(b"set STRIPE_KEY for production")
        assert child.wait(timeout=60) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.close(master)
    assert VALUE.encode() not in seen
    assert asyncio.run(_values(project, "production")) == {"STRIPE_KEY": VALUE}
