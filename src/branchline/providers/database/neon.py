"""Neon database branches: the reference's own database, through Neon's API v2.

Every branch branchline makes on Neon carries an annotation naming the project
(`branchline-project`) and the branch (`branchline-branch`): that is how `gc` tells
its own from a team's other branches, which it never touches. As locally, the intent
is written to the store before Neon is asked, and the outcome after; a create that
finds its branch already on Neon (a crash between the two, a retried job) takes it
as it is, because Neon refuses a name that is taken.

The root branch (`production`) is the team's own: `db init` finds it by name and
records it, and nothing here ever deletes it. Each new branch gets a password of its
own for the configured role (a Neon branch starts with its parent's, which would
open production to code of a pull request that learnt the host).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from branchline import branchdata, naming
from branchline.branchdata import DataPlan, ShapeReport
from branchline.errors import UsageError
from branchline.providers.database import Branch, BranchStatus, GcReport
from branchline.providers.database.neon_api import (
    NeonBranch,
    NeonClient,
    NeonError,
    NeonLimitError,
)
from branchline.providers.database.recorded import (
    branch_from_row,
    checked_names,
    refuse_other_moment,
    require_parent,
)
from branchline.store import Store, locks, resources
from branchline.store import branches as branch_rows
from branchline.store.queries import Conn

PROVIDER = "neon"
RESOURCE_KIND = "database_branch"
OWNER_KEY = "branchline-project"
NAME_KEY = "branchline-branch"
READY_STATES = frozenset({"ready"})


class NeonDatabaseProvider:
    """Branches of one Neon project. Construction does no I/O."""

    def __init__(
        self,
        *,
        project: str,
        store: Store,
        client: NeonClient,
        root: str = naming.PRODUCTION_BRANCH,
        database: str = "neondb",
        role: str = "neondb_owner",
        pooled: bool = True,
        operation_timeout: float = 300.0,
    ) -> None:
        self.project = project
        self.store = store
        self.client = client
        self.root = root
        self.database = database
        self.role = role
        self.pooled = pooled
        self.operation_timeout = operation_timeout
        self._uris: dict[tuple[str, bool], str] = {}  # (Neon branch id, pooled) -> URI

    # -- the root -------------------------------------------------------------------

    async def init_root(self) -> Branch:
        """Find the team's root branch on Neon by name and record it. Idempotent."""
        await self.client.project()  # a wrong id or key, said plainly
        async with self._locked(self.root) as conn:
            found = await find_root(self.client, self.root)
            await branch_rows.upsert(
                conn, self.project, self.root, parent=None, provider=PROVIDER,
                status=BranchStatus.CREATING.value, expires_at=None,
            )  # fmt: skip
            return await self._mark_ready(conn, self.root, found, detail={"root": True})

    # -- create -----------------------------------------------------------------

    async def create_branch(
        self,
        name: str,
        parent: str | None = None,
        *,
        at: datetime | None = None,
        expires: datetime | None = None,
        data: DataPlan | None = None,
    ) -> Branch:
        name, parent = checked_names(name, parent, self.root)
        if at is not None and at > datetime.now(UTC):
            raise UsageError(f"{at.isoformat()} is in the future", hint="Choose a past moment.")
        plan = data or DataPlan()
        async with self._locked(name) as conn:
            row = await branch_rows.get(conn, self.project, name)
            if row is not None and row.status == BranchStatus.READY.value:
                refuse_other_moment(row, at)
                if await self.client.get_branch(str(row.detail.get("neon_id"))) is not None:
                    return await self._branch(conn, name)  # idempotent: it is already there
                await branch_rows.delete(conn, self.project, name)  # gone from Neon meanwhile
            source = require_parent(parent, await branch_rows.get(conn, self.project, parent))
            await resources.record(
                conn, self.project, RESOURCE_KIND, name, "creating", detail={"parent": parent}
            )
            await branch_rows.upsert(
                conn, self.project, name, parent=parent, provider=PROVIDER,
                status=BranchStatus.CREATING.value, expires_at=expires,
            )  # fmt: skip
            made: NeonBranch | None = None
            try:
                made = await self._neon_branch(name, str(source.detail["neon_id"]), at=at,
                                               expires=expires, plan=plan)  # fmt: skip
                # Still `creating` and its URI given to nobody: no code of the change has
                # seen production's rows before they are masked or gone.
                await self._own_password(made)
                shaped = await self._shape(made, plan)
            except BaseException:
                await self._undo_create(conn, name, made)
                raise
            detail: dict[str, Any] = {"restored_to": at.isoformat()} if at else {}
            if data is not None:
                detail |= {"data": plan.as_dict(), "shaped": shaped.as_dict()}
            return await self._mark_ready(conn, name, made, detail=detail)

    async def _neon_branch(
        self, name: str, parent_id: str, *, at: datetime | None, expires: datetime | None,
        plan: DataPlan,
    ) -> NeonBranch:  # fmt: skip
        """The branch on Neon, ready: made now, or found where an earlier attempt made it."""
        found = await self.client.find_branch(name)
        if found is None:
            try:
                found, operations = await self.client.create_branch(
                    name, parent_id, at=at, expires=expires, schema_only=plan.rows == "schema",
                    annotation={OWNER_KEY: self.project, NAME_KEY: name},
                )  # fmt: skip
            except NeonLimitError as exc:
                raise await self._limit_error(exc) from None
            except NeonError as exc:
                if exc.status in (400, 422) and at is not None:
                    raise UsageError(
                        f"Neon cannot make {name!r} as of {at.isoformat()}: {exc.message}",
                        hint="Choose a moment within the project's history (Neon keeps as "
                        "much as the project's history retention setting says).",
                    ) from None
                if exc.status != 409:
                    raise
                found = await self.client.find_branch(name)  # made meanwhile by another try
                if found is None:
                    raise
                operations = []
            await self.client.wait(operations, deadline=self.operation_timeout,
                                   what=f"branch {name!r}")  # fmt: skip
            if operations:  # all finished: Neon says the branch is ready
                return dataclasses.replace(found, current_state="ready", pending_state=None)
        elif found.annotation.get(OWNER_KEY) != self.project:
            raise UsageError(
                f"Neon project {self.client.project_id} already has a branch {name!r} that "
                "branchline did not make",
                hint="branchline never changes branches it did not make: rename or delete "
                "that one in the Neon console, or choose another name.",
            )
        return await self._until_ready(found)

    async def _until_ready(self, branch: NeonBranch) -> NeonBranch:
        began = time.monotonic()
        delay = 0.1
        while branch.current_state not in READY_STATES or branch.pending_state:
            if time.monotonic() - began > self.operation_timeout:
                raise NeonError(
                    f"Neon branch {branch.name!r} is still {branch.current_state} after "
                    f"{self.operation_timeout:.0f} s",
                    hint="Run the command again once Neon has finished with it.",
                )
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 2.0)
            fresh = await self.client.get_branch(branch.id)
            if fresh is None:
                raise NeonError(
                    f"Neon branch {branch.name!r} vanished while it was being made",
                    hint="Someone deleted it meanwhile; run the command again to make it anew.",
                )
            branch = fresh
        return branch

    async def _own_password(self, branch: NeonBranch) -> None:
        operations = await self.client.reset_role_password(branch.id, self.role)
        await self.client.wait(operations, deadline=self.operation_timeout,
                               what=f"a password of its own for {branch.name!r}")  # fmt: skip
        self._forget_uris(branch.id)

    async def _limit_error(self, exc: NeonLimitError) -> UsageError:
        branches = await self.client.list_branches()
        ours = [b for b in branches if b.annotation.get(OWNER_KEY) == self.project]
        now = datetime.now(UTC)
        expired = [b.name for b in ours if b.expires_at is not None and b.expires_at <= now]
        said = f"; expired: {', '.join(sorted(expired))}" if expired else ""
        return UsageError(
            f"the Neon project holds as many branches as its plan allows ({len(branches)}); "
            f"branchline made {len(ours)} of them{said}",
            hint="`branchline db gc` deletes branchline's expired and forgotten branches; "
            "delete others in the Neon console, or raise the plan's branch limit.",
        )

    async def _undo_create(self, conn: Conn, name: str, made: NeonBranch | None) -> None:
        """A failed create leaves nothing behind: no Neon branch of ours, no row."""
        try:
            target = made or await self.client.find_branch(name)
            if target is not None and target.annotation.get(OWNER_KEY) == self.project:
                operations = await self.client.delete_branch(target.id)
                await self.client.wait(operations or [], deadline=self.operation_timeout,
                                       what=f"removing {name!r}")  # fmt: skip
        except (NeonError, UsageError):
            pass  # gc finds it by its annotation and removes it
        try:
            await branch_rows.delete(conn, self.project, name)
            await resources.record(conn, self.project, RESOURCE_KIND, name, "failed")
        except psycopg.Error:
            pass  # the state database is gone: gc finishes the undo

    # -- delete and reset -------------------------------------------------------------

    async def delete_branch(self, name: str, *, force: bool = False) -> bool:
        name = naming.validate_branch_id(name)
        if name == self.root:
            raise UsageError(
                f"refusing to delete the root branch {name!r}: it is the team's production "
                "database on Neon",
                hint="Delete it in the Neon console if you really mean it.",
            )
        async with self._locked(name) as conn:
            return await self._delete_locked(conn, name)

    async def _delete_locked(self, conn: Conn, name: str) -> bool:
        row = await branch_rows.get(conn, self.project, name)
        recorded = (
            str(row.detail["neon_id"]) if row is not None and row.detail.get("neon_id") else None
        )
        if row is None:
            found = await self.client.find_branch(name)  # made by a create that crashed
            if found is None or found.annotation.get(OWNER_KEY) != self.project:
                return False
            recorded = found.id
        await resources.record(conn, self.project, RESOURCE_KIND, name, "deleting")
        if row is not None:
            await branch_rows.update(conn, self.project, name, status=BranchStatus.DELETING.value)
        if recorded is not None:
            operations = await self.client.delete_branch(recorded)  # None: already gone
            await self.client.wait(operations or [], deadline=self.operation_timeout,
                                   what=f"deleting {name!r}")  # fmt: skip
            self._forget_uris(recorded)
        else:  # interrupted before Neon named it: the name says which, if any
            found = await self.client.find_branch(name)
            if found is not None and found.annotation.get(OWNER_KEY) == self.project:
                operations = await self.client.delete_branch(found.id)
                await self.client.wait(operations or [], deadline=self.operation_timeout,
                                       what=f"deleting {name!r}")  # fmt: skip
        await branch_rows.delete(conn, self.project, name)
        await resources.record(conn, self.project, RESOURCE_KIND, name, "deleted")
        return True

    async def reset_branch(self, name: str) -> Branch:
        """Neon's restore from the parent: same branch, endpoint, password and URI."""
        name = naming.validate_branch_id(name)
        async with self._locked(name) as conn:
            row = await branch_rows.get(conn, self.project, name)
            if row is None or row.status != BranchStatus.READY.value:
                raise UsageError(
                    f"branch {name!r} does not exist", hint="See `branchline db branches list`."
                )
            if row.parent is None:
                raise UsageError(
                    f"branch {name!r} has no parent to reset to",
                    hint="Only a branch made from another can be reset; delete and create it.",
                )
            parent = await branch_rows.get(conn, self.project, row.parent)
            if parent is None:
                raise UsageError(
                    f"the parent of {name!r}, {row.parent!r}, is gone",
                    hint=f"Delete {name!r} and create it from an existing branch.",
                )
            branch_id, parent_id = str(row.detail["neon_id"]), str(parent.detail["neon_id"])
            operations = await self.client.restore_branch(branch_id, parent_id)
            await self.client.wait(operations, deadline=self.operation_timeout,
                                   what=f"resetting {name!r}")  # fmt: skip
            branch = await self.client.get_branch(branch_id)
            if branch is None:
                raise NeonError(
                    f"Neon branch {name!r} vanished during its reset",
                    hint="Someone deleted it meanwhile; `branchline db gc` forgets its record.",
                )
            branch = await self._until_ready(branch)
            # A masked (or schema-only) branch stays so: its plan is in its record.
            await self._shape(branch, DataPlan.from_dict(row.detail.get("data")), reset=True)
            reset_at = datetime.now(UTC).isoformat()
            return await self._mark_ready(conn, name, branch, detail={"reset_at": reset_at})

    # -- reading ---------------------------------------------------------------------

    async def get_branch(self, name: str) -> Branch | None:
        async with self.store.connect() as conn:
            row = await branch_rows.get(conn, self.project, name)
        return None if row is None else branch_from_row(row, None)

    async def list_branches(self) -> list[Branch]:
        async with self.store.connect() as conn:
            rows = await branch_rows.list_all(conn, self.project)
        states = {b.id: b.current_state for b in await self.client.list_branches()}
        return [branch_from_row(row, states.get(str(row.detail.get("neon_id")), "missing"))
                for row in rows]  # fmt: skip

    async def connection_uri(self, name: str) -> str:
        return await self._uri_of(await self._neon_id(name), pooled=self.pooled)

    async def _neon_id(self, name: str) -> str:
        """The Neon id of the ready branch `name`."""
        branch = await self.get_branch(name)
        if branch is None or branch.status is not BranchStatus.READY:
            raise UsageError(
                f"branch {name!r} does not exist", hint="See `branchline db branches list`."
            )
        return str(branch.detail["neon_id"])

    async def _uri_of(self, branch_id: str, *, pooled: bool) -> str:
        key = (branch_id, pooled)
        if key not in self._uris:
            self._uris[key] = await self.client.connection_uri(
                branch_id, database=self.database, role=self.role, pooled=pooled
            )
        return self._uris[key]

    def _forget_uris(self, branch_id: str) -> None:
        for key in [k for k in self._uris if k[0] == branch_id]:
            del self._uris[key]

    async def schema_dump(self, name: str) -> str:
        return await self.client.schema(await self._neon_id(name), database=self.database)

    async def compare_schema(self, name: str, base: str) -> str | None:
        """Neon's own diff of `name`'s schema against `base`'s (None: ask the caller to
        diff the two dumps itself)."""
        a, b = await self.get_branch(name), await self.get_branch(base)
        if a is None or b is None:
            return None
        try:
            return await self.client.compare_schema(
                str(a.detail["neon_id"]), str(b.detail["neon_id"]), database=self.database
            )
        except NeonError as exc:
            if exc.status in (400, 404, 501):
                return None  # an older API or plan without it: the local diff serves
            raise

    async def annotate(self, name: str, detail: Mapping[str, Any]) -> None:
        async with self.store.connect() as conn:
            await branch_rows.update(conn, self.project, name, detail=dict(detail))

    async def restore(self, name: str, at: datetime) -> Branch:
        """The root as it was at `at`, as a new branch (Neon keeps the history)."""
        return await self.create_branch(name, self.root, at=at)

    async def aclose(self) -> None:
        await self.client.aclose()

    # -- garbage ------------------------------------------------------------------------

    async def gc(self) -> GcReport:
        """Delete branchline's expired Neon branches and those no record explains, finish
        or undo interrupted creates and deletes, forget rows of branches Neon no longer
        has. A branch without branchline's annotation is never touched."""
        report = GcReport()
        now = datetime.now(UTC)
        on_neon = await self.client.list_branches()
        ours = {b.annotation.get(NAME_KEY, b.name): b for b in on_neon
                if b.annotation.get(OWNER_KEY) == self.project}  # fmt: skip
        async with self.store.connect() as conn:
            rows = {row.name: row for row in await branch_rows.list_all(conn, self.project)}
        for name, branch in sorted(ours.items()):
            if name == self.root:
                continue
            row = rows.get(name)
            expired = (branch.expires_at is not None and branch.expires_at <= now) or (
                row is not None and row.expires_at is not None and row.expires_at <= now
            )
            if row is not None and row.status == BranchStatus.READY.value and not expired:
                continue
            async with self._try_locked(name) as conn:
                if conn is None:
                    continue  # a create or delete of it is under way
                await self._delete_locked(conn, name)
                if expired:
                    report.expired_deleted.append(name)
                elif row is None:
                    report.orphan_clusters_removed.append(name)
                else:
                    report.interrupted_cleaned.append(name)
        ids = {b.id for b in on_neon}
        for name, row in sorted(rows.items()):
            if name in ours or name == self.root or str(row.detail.get("neon_id")) in ids:
                continue
            async with self._try_locked(name) as conn:
                if conn is None:
                    continue
                await branch_rows.delete(conn, self.project, name)
                await resources.record(conn, self.project, RESOURCE_KIND, name, "deleted")
                report.stale_rows_removed.append(name)
        return report

    # -- internals ---------------------------------------------------------------------

    def _locked(self, name: str) -> contextlib.AbstractAsyncContextManager[Conn]:
        """One create, delete or reset of a name at a time (Neon's side is remote: a
        lock lost with the state database lets a retry in, which finds the branch by
        name and takes it as it is)."""
        return locks.held(self.store, f"branchline:branch:{self.project}:{name}")

    def _try_locked(self, name: str) -> contextlib.AbstractAsyncContextManager[Conn | None]:
        return locks.if_free(self.store, f"branchline:branch:{self.project}:{name}")

    async def _shape(
        self, branch: NeonBranch, plan: DataPlan, *, reset: bool = False
    ) -> ShapeReport:
        """Make the branch hold what `plan` says, as the configured role (it owns the
        database). Schema-only branches are made so by Neon (`init_source`); after a
        reset from the parent their rows are cleared here."""
        report = ShapeReport()
        if not plan.changes_anything or (plan.rows == "schema" and not reset):
            return report
        began = time.monotonic()
        uri = await self._uri_of(branch.id, pooled=False)  # a session: DDL, ANALYZE
        report = await asyncio.to_thread(_shape_sync, uri, plan, report)
        report.seconds = time.monotonic() - began
        return report

    async def _mark_ready(
        self, conn: Conn, name: str, branch: NeonBranch, *, detail: dict[str, Any]
    ) -> Branch:
        await branch_rows.update(
            conn,
            self.project,
            name,
            status=BranchStatus.READY.value,
            size_bytes=branch.logical_size,
            detail={
                "neon_id": branch.id,
                "neon_parent_id": branch.parent_id,
                "database": self.database,
                "role": self.role,
                **detail,
            },
        )
        await resources.record(conn, self.project, RESOURCE_KIND, name, "ready")
        return await self._branch(conn, name)

    async def _branch(self, conn: Conn, name: str) -> Branch:
        row = await branch_rows.get(conn, self.project, name)
        if row is None:
            raise NeonError(f"branch {name!r} vanished from the store")
        return branch_from_row(row, None)


async def verify(client: NeonClient, root: str) -> str:
    """Whether the settings can work: the key is accepted, the project and its root
    branch exist. Says what it found; raises what is wrong."""
    project = await client.project()
    await find_root(client, root)
    return f"Neon project {project.get('name', client.project_id)!r} has branch {root!r}"


async def find_root(client: NeonClient, root: str) -> NeonBranch:
    found = await client.find_branch(root)
    if found is None:
        raise UsageError(
            f"Neon project {client.project_id} has no branch named {root!r}",
            hint=f"Create it in the Neon console (or rename the default branch to {root!r}), "
            "or set [database] parent to the branch production uses.",
        )
    return found


def _shape_sync(uri: str, plan: DataPlan, report: ShapeReport) -> ShapeReport:
    with psycopg.connect(uri, autocommit=True, connect_timeout=30) as conn:
        if plan.rows == "empty":
            _empty_database(conn)
        elif plan.rows == "schema":
            report.emptied = branchdata.clear_rows(conn)
        else:
            changed = branchdata.apply_masks(conn, plan.masks, report)
            changed += branchdata.refresh_views(conn)
            if changed:
                # The owner cannot delete statistics; ANALYZE overwrites the sampled
                # values of every masked table.
                branchdata.analyze(conn, changed)
    return report


def _empty_database(conn: psycopg.Connection[Any]) -> None:
    """A fresh database without a superuser: every schema the role may drop goes, and
    an empty `public` is made again."""
    rows = conn.execute(
        """SELECT nspname FROM pg_namespace
           WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'
             AND pg_has_role(nspowner, 'USAGE')"""
    ).fetchall()
    with conn.transaction():
        for (schema,) in rows:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(str(schema))))
        conn.execute("CREATE SCHEMA IF NOT EXISTS public")
