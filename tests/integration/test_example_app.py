"""The example app passes its own unit, integration and end-to-end tests against a
real database branch, migrated through branchline."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from branchline.config import load_config
from branchline.migrations import migrate
from branchline.providers.database.local import LocalDatabaseProvider
from branchline.store import Store
from tests.conftest import REPO
from tests.integration.test_database_local import _provider, run

pytestmark = pytest.mark.integration
EXAMPLE = REPO / "examples" / "codex"


@pytest.fixture
def db(shared_store: Store, cluster_root: Path) -> Iterator[LocalDatabaseProvider]:
    yield from _provider(shared_store, cluster_root)


def with_venv_path() -> dict[str, str]:
    """The example's `python` must be one with psycopg: this interpreter's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRANCHLINE_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_example_app_passes_its_tests_on_a_branch(
    db: LocalDatabaseProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(EXAMPLE / "branchline.toml", env={})
    run(db, db.create_branch("pr-1"))
    for key, value in with_venv_path().items():
        monkeypatch.setenv(key, value)
    result = asyncio.run(migrate(config, db, "pr-1"))
    assert result.ok, result.output_tail
    assert result.applied == ["001", "002"]
    uri = run(db, db.connection_uri("pr-1"))
    with psycopg.connect(uri) as conn:
        assert conn.execute("SELECT count(*) FROM products").fetchone() == (3,)
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=EXAMPLE, env={**with_venv_path(), "DATABASE_URL": uri},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    assert " skipped" not in tests.stdout.splitlines()[-1]  # integration and e2e really ran
    # The production branch never saw any of it.
    with psycopg.connect(run(db, db.connection_uri("production"))) as conn:
        assert conn.execute("SELECT to_regclass('products')").fetchone() == (None,)
