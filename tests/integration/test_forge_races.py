"""One branch opens one pull request, however many ask at once: the store's unique
index decides (a check before the insert could not), against a real state database
and a real git repository."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import uuid
from pathlib import Path

import psycopg
import pytest

from branchline.errors import UsageError
from branchline.postgres import Cluster
from branchline.providers.forge import Recorded
from branchline.providers.forge.local import LocalForge
from branchline.store import Store
from branchline.store import forge as rows
from tests.integration.conftest import store_in

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def store(pg_cluster: Cluster) -> Store:
    return store_in(pg_cluster, "bl_forge_races")


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                   check=True, capture_output=True)  # fmt: skip


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    git(tmp_path, "init", "-q", "-b", "main")
    (tmp_path / "a.txt").write_text("a\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "first")
    git(tmp_path, "switch", "-q", "-c", "feature")
    (tmp_path / "b.txt").write_text("b\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "feature")
    git(tmp_path, "switch", "-q", "main")
    return tmp_path


def opened_and_events(store: Store, project: str) -> tuple[list[int], list[str | None]]:
    async def read() -> tuple[list[int], list[str | None]]:
        async with store.connect() as conn:
            prs = await rows.list_prs(conn, project)
            recorded = await rows.events(conn, project)
        return [p.number for p in prs], [e.action for e in recorded]

    return asyncio.run(read())


def test_eight_opens_at_once_make_one_pull_request_and_one_event(store: Store, repo: Path) -> None:
    project = f"race{uuid.uuid4().hex[:6]}"
    forge = LocalForge(project=project, store=store, repo=repo, production_branch="main")

    async def all_at_once() -> list[Recorded | BaseException]:
        return await asyncio.gather(*(forge.open_pr("feature") for _ in range(8)),
                                    return_exceptions=True)  # fmt: skip

    results = asyncio.run(all_at_once())
    won = [r for r in results if isinstance(r, Recorded)]
    refused = [r for r in results if isinstance(r, UsageError)]
    assert len(won) == 1 and len(refused) == 7, results
    assert won[0].pr is not None and won[0].event is not None
    assert all(str(r) == "pull request #1 is already open for 'feature'" for r in refused)
    assert all("pr sync 1" in (r.hint or "") for r in refused)
    assert opened_and_events(store, project) == ([1], ["opened"])


def test_opens_from_threads_with_their_own_event_loops(store: Store, repo: Path) -> None:
    """As separate processes would: each thread its own loop and connections."""
    project = f"race{uuid.uuid4().hex[:6]}"
    outcomes: list[str] = []
    start = threading.Barrier(4)

    def one() -> None:
        forge = LocalForge(project=project, store=store, repo=repo, production_branch="main")
        start.wait()
        try:
            asyncio.run(forge.open_pr("feature"))
            outcomes.append("opened")
        except UsageError as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["opened"] + ["pull request #1 is already open for 'feature'"] * 3
    assert opened_and_events(store, project) == ([1], ["opened"])


def test_the_database_refuses_a_second_open_row_for_one_head(store: Store) -> None:
    """The rule lives in the schema: even a plain INSERT cannot make a second open
    pull request for the same head and base (a closed one may stay beside it)."""
    project = f"race{uuid.uuid4().hex[:6]}"
    url = store.location.external_url
    assert url is not None
    with psycopg.connect(url) as conn:
        insert = (
            "INSERT INTO branchline.pull_requests (project, number, title, head_branch, "
            "base_branch, head_sha, state) VALUES (%s, %s, 't', 'f', 'main', %s, %s)"
        )
        conn.execute(insert, (project, 1, "a" * 40, "closed"))
        conn.execute(insert, (project, 2, "a" * 40, "open"))
        with pytest.raises(psycopg.errors.UniqueViolation, match="one_open_per_head"):
            conn.execute(insert, (project, 3, "a" * 40, "open"))
        conn.rollback()
        with pytest.raises(psycopg.errors.CheckViolation, match="number_positive"):
            conn.execute(insert, (project, 0, "a" * 40, "closed"))
