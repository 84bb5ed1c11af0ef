"""A Worker run for real: plain JavaScript on node-postgres, bundled by wrangler
offline (`deploy --dry-run --outdir`, no account), served by workerd with its bindings,
reading and writing a table of a branch database over TCP."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from branchline.postgres.cluster import free_port
from branchline.providers.compute import workerd
from branchline.providers.database.local import LocalDatabaseProvider
from branchline.store import Store
from tests import workers_tools
from tests.conftest import eventually
from tests.integration.test_database_local import _provider
from tests.integration.test_database_local import run as run_db

pytestmark = pytest.mark.integration
SECRET = "s3cr3t-worker-binding-value"
GREETING = 'tricky "quoted" \\ text\nand é'


def build(app: Path, outdir: Path, tools: Any) -> None:
    """What a worker service's build does: its own dependencies, then wrangler's bundle."""
    for argv, env in (
        (["npm", "ci", "--no-audit", "--no-fund"], {}),
        (tools.wrangler_command("deploy", "--dry-run", "--outdir", str(outdir)),
         {"WRANGLER_SEND_METRICS": "false", "CI": "1"}),
    ):  # fmt: skip
        done = subprocess.run(argv, cwd=app, capture_output=True, text=True, timeout=300,
                              env={**os.environ, **env}, check=False)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def db(shared_store: Store, cluster_root: Path) -> Iterator[LocalDatabaseProvider]:
    yield from _provider(shared_store, cluster_root)


def get(port: int, path: str, data: bytes | None = None) -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data)
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def test_a_worker_bundled_by_wrangler_runs_in_workerd_on_a_branch_database(
    db: LocalDatabaseProvider, state_dir: Path, tmp_path: Path
) -> None:
    tools = workers_tools.required()
    app = tmp_path / "notes"
    shutil.copytree(workers_tools.NOTES_WORKER, app)
    began = time.monotonic()
    build(app, tmp_path / "bundle", tools)
    built_in = time.monotonic() - began
    bundle = workerd.bundle_from_dir(tmp_path / "bundle", app / "wrangler.toml")
    assert bundle.entry == "index.js" and bundle.compatibility_flags == ("nodejs_compat",)
    assert b"pg-cloudflare" in bundle.modules["index.js"].content  # pg is in the bundle

    run_db(db, db.create_branch("pr-7"))
    uri = run_db(db, db.connection_uri("pr-7"))
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL)")
        conn.execute("INSERT INTO notes (body) VALUES ('written by psycopg')")

    port = free_port()
    directory = state_dir / "worker"
    config = workerd.write_config(
        bundle, port=port, bindings_from_env=["API_SECRET", "DATABASE_URL"],
        vars={"BRANCHLINE_COMMIT": "c0ffee", "GREETING": GREETING}, directory=directory,
    )  # fmt: skip
    # BRANCHLINE_STATE: how the leak check finds it, as it finds branchline's services.
    env = {"PATH": os.environ["PATH"], "API_SECRET": SECRET, "DATABASE_URL": uri,
           "BRANCHLINE_STATE": str(state_dir)}  # fmt: skip
    log = (tmp_path / "workerd.log").open("wb")
    process = subprocess.Popen(workerd.serve_command(config, tools), env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:

        def health() -> Any:
            try:
                return get(port, "/health")
            except (urllib.error.URLError, ConnectionError):
                assert process.poll() is None, (tmp_path / "workerd.log").read_text()
                return None

        began = time.monotonic()
        assert eventually(health, timeout=20) == {"status": "ok", "commit": "c0ffee"}
        started_in = time.monotonic() - began
        assert get(port, "/var/GREETING") == {"GREETING": GREETING}  # plain text, escaped right
        # The secret reached the Worker, from workerd's environment.
        assert get(port, "/secret") == {
            "set": True,
            "sha256": hashlib.sha256(SECRET.encode()).hexdigest(),
        }
        # node-postgres over TCP into the branch: it reads what psycopg wrote, writes a row.
        assert get(port, "/notes", data=b"written by the worker") == {"id": 2}
        notes = get(port, "/notes")
        assert [n["body"] for n in notes] == ["written by psycopg", "written by the worker"]
        assert notes[0]["db"] == psycopg.conninfo.conninfo_to_dict(uri)["dbname"]
        with psycopg.connect(uri) as conn:
            row = conn.execute("SELECT body FROM notes WHERE id = 2").fetchone()
        assert row == ("written by the worker",)
    finally:
        process.terminate()
        process.wait(10)
        log.close()
    # The secret is in no file written for the Worker: the config only names it.
    for path in directory.rglob("*"):
        assert not path.is_file() or SECRET.encode() not in path.read_bytes(), path
    assert '(name = "API_SECRET", fromEnvironment = "API_SECRET")' in config.read_text()
    print(f"wrangler build {built_in:.2f} s, workerd healthy {started_in:.2f} s")


def test_the_installed_tools_are_the_pinned_ones() -> None:
    tools = workers_tools.required()
    versions = {
        "workerd": [str(tools.workerd), "--version"],
        "wrangler": tools.wrangler_command("--version"),
        "node": [str(tools.node), "--version"],
    }
    seen = {
        name: subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
        for name, argv in versions.items()
    }
    assert "workerd 2026-11-23" in seen["workerd"]  # 1.20261123.1
    assert "4.164.0" in seen["wrangler"]
    assert seen["node"].startswith("v22.")  # wrangler 4 needs 22.12 or newer
