"""Opt-in: one branch on a real Neon project, made, used, reset, diffed and deleted
by the Neon provider. Needs NEON_API_KEY and NEON_PROJECT_ID (and NEON_PARENT_BRANCH
when the project's production branch is not called `production`); the branch it
makes expires within the hour even if the test dies half way."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from branchline.providers.database import schema_diff
from branchline.providers.database.neon import NeonDatabaseProvider
from branchline.providers.database.neon_api import NeonClient
from branchline.store import Store, locate_state
from tests.conftest import new_state_dir

pytestmark = pytest.mark.integration
NEEDED = ("NEON_API_KEY", "NEON_PROJECT_ID")


@pytest.mark.skipif(
    not all(os.environ.get(v) for v in NEEDED),
    reason="needs a real Neon project: set NEON_API_KEY and NEON_PROJECT_ID",
)
def test_a_branch_on_a_real_neon_project(cluster_root: Path) -> None:
    state = new_state_dir(cluster_root)
    store = Store(locate_state(state, {"BRANCHLINE_STATE_DIR": str(state)}))
    client = NeonClient(
        base_url=os.environ.get("NEON_API_URL", "https://console.neon.tech/api/v2"),
        api_key=os.environ["NEON_API_KEY"],
        project_id=os.environ["NEON_PROJECT_ID"],
    )
    db = NeonDatabaseProvider(
        project="branchline-smoke", store=store, client=client,
        root=os.environ.get("NEON_PARENT_BRANCH", "production"), pooled=False,
    )  # fmt: skip
    name = f"smoke-{os.urandom(3).hex()}"

    async def scenario() -> None:
        await store.start()
        try:
            await db.init_root()
            await db.create_branch(name, expires=datetime.now(UTC) + timedelta(hours=1))
            uri = await db.connection_uri(name)
            async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as conn:
                await conn.execute("CREATE TABLE branchline_smoke (id int)")
            assert "branchline_smoke" in await schema_diff(db, db.root, name)
            await db.reset_branch(name)
            assert await db.connection_uri(name) == uri  # Neon keeps the endpoint
            assert "branchline_smoke" not in await schema_diff(db, db.root, name)
        finally:
            await db.delete_branch(name)
            await db.aclose()

    try:
        asyncio.run(scenario())
    finally:
        store.stop()
