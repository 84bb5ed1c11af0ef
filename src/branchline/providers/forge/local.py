"""The local code host: pull requests of a local git repository, and the
comments, issues and statuses pipelines post, kept in the store.

Every change records an event shaped like GitHub's webhook payloads, with a
delivery id, so pipelines treat local and GitHub events the same way and a
replayed delivery is recorded once.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from branchline.errors import UsageError
from branchline.providers.forge import git
from branchline.store import Store
from branchline.store import forge as rows

ZERO = "0" * 40


@dataclass(frozen=True)
class Recorded:
    """What a forge command did: the pull request (if any) and the event."""

    pr: rows.PullRequestRow | None
    event: rows.EventRow | None  # None: nothing changed, or a replayed delivery


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
        self, branch: str | None = None, *, source: str = "cli", before: str | None = None
    ) -> Recorded:
        """Record a push of `branch`'s head (the current branch by default)."""
        name = branch if branch else await asyncio.to_thread(git.current_branch, self.repo)
        after = await asyncio.to_thread(git.head_of, self.repo, name)
        # A hook firing twice for one commit is one delivery.
        delivery = f"{source}-push-{name}-{after}" if source == "hook" else str(uuid.uuid4())
        payload = _push_payload(name, before or ZERO, after, self.project)
        event = await self._record(delivery, "push", None, source, payload)
        return Recorded(None, event)

    # -- pull requests ------------------------------------------------------

    async def open_pr(self, branch: str, title: str | None = None) -> Recorded:
        if branch == self.base:
            raise UsageError(
                f"{branch!r} is the production branch; a pull request merges another branch "
                "into it", hint="Open it from a feature branch: `branchline pr open BRANCH`.",
            )  # fmt: skip
        sha = await asyncio.to_thread(git.head_of, self.repo, branch)
        await asyncio.to_thread(git.head_of, self.repo, self.base)
        async with self.store.connect() as conn:
            existing = await rows.open_pr_for(conn, self.project, branch)
            if existing is not None:
                raise UsageError(
                    f"pull request #{existing.number} is already open for {branch!r}",
                    hint=f"After new commits, run `branchline pr sync {existing.number}`.",
                )
            pr = await rows.open_pr(
                conn, self.project, title=title or branch, head=branch, base=self.base, sha=sha
            )
        base_sha = await asyncio.to_thread(git.head_of, self.repo, self.base)
        payload = self._pr_payload("opened", pr, base_sha=base_sha)
        event = await self._record(str(uuid.uuid4()), "pull_request", "opened", "cli", payload)
        return Recorded(pr, event)

    async def sync_pr(self, number: int) -> Recorded:
        pr = await self._open(number)
        sha = await asyncio.to_thread(git.head_of, self.repo, pr.head_branch)
        if sha == pr.head_sha:
            return Recorded(pr, None)  # nothing new to test or preview
        async with self.store.connect() as conn:
            await rows.update_pr(conn, self.project, number, sha=sha)
            updated = await rows.get_pr(conn, self.project, number)
        assert updated is not None
        base_sha = await asyncio.to_thread(git.head_of, self.repo, self.base)
        payload = self._pr_payload("synchronize", updated, before=pr.head_sha, base_sha=base_sha)
        event = await self._record(str(uuid.uuid4()), "pull_request", "synchronize", "cli", payload)
        return Recorded(updated, event)

    async def close_pr(self, number: int, *, merge: bool = False) -> list[Recorded]:
        """Close (or merge, for real, into the production branch) a pull request.
        A merge also records the push to the production branch it produces."""
        pr = await self._open(number)
        recorded = []
        push_event = None
        if merge:
            sha = await asyncio.to_thread(git.head_of, self.repo, pr.head_branch)
            message = f"Merge pull request #{number} from {pr.head_branch}\n\n{pr.title}"
            before, after = await asyncio.to_thread(
                git.merge, self.repo, pr.head_branch, pr.base_branch, message
            )
            push_event = _push_payload(pr.base_branch, before, after, self.project)
            async with self.store.connect() as conn:
                await rows.update_pr(conn, self.project, number, sha=sha, state="merged")
        else:
            async with self.store.connect() as conn:
                await rows.update_pr(conn, self.project, number, state="closed")
        async with self.store.connect() as conn:
            closed = await rows.get_pr(conn, self.project, number)
        assert closed is not None
        payload = self._pr_payload("closed", closed, merged=merge)
        event = await self._record(str(uuid.uuid4()), "pull_request", "closed", "cli", payload)
        recorded.append(Recorded(closed, event))
        if push_event is not None:
            pushed = await self._record(str(uuid.uuid4()), "push", None, "cli", push_event)
            recorded.append(Recorded(None, pushed))
        return recorded

    async def _open(self, number: int) -> rows.PullRequestRow:
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

    async def upsert_comment(self, pr: int, key: str, body: str) -> None:
        async with self.store.connect() as conn:
            await rows.upsert_comment(conn, self.project, pr, key, body)

    async def create_issue(self, title: str, body: str, labels: list[str]) -> int:
        async with self.store.connect() as conn:
            return await rows.create_issue(conn, self.project, title, body, labels)

    async def set_status(
        self, sha: str, context: str, state: str, url: str | None = None,
        description: str | None = None,
    ) -> None:  # fmt: skip
        if state not in ("pending", "success", "failure", "error"):
            raise UsageError(f"unknown commit status {state!r}")
        async with self.store.connect() as conn:
            await rows.set_status(conn, self.project, sha, context, state, url, description)

    # -- internals ----------------------------------------------------------------

    async def _record(
        self, delivery: str, kind: str, action: str | None, source: str, payload: dict[str, Any]
    ) -> rows.EventRow | None:
        async with self.store.connect() as conn:
            return await rows.record_event(
                conn, self.project, delivery_id=delivery, kind=kind, action=action,
                source=source, payload=payload,
            )  # fmt: skip

    def _pr_payload(
        self,
        action: str,
        pr: rows.PullRequestRow,
        *,
        before: str | None = None,
        merged: bool = False,
        base_sha: str | None = None,
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "action": action,
            "number": pr.number,
            "pull_request": {
                "number": pr.number,
                "title": pr.title,
                "state": "closed" if pr.state != "open" else "open",
                "merged": merged,
                "head": {"ref": pr.head_branch, "sha": pr.head_sha},
                "base": {"ref": pr.base_branch, "sha": base_sha},
            },
            "repository": {"full_name": self.project},
        }
        if before is not None:
            payload["before"] = before
            payload["after"] = pr.head_sha
        return payload


def _push_payload(branch: str, before: str, after: str, project: str) -> dict[str, Any]:
    return {
        "ref": f"refs/heads/{branch}",
        "before": before,
        "after": after,
        "created": before == ZERO,
        "deleted": after == ZERO,
        "repository": {"full_name": project},
    }
