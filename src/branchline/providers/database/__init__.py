"""Database branches: the `DatabaseProvider` interface, what it returns, and the
optional capabilities a provider may have (checked with `isinstance`).

Capabilities: `RootInitializer` (the provider makes its root branch itself, as the
local one does; Neon's exists with the project), `Backups` (base backups taken on
demand; Neon keeps its own history), `GarbageCollector` (expired branches, crash
leftovers, backups), `ServerLogs` (the branch server's own log, to explain a
failed statement), `CreateDbGrants` (a branch's application role may be allowed
to create databases; a provider without it has roles that may already),
`SchemaComparer` (the provider diffs two branches' schemas itself, as Neon does;
`schema_diff` falls back to diffing their dumps here).

`connection_uri` always names the branch's application role: it owns the app
database and opens nothing else (not the parent, not another branch).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from branchline.branchdata import DataPlan


class BranchStatus(StrEnum):
    CREATING = "creating"  # intent recorded; the copy may be half made
    READY = "ready"  # accepts connections at its URI
    FAILED = "failed"  # creation failed; nothing of it is left running
    DELETING = "deleting"  # intent recorded; removal may be half done


@dataclass(frozen=True)
class Branch:
    """A named copy of the database. `uri` holds a password: never print it unmasked."""

    name: str
    parent: str | None
    status: BranchStatus
    created_at: datetime
    expires_at: datetime | None = None
    size_bytes: int | None = None
    port: int | None = None
    compute: str | None = None  # running, stopped or missing (local); idle/active (Neon)
    detail: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "parent": self.parent,
            "status": self.status.value,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "size_bytes": self.size_bytes,
            "port": self.port,
            "compute": self.compute,
            "detail": dict(self.detail),
        }


@runtime_checkable
class DatabaseProvider(Protocol):
    """Branches of one project's database."""

    async def create_branch(
        self,
        name: str,
        parent: str | None = None,
        *,
        at: datetime | None = None,
        expires: datetime | None = None,
        data: DataPlan | None = None,
    ) -> Branch:
        """Create `name` from `parent` (default: the configured parent), as of `at` when
        given (point in time); return the existing branch if it is already there.
        `data` shapes it (production's schema only, a fresh database, masked rows)
        before it is ready: nobody is given its URI before that is done, and it is
        recorded in the branch's detail (`data`), so a reset shapes it again."""
        ...

    async def delete_branch(self, name: str, *, force: bool = False) -> bool:
        """Delete `name`; False when it was already gone. The root branch only
        with `force`."""
        ...

    async def reset_branch(self, name: str) -> Branch:
        """Replace the branch's data with its parent's current state; same name and URI."""
        ...

    async def get_branch(self, name: str) -> Branch | None: ...

    async def list_branches(self) -> list[Branch]: ...

    async def connection_uri(self, name: str) -> str:
        """A libpq URI for the branch (contains its password)."""
        ...

    async def schema_dump(self, name: str) -> str:
        """The branch's schema as `pg_dump --schema-only` text."""
        ...

    async def aclose(self) -> None:
        """Finish background work (such as preparing the next branch) before exiting."""
        ...

    async def annotate(self, name: str, detail: Mapping[str, Any]) -> None:
        """Merge facts (migrations applied, schema fingerprint) into the branch's record."""
        ...

    async def restore(self, name: str, at: datetime) -> Branch:
        """A new branch `name` holding the parent as it was at `at`."""
        ...


# -- optional capabilities ------------------------------------------------------------


class Backup(Protocol):
    """A base backup: when it ends (a restore starts from one older than its moment)."""

    @property
    def end_time(self) -> datetime: ...

    def as_dict(self) -> dict[str, str]: ...


@dataclass
class GcReport:
    """What a garbage collection did."""

    expired_deleted: list[str] = field(default_factory=list)
    interrupted_cleaned: list[str] = field(default_factory=list)
    orphan_clusters_removed: list[str] = field(default_factory=list)
    stale_rows_removed: list[str] = field(default_factory=list)
    backup_taken: bool = False
    backups_pruned: list[str] = field(default_factory=list)
    archive_pruned: list[str] = field(default_factory=list)  # what went, and by which rule
    # production's WAL archive and backups after gc: bytes, limit_bytes, oldest_restorable
    archive: dict[str, Any] | None = None
    spare_rebuilt: bool = False
    archive_repaired: list[str] = field(default_factory=list)  # partial segments removed...
    notes: list[str] = field(default_factory=list)  # what could not be done, and why

    def as_dict(self) -> dict[str, Any]:
        return {
            "expired_deleted": self.expired_deleted,
            "interrupted_cleaned": self.interrupted_cleaned,
            "orphan_clusters_removed": self.orphan_clusters_removed,
            "stale_rows_removed": self.stale_rows_removed,
            "backup_taken": self.backup_taken,
            "backups_pruned": self.backups_pruned,
            "archive_pruned": self.archive_pruned,
            "archive": self.archive,
            "spare_rebuilt": self.spare_rebuilt,
            "archive_repaired": self.archive_repaired,
            "notes": self.notes,
        }


@runtime_checkable
class RootInitializer(Protocol):
    async def init_root(self) -> Branch:
        """Create the root branch (production) if it is not there; idempotent."""
        ...


@runtime_checkable
class Backups(Protocol):
    async def take_backup(self) -> Backup:
        """A base backup of the root branch, now."""
        ...


@runtime_checkable
class GarbageCollector(Protocol):
    async def gc(self) -> GcReport:
        """Delete expired branches, finish or undo interrupted work, remove what no
        record explains, keep backups fresh."""
        ...


@runtime_checkable
class BranchingMethod(Protocol):
    def branching_method(self) -> str:
        """How a new branch is made here ("clone", "copy"); blocking (it may probe
        the disk once). Raises UsageError when the configured way is impossible."""
        ...


@runtime_checkable
class SpareKeeper(Protocol):
    """A provider that may keep a spare copy ready to hide the copy time. A branch
    takes the spare without refilling it (a command returns when its branch is
    ready); serve refills it while no run works (`keep_spare`), and so does `db gc`."""

    async def ensure_spare(self) -> bool:
        """Make sure the spare is ready; True if one was (re)built. Never fails."""
        ...

    async def gc(self, *, keep_spare: bool = True) -> GcReport:
        """As GarbageCollector.gc; `keep_spare=False` leaves the spare as it is (a
        run is using the machine: a refill would slow its migration down)."""
        ...


@runtime_checkable
class CreateDbGrants(Protocol):
    async def allow_createdb(self, name: str) -> None:
        """Let the branch's application role create databases (a test runner's own)."""
        ...


@runtime_checkable
class ServerLogs(Protocol):
    async def server_log(self, name: str, size: int = 65536) -> str:
        """The end of the branch server's own log."""
        ...


@runtime_checkable
class StorageHealth(Protocol):
    async def storage(self) -> dict[str, Any]:
        """The disk holding the branches (size, free, the reserve) and the health of
        the root's WAL archive (failing, last archived and failed segments, why)."""
        ...


@runtime_checkable
class ClusterControl(Protocol):
    async def stop_clusters(self) -> list[str]:
        """Stop every running server of the project's branches and spares (their
        data stays; a branch starts again when asked for). Needs no state database.
        Returns what was stopped."""
        ...


@runtime_checkable
class SchemaComparer(Protocol):
    async def compare_schema(self, name: str, base: str) -> str | None:
        """A unified diff of `name`'s schema against `base`'s, or None when the
        provider cannot make one right now."""
        ...


async def schema_diff(db: DatabaseProvider, base: str, name: str) -> str:
    """A unified diff of `name`'s schema against `base`'s ("" when they are the same):
    the provider's own where it has one, else the two dumps diffed here."""
    if isinstance(db, SchemaComparer):
        own = await db.compare_schema(name, base)
        if own is not None:
            return own
    from branchline.schemadiff import normalize_dump, unified_diff

    before = normalize_dump(await db.schema_dump(base))
    return unified_diff(before, normalize_dump(await db.schema_dump(name)), base, name)
