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

from branchline import events
from branchline.engine.engine import UNKNOWN, Engine, Unknown
from branchline.engine.model import Workflow
from branchline.environment import PRODUCTION, TEST, Environment
from branchline.errors import BranchlineError, StoreError, UsageError
from branchline.kit import Kit
from branchline.masking import mask_url
from branchline.pipelines import cleanup, forks, preview, production, testing
from branchline.providers.forge import ChangeLister, PullRequest
from branchline.store import Store
from branchline.store import artifacts as artifact_rows
from branchline.store import forge as forge_rows
from branchline.store import runs as run_rows

logger = logging.getLogger(__name__)
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
                    except StoreError:
                        raise  # the state database is down: the event stays pending
                    except BranchlineError as exc:
                        runs, error = [], exc.message
                        logger.warning("event %s started nothing: %s", event.delivery_id, error)
                    await forge_rows.mark_processed(conn, event.id, error)
                started += [Started(event.delivery_id, run, wf) for run, wf in runs]

    async def expire_previews(self) -> int:
        """Record a `preview_expired` event for every preview past its TTL."""
        expired = await self.kit.previews.expired()
        async with self.kit.store.connect() as conn:
            for row in expired:
                assert row.expires_at is not None
                await forge_rows.record(
                    conn, self.kit.project, events.PreviewExpired(row.pr, row.expires_at),
                    delivery_id=f"ttl-{self.kit.project}-{row.pr}-{row.expires_at.timestamp()}",
                    source="pipeline",
                )  # fmt: skip
        return len(expired)

    # -- routing ------------------------------------------------------------------

    async def _route(self, row: forge_rows.EventRow) -> list[tuple[int, str]]:
        event = row.event
        if event is None:
            return []  # ping and other kinds start nothing
        if isinstance(event, events.PullRequestChanged) and event.action == "closed":
            # Its testing is pointless now: stopped before the cleanup starts.
            async with self.kit.store.connect() as conn:
                active = await run_rows.active_runs(
                    conn, self.kit.project, pr=event.number, workflows=(testing.NAME,)
                )
            for stale in active:
                await self.engine.cancel(stale.id, by=f"pull request {event.number} closed")
        pull, approved, tested = None, False, False
        if isinstance(event, events.WorkflowFinished) and event.pr and event.sha:
            pull = await self.kit.forge.pull_request(event.pr)
            approved = pull is not None and await self.kit.may_preview(pull, event.sha)
        if isinstance(event, events.PullRequestChanged):
            pull = await self.kit.forge.pull_request(event.number)
            if pull is not None and event.is_update and not self.kit.trusts(pull):
                await forks.awaiting_approval(self.kit, pull, event)
        if isinstance(event, events.PullRequestApproved):
            pull = await self.kit.forge.pull_request(event.number)
            if pull is not None:
                await forks.confirm(self.kit, pull, event)
            approved = pull is not None and await self.kit.may_preview(pull, event.sha)
            async with self.kit.store.connect() as conn:
                report, _expired = await artifact_rows.find(
                    conn, self.kit.project, testing.REPORT, sha=event.sha, workflow=testing.NAME
                )
            tested = report is not None
        deploy = True
        if isinstance(event, events.WorkflowFinished) and event.pr is None:
            deploy = await self._push_deploys(event.run_id)
        kit = await self._kit_for(event, pull)
        plans = plan(event, kit, pull, approved=approved, tested=tested, deploy=deploy)
        if any(p.secret_scope == TEST for p in plans):
            await self.kit.secrets.ensure_generated_in(TEST)
        return [await self._submit(row, p) for p in plans]

    async def _kit_for(self, event: events.Event, pull: PullRequest | None) -> Kit:
        """The kit planning `event` works with: with the config of the commit it is
        about (a branch may change its tests and services), unless that is code
        nobody trusts yet (a fork's), which gets the served config."""
        sha: str | None = None
        trusted = pull is None or self.kit.trusts(pull)
        if isinstance(event, events.Push) and not event.deleted:
            sha = event.after
        elif isinstance(event, events.PullRequestChanged) and event.is_update:
            sha, trusted = event.head_sha, trusted and not event.fork
        elif isinstance(event, events.WorkflowFinished | events.PullRequestApproved):
            sha = event.sha
        if sha is None or not trusted:
            return self.kit
        await asyncio.to_thread(ensure_commit, self.kit.repo, sha)
        return self.kit.with_config(await self.kit.config_at(sha))

    async def _push_deploys(self, run_id: int) -> bool:
        """Whether the push that started run `run_id` asked for a rollout (not
        `branchline push --no-deploy`)."""
        async with self.kit.store.connect() as conn:
            origin = await forge_rows.origin_of_run(conn, run_id)
        pushed = origin.event if origin is not None else None
        return not isinstance(pushed, events.Push) or pushed.deploy

    async def _submit(self, row: forge_rows.EventRow, planned: Planned) -> tuple[int, str]:
        if planned.sha:
            await asyncio.to_thread(ensure_commit, self.kit.repo, planned.sha)
        async with self.kit.store.connect() as conn:
            existing = await run_rows.run_for_event(conn, row.id, planned.workflow.name)
        if existing is not None:
            return existing, planned.workflow.name
        changed: list[str] | Unknown | None = UNKNOWN
        forge = self.kit.forge
        base = planned.base_sha
        if planned.sha and base and base.strip("0") and isinstance(forge, ChangeLister):
            # The code host's list: a shallow clone (a CI runner's) may lack the base.
            changed = await forge.changed_files(base, planned.sha)
        run_id = await self.engine.submit(
            planned.workflow, repo=self.kit.repo if planned.sha else None, event_id=row.id,
            sha=planned.sha, base_sha=planned.base_sha, ref=planned.ref, pr=planned.pr,
            secret_scope=planned.secret_scope, triggered_by=planned.triggered_by,
            changed=changed,
        )  # fmt: skip
        return run_id, planned.workflow.name


@dataclass(frozen=True)
class Planned:
    """A run an event starts: its workflow and what it is about."""

    workflow: Workflow
    triggered_by: str
    sha: str | None = None
    base_sha: str | None = None
    ref: str | None = None
    pr: int | None = None
    secret_scope: str | None = None


def plan(
    event: events.Event, kit: Kit, pull: PullRequest | None = None, *,
    approved: bool = False, tested: bool = False, deploy: bool = True,
) -> list[Planned]:  # fmt: skip
    """The runs `event` starts: the reference's routing, and nothing else.

    `pull` is the pull request the event is about, as the code host has it now (a
    preview is made only when it is still open at the tested commit); `approved`:
    it may be previewed at that commit (always true but for an unapproved fork);
    `tested`: the commit an approval names passed its tests already; `deploy`: the
    push a finished testing run tested asked for a rollout (not `--no-deploy`).
    """
    config = kit.config
    if isinstance(event, events.Push):
        if event.deleted:
            return []  # a deleted branch has nothing to test
        workflow = testing.workflow(config, sha=event.after, branch=event.branch,
                                    prefix=kit.prefix)  # fmt: skip
        return [Planned(
            workflow, f"push to {event.branch} ({event.after[:8]})", sha=event.after,
            base_sha=event.before, ref=event.branch, secret_scope=TEST,
        )]  # fmt: skip
    if isinstance(event, events.PullRequestChanged):
        if event.is_update:
            workflow = testing.workflow(config, sha=event.head_sha, pr=event.number,
                                        prefix=kit.prefix)  # fmt: skip
            fork = event.fork or (pull is not None and pull.fork)
            trusted = not fork or config.forge.untrusted == "trusted"
            return [Planned(
                workflow, f"pull request #{event.number} {event.action} ({event.head_sha[:8]})"
                + ("" if trusted else ", from a fork: no secrets"),
                sha=event.head_sha, base_sha=event.base_sha, ref=event.head_branch,
                pr=event.number, secret_scope=TEST if trusted else None,
            )]  # fmt: skip
        how = "merged" if event.merged else "closed"
        return [Planned(cleanup.workflow(event.number, reason=how),
                        f"pull request #{event.number} {how}", pr=event.number)]  # fmt: skip
    if isinstance(event, events.WorkflowFinished):
        if event.workflow != testing.NAME or not event.succeeded or not event.sha:
            return []
        if event.pr is None:
            if event.ref != config.project.production_branch or not deploy:
                return []  # a feature branch's push (or `--no-deploy`): tested only
            return [Planned(
                production.workflow(), f"testing run {event.run_id} passed on {event.ref}",
                sha=event.sha, ref=event.ref, secret_scope=PRODUCTION,
            )]  # fmt: skip
        if pull is None or not pull.is_open or pull.head_sha != event.sha:
            return []  # closed, or a newer commit is being tested: no preview of this one
        if not approved:
            return []  # a fork's commit nobody approved yet: its approval starts it
        return [Planned(
            preview.workflow(event.pr), f"testing run {event.run_id} passed", sha=event.sha,
            pr=event.pr, ref=pull.head_branch, secret_scope=Environment.preview(event.pr).name,
        )]  # fmt: skip
    if isinstance(event, events.PullRequestApproved):
        if pull is None or not pull.is_open or pull.head_sha != event.sha:
            return []  # approved an older commit: the new one needs its own approval
        if not (approved and tested):
            return []  # its testing run, when it passes, makes the preview
        return [Planned(
            preview.workflow(event.number), f"pull request #{event.number} approved by "
            f"{event.by}", sha=event.sha, pr=event.number, ref=pull.head_branch,
            secret_scope=Environment.preview(event.number).name,
        )]  # fmt: skip
    if isinstance(event, events.PreviewExpired):
        return [Planned(cleanup.workflow(event.pr, reason="expired"),
                        f"#{event.pr} expired", pr=event.pr)]  # fmt: skip
    return []


async def replan(kit: Kit, run: run_rows.RunRow) -> Workflow | None:
    """`run`'s workflow planned anew (a rerun takes a changed config), or None when
    its stored definition stands (workflows the config does not shape)."""
    if run.workflow != testing.NAME or not run.sha:
        return None
    trusted = True
    if run.pr is not None:
        pull = await kit.forge.pull_request(run.pr)
        trusted = pull is not None and kit.trusts(pull)
    await asyncio.to_thread(ensure_commit, kit.repo, run.sha)
    config = await kit.config_at(run.sha, trusted=trusted)
    if run.pr is None and run.ref is None:
        return None
    return testing.workflow(config, sha=run.sha, pr=run.pr, branch=run.ref, prefix=kit.prefix)


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
