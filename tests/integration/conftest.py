"""Fixtures shared by the integration tests."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest

from branchline.postgres import Cluster
from branchline.store import Store, locate_state


@pytest.fixture(scope="session")
def shared_store(pg_cluster: Cluster) -> Store:
    """One state database for the session (each provider uses its own project name)."""
    with psycopg.connect(pg_cluster.uri(), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = 'bl_state'").fetchone()
        if not exists:
            conn.execute("CREATE DATABASE bl_state")
    store = Store(locate_state(Path("/"), {"BRANCHLINE_DATABASE_URL": pg_cluster.uri("bl_state")}))
    asyncio.run(store.start())
    return store
