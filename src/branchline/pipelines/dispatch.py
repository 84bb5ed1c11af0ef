"""Which events start which runs, each event exactly once.

    push                         -> testing
    pull_request opened/sync/re  -> testing (of the PR's head)
    workflow_run testing success -> preview (when the PR is still open at that commit)
    pull_request closed          -> cancel its testing, then cleanup
    preview_expired              -> cleanup

An event is claimed under a row lock; the runs it starts carry its id, so a crash
between starting a run and marking the event processed starts nothing twice.
"""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from branchline import naming
from branchline.engine.engine import Engine
from branchline.engine.model import Workflow
from branchline.errors import BranchlineError, UsageError
from branchline.pipelines import cleanup, preview, production, testing
from branchline.pipelines.kit import Kit
from branchline.store import Store, mask_url
from branchline.store import forge as forge_rows
from branchline.store import previews as preview_rows
from branchline.store import runs as run_rows

logger = logging.getLogger(__name__)
ZERO = "0" * 40
PR_UPDATES = ("opened", "synchronize", "reopened")
TEST_SCOPE = "test"  # the secrets testing runs get
_COMMIT = re.compile(r"[0-9a-f]{7,64}")


@dataclass(frozen=True)
class Started:
    event: str  # delivery id
    run_id: int
    workflow: str


class Dispatcher:
    def __init__(self, kit: Kit, engine: Engine) -> None:
        self.kit = kit
        self.engine = engine

    async def dispatch_pending(self) -> list[Started]:
        """Turn every unprocessed event into its runs; returns the runs started."""
        started: list[Started] = []
        async with self.kit.store.connect() as conn:
            while True:
                async with conn.transaction():
                    event = await forge_rows.claim_pending(conn, self.kit.project)
                    if event is None:
                        return started
                    try:
                        runs = await self._route(event)
                        error = None
                    except BranchlineError as exc:
                        runs, error = [], exc.message
                        logger.warning("event %s started nothing: %s", event.delivery_id, error)
                    await forge_rows.mark_processed(conn, event.id, error)
                started += [Started(event.delivery_id, run, wf) for run, wf in runs]

    async def expire_previews(self) -> int:
        """Record a `preview_expired` event for every preview past its TTL."""
        async with self.kit.store.connect() as conn:
            expired = await preview_rows.expired(conn, self.kit.project)
            for row in expired:
                assert row.expires_at is not None
                await forge_rows.record_event(
                    conn, self.kit.project,
                    delivery_id=f"ttl-{self.kit.project}-{row.pr}-{row.expires_at.timestamp()}",
                    kind="preview_expired", action=None, source="pipeline",
                    payload={"number": row.pr, "expired_at": row.expires_at.isoformat()},
                )  # fmt: skip
        return len(expired)

    # -- routing ------------------------------------------------------------------

    async def _route(self, event: forge_rows.EventRow) -> list[tuple[int, str]]:
        payload = event.payload
        if event.kind == "push":
            return await self._push(event, payload)
        if event.kind == "pull_request":
            return await self._pull_request(event, payload)
        if event.kind == "workflow_run":
            return await self._workflow_run(event, payload)
        if event.kind == "preview_expired":
            pr = int(payload["number"])
            expired = cleanup.workflow(pr, reason="expired")
            return [await self._submit(event, expired, pr=pr, triggered_by=f"#{pr} expired")]
        return []  # ping and other kinds start nothing

    async def _push(self, event: forge_rows.EventRow, payload: Mapping[str, Any]) -> list[Any]:
        after = str(payload.get("after") or "")
        if payload.get("deleted") or after == ZERO:
            return []  # a deleted branch has nothing to test
        branch = naming.git_ref_to_branch(str(payload.get("ref") or ""))
        before = str(payload.get("before") or "")
        await self.kit.secrets.ensure_generated_in(TEST_SCOPE)
        workflow = testing.workflow(self.kit.config, sha=after, branch=branch,
                                    prefix=self.kit.prefix)  # fmt: skip
        run = await self._submit(
            event, workflow, sha=after, base_sha=before if before and before != ZERO else None,
            ref=branch, secret_scope=TEST_SCOPE, triggered_by=f"push to {branch} ({after[:8]})",
        )  # fmt: skip
        return [run]

    async def _pull_request(
        self, event: forge_rows.EventRow, payload: Mapping[str, Any]
    ) -> list[Any]:
        pull = payload.get("pull_request") or {}
        number = int(payload.get("number") or pull.get("number") or 0)
        if event.action in PR_UPDATES:
            sha = str(pull["head"]["sha"])
            base = pull.get("base", {}).get("sha")
            await self.kit.secrets.ensure_generated_in(TEST_SCOPE)
            workflow = testing.workflow(self.kit.config, sha=sha, pr=number,
                                        prefix=self.kit.prefix)  # fmt: skip
            run = await self._submit(
                event, workflow, sha=sha, base_sha=base, pr=number,
                ref=str(pull["head"].get("ref") or ""), secret_scope=TEST_SCOPE,
                triggered_by=f"pull request #{number} {event.action} ({sha[:8]})",
            )  # fmt: skip
            return [run]
        if event.action == "closed":
            async with self.kit.store.connect() as conn:
                active = await run_rows.active_runs(
                    conn, self.kit.project, pr=number, workflows=(testing.NAME,)
                )
            for stale in active:
                await self.engine.cancel(stale.id)
            how = "merged" if pull.get("merged") else "closed"
            return [await self._submit(event, cleanup.workflow(number, reason=how), pr=number,
                                       triggered_by=f"pull request #{number} {how}")]  # fmt: skip
        return []

    async def _workflow_run(
        self, event: forge_rows.EventRow, payload: Mapping[str, Any]
    ) -> list[Any]:
        if payload.get("workflow") != testing.NAME or payload.get("conclusion") != "success":
            return []
        number, sha = payload.get("pr"), payload.get("sha")
        if not sha:
            return []
        if not number:
            if payload.get("ref") != self.kit.config.project.production_branch:
                return []  # a feature branch's push: tested, nothing to deploy
            run = await self._submit(
                event, production.workflow(), sha=str(sha), ref=str(payload.get("ref")),
                secret_scope=production.ENVIRONMENT,
                triggered_by=f"testing run {payload.get('run_id')} passed on "
                f"{payload.get('ref')}",
            )  # fmt: skip
            return [run]
        async with self.kit.store.connect() as conn:
            pull = await forge_rows.get_pr(conn, self.kit.project, int(number))
        if pull is None or pull.state != "open" or pull.head_sha != sha:
            return []  # closed, or a newer commit is being tested: no preview of this one
        run = await self._submit(
            event, preview.workflow(int(number)), sha=str(sha), pr=int(number),
            ref=pull.head_branch, secret_scope=naming.environment_for_pr(int(number)),
            triggered_by=f"testing run {payload.get('run_id')} passed",
        )  # fmt: skip
        return [run]

    async def _submit(
        self, event: forge_rows.EventRow, workflow: Workflow, **kwargs: Any
    ) -> tuple[int, str]:
        if kwargs.get("sha"):
            await asyncio.to_thread(ensure_commit, self.kit.repo, str(kwargs["sha"]))
        async with self.kit.store.connect() as conn:
            existing = await run_rows.run_for_event(conn, event.id, workflow.name)
        if existing is not None:
            return existing, workflow.name
        run_id = await self.engine.submit(
            workflow, repo=self.kit.repo if kwargs.get("sha") else None, event_id=event.id,
            **kwargs,
        )  # fmt: skip
        return run_id, workflow.name


def ensure_commit(repo: Path, sha: str) -> None:
    """The commit in the project's clone, fetched from its `origin` when missing (a
    webhook may announce a commit this machine has not seen yet)."""
    if not _COMMIT.fullmatch(sha):
        raise UsageError(
            f"{sha[:80]!r} is not a commit id",
            hint="A commit id is 7 to 64 lower-case hexadecimal digits.",
        )

    def has() -> bool:
        return subprocess.run(
            ["git", "-C", str(repo), "cat-file", "-e", f"{sha}^{{commit}}"],
            capture_output=True, check=False,
        ).returncode == 0  # fmt: skip

    if has():
        return
    fetched = subprocess.run(
        ["git", "-C", str(repo), "fetch", "--quiet", "origin", sha],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    if fetched.returncode != 0 or not has():
        raise BranchlineError(
            f"commit {sha[:12]} is not in the project's clone at {repo}, and fetching it "
            # git may quote the remote's URL, credentials included: never show them.
            f"from `origin` failed: {mask_url(fetched.stderr.strip()[:300]) or 'not found'}",
            hint="Check the clone's `origin` remote and its credentials (`git fetch origin`).",
        )


def secrets_for(kit: Kit) -> Callable[[run_rows.RunRow], Awaitable[Mapping[str, str]]]:
    """The engine's secret source: a run gets the values of its scope."""

    async def source(run: run_rows.RunRow) -> Mapping[str, str]:
        if not run.secret_scope:
            return {}
        return await kit.secrets.get_all(run.secret_scope)

    return source


async def settle(
    dispatcher: Dispatcher,
    *,
    on_started: Callable[[Started], Awaitable[None]] | None = None,
    on_tick: Callable[[], Awaitable[None]] | None = None,
    poll: float = 0.1,
) -> None:
    """Dispatch until no event is pending and no run of the project is active: the
    follow-ups (a preview after testing) included. Workers run the jobs meanwhile."""
    kit = dispatcher.kit
    while True:
        if on_tick is not None:
            await on_tick()  # first: a run's end is told before what it started
        try:
            for started in await dispatcher.dispatch_pending():
                if on_started is not None:
                    await on_started(started)
        except UsageError:
            raise
        except Exception as exc:  # the state database restarting: try again
            logger.warning("dispatch failed: %s", mask_url(str(exc)))
        async with kit.store.connect() as conn:
            busy = await _busy(conn, kit.project)
        if not busy:
            if on_tick is not None:
                await on_tick()
            return
        await asyncio.sleep(poll)


async def wait_settled(
    store: Store,
    project: str,
    *,
    on_tick: Callable[[], Awaitable[None]] | None = None,
    poll: float = 0.1,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Wait, without working, until another process (`branchline serve`) has handled
    every pending event and finished every run of the project. `alive` says whether
    that process still runs: when it stops, waiting would be forever."""
    while True:
        if on_tick is not None:
            await on_tick()
        if alive is not None and not alive():
            raise BranchlineError(
                "branchline serve stopped while this command waited for it",
                hint="See edge.log in the state directory; `branchline serve` in a terminal "
                "shows why. The recorded work is kept: it runs when serve runs again.",
            )
        async with store.connect() as conn:
            busy = await _busy(conn, project)
        if not busy:
            if on_tick is not None:
                await on_tick()
            return
        await asyncio.sleep(poll)


async def _busy(conn: Any, project: str) -> bool:
    """Whether an event waits or a run is active, from ONE snapshot: asked in two
    queries, a run ending (and recording its follow-up event) between them would
    look like nothing left to do."""
    cur = await conn.execute(
        """SELECT EXISTS (SELECT 1 FROM branchline.events
                          WHERE project = %s AND processed_at IS NULL)
               OR EXISTS (SELECT 1 FROM branchline.runs
                          WHERE project = %s AND status = ANY(%s))""",
        (project, project, list(run_rows.ACTIVE)),
    )
    row = await cur.fetchone()
    return bool(row and row[0])
