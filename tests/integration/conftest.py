"""Fixtures shared by the integration tests."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from branchline.postgres import Cluster
from branchline.store import Store, locate_state


def store_in(pg_cluster: Cluster, database: str) -> Store:
    """A started Store whose state lives in `database` of the session cluster (made if
    missing): modules that must not see each other's rows use databases of their own."""
    with psycopg.connect(pg_cluster.uri(), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
        if not exists.fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    store = Store(locate_state(Path("/"), {"BRANCHLINE_DATABASE_URL": pg_cluster.uri(database)}))
    asyncio.run(store.start())
    return store


@pytest.fixture(scope="session")
def shared_store(pg_cluster: Cluster) -> Store:
    """One state database for the session (each provider uses its own project name)."""
    return store_in(pg_cluster, "bl_state")
