"""In-memory records: previews, rollouts and sealed secrets, with the rules the
store's SQL applies (a reservation counts live places; a finished rollout stays
finished; a secret is stored once by `insert_if_absent`)."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from branchline.store.previews import LIVE, PreviewRow
from branchline.store.rollouts import RolloutRow
from branchline.store.secrets import SealedRow, SecretMeta


def _now() -> datetime:
    return datetime.now(UTC)


class MemoryPreviews:
    def __init__(self, project: str = "memory") -> None:
        self.project = project
        self.rows: dict[int, PreviewRow] = {}

    async def get(self, pr: int) -> PreviewRow | None:
        return self.rows.get(pr)

    async def list(self) -> builtins.list[PreviewRow]:
        return [self.rows[pr] for pr in sorted(self.rows)]

    async def reserve(
        self, pr: int, *, sha: str, max_live: int, ttl_seconds: float
    ) -> tuple[bool, builtins.list[int]]:
        others = sorted(n for n, r in self.rows.items() if n != pr and r.status in LIVE)
        if len(others) >= max_live:
            return False, others
        now = _now()
        row = self.rows.get(pr)
        expires = now + timedelta(seconds=ttl_seconds)
        self.rows[pr] = (
            replace(row, status="creating", sha=sha, updated_at=now, expires_at=expires)
            if row is not None
            else PreviewRow(self.project, pr, "creating", sha, now, now, expires, {})
        )
        return True, others

    async def set_status(self, pr: int, status: str, detail: dict[str, Any] | None = None) -> None:
        now = _now()
        row = self.rows.get(pr) or PreviewRow(self.project, pr, status, None, now, now, None, {})
        self.rows[pr] = replace(row, status=status, updated_at=now,
                                detail={**row.detail, **(detail or {})})  # fmt: skip

    async def expired(self) -> builtins.list[PreviewRow]:
        now = _now()
        return [
            r
            for r in await self.list()
            if r.status in LIVE and r.expires_at is not None and r.expires_at < now
        ]


class MemoryRollouts:
    def __init__(self, project: str = "memory") -> None:
        self.project = project
        self.rows: dict[int, RolloutRow] = {}
        self.branches: dict[str, str] = {}

    async def start(self, run_id: int, *, sha: str, triggered_by: str) -> int:
        if run_id not in self.rows:
            self.rows[run_id] = RolloutRow(
                len(self.rows) + 1, self.project, "production", run_id, sha, triggered_by,
                "running", _now(), None, {},
            )  # fmt: skip
        return self.rows[run_id].id

    async def get(self, run_id: int) -> RolloutRow | None:
        return self.rows.get(run_id)

    async def note(self, run_id: int, **detail: Any) -> None:
        row = self.rows[run_id]
        self.rows[run_id] = replace(row, detail={**row.detail, **detail})

    async def finish(self, run_id: int, status: str, **detail: Any) -> None:
        row = self.rows.get(run_id)
        if row is None or row.finished_at is not None:
            return  # finished once: a later report does not change the outcome
        self.rows[run_id] = replace(row, status=status, finished_at=_now(),
                                    detail={**row.detail, **detail})  # fmt: skip

    async def history(self, environment: str | None = None) -> list[RolloutRow]:
        return sorted((r for r in self.rows.values()
                       if environment is None or r.environment == environment),
                      key=lambda r: r.id, reverse=True)  # fmt: skip

    async def begin_manual(
        self, environment: str, *, triggered_by: str, sha: str | None, **detail: Any
    ) -> int:
        rollout_id = len(self.rows) + 1
        # Keyed apart from runs' rows (no run): by the negative of the id.
        self.rows[-rollout_id] = RolloutRow(
            rollout_id, self.project, environment, None, sha, triggered_by, "running", _now(),
            None, detail,
        )  # fmt: skip
        return rollout_id

    async def finish_manual(
        self, rollout_id: int, status: str, *, sha: str | None = None, **detail: Any
    ) -> None:
        row = self.rows.get(-rollout_id)
        if row is not None and row.finished_at is None:
            self.rows[-rollout_id] = replace(row, status=status, finished_at=_now(),
                                             sha=sha or row.sha,
                                             detail={**row.detail, **detail})  # fmt: skip

    async def branch_of(self, environment: str) -> str | None:
        return self.branches.get(environment)

    async def set_branch(self, environment: str, branch: str) -> None:
        self.branches[environment] = branch


class MemorySealedStore:
    """Sealed values only: what `Secrets` gives it is already ciphertext."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], SealedRow] = {}

    async def upsert(
        self, environment: str, name: str, *, nonce: bytes, ciphertext: bytes, key_id: str,
        generated: bool,
    ) -> datetime:  # fmt: skip
        moment = _now()
        self.rows[(environment, name)] = SealedRow(environment, name, nonce, ciphertext, key_id,
                                                   generated, moment)  # fmt: skip
        return moment

    async def insert_if_absent(
        self, environment: str, name: str, *, nonce: bytes, ciphertext: bytes, key_id: str,
        generated: bool,
    ) -> bool:  # fmt: skip
        if (environment, name) in self.rows:
            return False
        await self.upsert(environment, name, nonce=nonce, ciphertext=ciphertext, key_id=key_id,
                          generated=generated)  # fmt: skip
        return True

    async def fetch(self, environments: Sequence[str]) -> list[SealedRow]:
        return sorted((r for r in self.rows.values() if r.environment in environments),
                      key=lambda r: (r.environment, r.name))  # fmt: skip

    async def list_meta(self, environment: str | None = None) -> list[SecretMeta]:
        return [
            SecretMeta(r.environment, r.name, r.key_id, r.generated, r.updated_at)
            for r in sorted(self.rows.values(), key=lambda r: (r.environment, r.name))
            if environment is None or r.environment == environment
        ]

    async def environments_with(self, name: str, prefix: str) -> list[str]:
        return sorted(e for (e, n) in self.rows if n == name and e.startswith(prefix))

    async def delete(self, environment: str, name: str) -> bool:
        return self.rows.pop((environment, name), None) is not None

    async def delete_environment(self, environment: str) -> list[str]:
        names = sorted(n for (e, n) in self.rows if e == environment)
        for name in names:
            del self.rows[(environment, name)]
        return names


class MemoryApprovals:
    def __init__(self) -> None:
        self.approved_commits: dict[tuple[int, str], str] = {}

    async def approve(self, pr: int, sha: str, by: str) -> bool:
        if (pr, sha) in self.approved_commits:
            return False
        self.approved_commits[(pr, sha)] = by
        return True

    async def approved(self, pr: int, sha: str) -> bool:
        return (pr, sha) in self.approved_commits
