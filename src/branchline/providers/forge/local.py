"""The local code host: pull requests of a local git repository, and the
comments, issues and statuses pipelines post, kept in the store.

Every change records a typed event (`branchline.events`) with a delivery id, the
same events a GitHub webhook produces, so pipelines treat both alike and a
replayed delivery is recorded once.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from branchline import events, naming
from branchline.errors import UsageError
from branchline.providers.forge import PullRequest, Recorded, check_status, git
from branchline.store import Store, approvals
from branchline.store import forge as rows


def pull_request(row: rows.PullRequestRow) -> PullRequest:
    state = row.state if row.state in ("open", "closed", "merged") else "closed"
    return PullRequest(
        number=row.number, title=row.title, head_branch=row.head_branch,
        base_branch=row.base_branch, head_sha=row.head_sha, state=state,  # type: ignore[arg-type]
        updated_at=row.updated_at, fork=row.fork,
    )  # fmt: skip


class LocalForge:
    """Construction does no I/O."""

    name = "local"

    def __init__(self, *, project: str, store: Store, repo: Path, production_branch: str) -> None:
        self.project = project
        self.store = store
        self.repo = repo
        self.base = production_branch

    # -- pushes -----------------------------------------------------------

    async def push(
        self, branch: str | None = None, *, source: str = "cli", before: str | None = None,
        deploy: bool = True,
    ) -> Recorded:  # fmt: skip
        """Record a push of `branch`'s head (the current branch by default); `deploy`
        False: tested only, even on the production branch."""
        name = branch if branch else await asyncio.to_thread(git.current_branch, self.repo)
        after = await asyncio.to_thread(git.head_of, self.repo, name)
        # A hook firing twice for one commit is one delivery.
        delivery = f"{source}-push-{name}-{after}" if source == "hook" else str(uuid.uuid4())
        return await self._record(delivery, events.push(name, after, before, deploy=deploy),
                                  source)  # fmt: skip

    # -- pull requests ------------------------------------------------------

    async def open_pr(
        self, branch: str, title: str | None = None, *, fork: bool = False
    ) -> Recorded:
        """Open a pull request from `branch`; `fork`: as if its head were in another
        repository (its tests get no secrets, its preview waits for an approval)."""
        if branch == self.base:
            raise UsageError(
                f"{branch!r} is the production branch; a pull request merges another branch "
                "into it", hint="Open it from a feature branch: `branchline pr open BRANCH`.",
            )  # fmt: skip
        sha = await asyncio.to_thread(git.head_of, self.repo, branch)
        base_sha = await asyncio.to_thread(git.head_of, self.repo, self.base)
        # The store's unique index decides between two opens at once: one pull request,
        # and its event recorded with it (a crash between them loses neither).
        async with self.store.connect() as conn, conn.transaction():
            pr, new = await rows.open_pr(
                conn, self.project, title=title or branch, head=branch, base=self.base, sha=sha,
                fork=fork,
            )  # fmt: skip
            if not new:
                raise UsageError(
                    f"pull request #{pr.number} is already open for {branch!r}",
                    hint=f"After new commits, run `branchline pr sync {pr.number}`; "
                    f"`branchline pr show {pr.number}` shows it.",
                )
            change = _changed("opened", pr, base_sha=base_sha)
            row = await rows.record(
                conn, self.project, change, delivery_id=str(uuid.uuid4()), source="cli"
            )
        return Recorded(pull_request(pr), change, row.id if row is not None else None)

    async def sync_pr(self, number: int, *, again: bool = False) -> Recorded:
        """Take the branch's new head commit; with `again`, record the update even
        when there is none (testing and the preview run again, on a fixed config)."""
        pr = await self._open(number)
        sha = await asyncio.to_thread(git.head_of, self.repo, pr.head_branch)
        if sha == pr.head_sha and not again:
            return Recorded(pull_request(pr), None)  # nothing new to test or preview
        async with self.store.connect() as conn:
            await rows.update_pr(conn, self.project, number, sha=sha)
            updated = await rows.get_pr(conn, self.project, number)
        assert updated is not None
        base_sha = await asyncio.to_thread(git.head_of, self.repo, self.base)
        change = _changed("synchronize", updated, base_sha=base_sha)
        return await self._record(str(uuid.uuid4()), change, "cli", updated)

    async def close_pr(self, number: int, *, merge: bool = False) -> list[Recorded]:
        """Close (or merge, for real, into the production branch) a pull request.
        A merge also records the push to the production branch it produces."""
        pr = await self._open(number)
        recorded = []
        merged: events.Push | None = None
        if merge:
            sha = await asyncio.to_thread(git.head_of, self.repo, pr.head_branch)
            message = f"Merge pull request #{number} from {pr.head_branch}\n\n{pr.title}"
            before, after = await asyncio.to_thread(
                git.merge, self.repo, pr.head_branch, pr.base_branch, message
            )
            merged = events.push(pr.base_branch, after, before)
            async with self.store.connect() as conn:
                await rows.update_pr(conn, self.project, number, sha=sha, state="merged")
        else:
            async with self.store.connect() as conn:
                await rows.update_pr(conn, self.project, number, state="closed")
        async with self.store.connect() as conn:
            closed = await rows.get_pr(conn, self.project, number)
        assert closed is not None
        change = _changed("closed", closed, merged=merge)
        recorded.append(await self._record(str(uuid.uuid4()), change, "cli", closed))
        if merged is not None:
            recorded.append(await self._record(str(uuid.uuid4()), merged, "cli"))
        return recorded

    async def approve_pr(self, number: int, by: str) -> Recorded:
        """Approve pull request `number` at its head commit. Idempotent: approving a
        commit twice records nothing new."""
        pr = await self._open(number)
        async with self.store.connect() as conn:
            fresh = await approvals.approve(conn, self.project, number, pr.head_sha, by)
        if not fresh:
            return Recorded(pull_request(pr), None)
        delivery = f"approval-{self.project}-{number}-{pr.head_sha}"
        event = events.PullRequestApproved(number, pr.head_sha, by)
        return await self._record(delivery, event, "cli", pr)

    async def _open(self, number: int) -> rows.PullRequestRow:
        naming.check_pr_number(number)
        async with self.store.connect() as conn:
            pr = await rows.get_pr(conn, self.project, number)
        if pr is None:
            raise UsageError(
                f"there is no pull request #{number}", hint="See `branchline pr list`."
            )
        if pr.state != "open":
            raise UsageError(f"pull request #{number} is already {pr.state}")
        return pr

    # -- what pipelines post --------------------------------------------------

    async def pull_request(self, number: int) -> PullRequest | None:
        async with self.store.connect() as conn:
            found = await rows.get_pr(conn, self.project, number)
        return pull_request(found) if found is not None else None

    async def pull_requests(self) -> list[PullRequest]:
        async with self.store.connect() as conn:
            return [pull_request(row) for row in await rows.list_prs(conn, self.project)]

    async def upsert_comment(self, pr: int, key: str, body: str) -> None:
        async with self.store.connect() as conn:
            await rows.upsert_comment(conn, self.project, pr, key, body)

    async def create_issue(self, title: str, body: str, labels: list[str]) -> int:
        async with self.store.connect() as conn:
            return await rows.create_issue(conn, self.project, title, body, labels)

    async def close_issue(self, number: int, comment: str) -> None:
        async with self.store.connect() as conn:
            await rows.close_issue(conn, self.project, number, comment)

    async def set_status(
        self, sha: str, context: str, state: str, url: str | None = None,
        description: str | None = None,
    ) -> None:  # fmt: skip
        check_status(state)
        async with self.store.connect() as conn:
            await rows.set_status(conn, self.project, sha, context, state, url, description)

    async def aclose(self) -> None:
        """Nothing held open: the store's connections are the store's."""

    # -- internals ----------------------------------------------------------------

    async def _record(
        self, delivery: str, event: events.Event, source: str,
        pr: rows.PullRequestRow | None = None,
    ) -> Recorded:  # fmt: skip
        async with self.store.connect() as conn:
            row = await rows.record(conn, self.project, event, delivery_id=delivery, source=source)
        return Recorded(
            pull_request(pr) if pr is not None else None,
            event if row is not None else None,
            row.id if row is not None else None,
        )


def _changed(
    action: events.PullRequestAction, pr: rows.PullRequestRow, *, merged: bool = False,
    base_sha: str | None = None,
) -> events.PullRequestChanged:  # fmt: skip
    return events.PullRequestChanged(
        action=action, number=pr.number, head_branch=pr.head_branch, head_sha=pr.head_sha,
        base_branch=pr.base_branch, base_sha=base_sha, merged=merged, title=pr.title,
        fork=pr.fork,
    )  # fmt: skip
