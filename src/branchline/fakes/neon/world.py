"""What the fake Neon knows (its project, branches, endpoints, operations) and the real
work behind it: every Neon branch is a local Postgres cluster of a
`LocalDatabaseProvider`, with a state database of its own in the fake's directory.

The model is kept in memory: a fake started again over an old state directory begins
a new project (its clusters are made anew).
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from branchline import naming
from branchline.branchdata import DataPlan
from branchline.errors import BranchlineError
from branchline.masking import mask_url
from branchline.postgres import roles
from branchline.providers.database.local import LocalDatabaseProvider
from branchline.store import Store, locate_state

HISTORY_RETENTION = 86400  # seconds: a day, as on Neon's free plan
logger = logging.getLogger(__name__)

LOCAL_PROJECT = "neonfake"  # the local provider's project inside the fake's state dir
REGION = "aws-us-east-2"
PROXY_HOST = "us-east-2.aws.neon.tech"
PG_VERSION = 17  # what the project says; the clusters run the local Postgres

_ADJECTIVES = (
    "aged", "ancient", "billowing", "bitter", "black", "blue", "bold", "broad", "cold",
    "cool", "crimson", "damp", "dark", "dawn", "delicate", "divine", "dry", "empty",
    "falling", "fancy", "flat", "floral", "fragrant", "frosty", "gentle", "green",
    "hidden", "holy", "icy", "jolly", "late", "lingering", "little", "lively", "long",
    "lucky", "misty", "morning", "muddy", "nameless", "noisy", "odd", "old", "orange",
    "patient", "plain", "polished", "proud", "purple", "quiet", "rapid", "raspy", "red",
    "restless", "rough", "round", "royal", "shiny", "shrill", "shy", "silent", "small",
    "snowy", "soft", "solitary", "sparkling", "spring", "square", "steep", "still",
    "summer", "super", "sweet", "tight", "tiny", "twilight", "wandering", "weathered",
    "white", "wild", "winter", "wispy", "withered", "yellow", "young",
)  # fmt: skip
_NOUNS = (
    "art", "band", "bar", "base", "bird", "block", "boat", "bonus", "bread", "breeze",
    "brook", "bush", "butterfly", "cake", "cell", "cherry", "cloud", "credit", "darkness",
    "dawn", "dew", "disk", "dream", "dust", "feather", "field", "fire", "firefly",
    "flower", "fog", "forest", "frog", "frost", "glade", "glitter", "grass", "hall",
    "hat", "haze", "heart", "hill", "king", "lab", "lake", "leaf", "limit", "math",
    "meadow", "mode", "moon", "morning", "mountain", "mouse", "mud", "night", "paper",
    "pine", "poetry", "pond", "queen", "rain", "recipe", "resonance", "rice", "river",
    "salad", "scene", "sea", "shadow", "shape", "silence", "sky", "smoke", "snow",
    "snowflake", "sound", "star", "sun", "sunset", "surf", "term", "thunder", "tooth",
    "tree", "truth", "union", "unit", "violet", "voice", "water", "waterfall", "wave",
    "wildflower", "wind", "wood",
)  # fmt: skip


def neon_id(prefix: str = "") -> str:
    """An id shaped like Neon's: `shiny-wind-028834`, `br-aged-salad-637688`."""
    word = f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}-{secrets.randbelow(10**6):06d}"
    return f"{prefix}-{word}" if prefix else word


def now() -> datetime:
    return datetime.now(UTC)


def stamp(moment: datetime | None) -> str | None:
    """RFC 3339 with a `Z`, as Neon writes its timestamps."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_time(value: str) -> datetime:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class ApiError(Exception):
    """An answer other than success, in Neon's GeneralError shape."""

    def __init__(
        self, status: int, message: str, *, code: str = "", headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


@dataclass
class Operation:
    id: str
    branch_id: str
    action: str
    endpoint_id: str | None = None
    status: str = "running"
    error: str | None = None
    created_at: datetime = field(default_factory=now)
    updated_at: datetime = field(default_factory=now)

    def end(self, error: str | None = None) -> None:
        self.status = "failed" if error else "finished"
        self.error = error
        self.updated_at = now()

    def as_json(self, project_id: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "project_id": project_id,
            "branch_id": self.branch_id,
            "action": self.action,
            "status": self.status,
            "failures_count": 1 if self.status == "failed" else 0,
            "created_at": stamp(self.created_at),
            "updated_at": stamp(self.updated_at),
            "total_duration_ms": int((self.updated_at - self.created_at).total_seconds() * 1000),
        }
        if self.endpoint_id:
            out["endpoint_id"] = self.endpoint_id
        if self.error:
            out["error"] = self.error
        return out


@dataclass
class NeonBranch:
    id: str
    name: str
    local: str  # the local provider's branch behind it
    parent_id: str | None
    creation_source: str = "console"
    default: bool = False
    protected: bool = False
    current_state: str = "init"
    pending_state: str | None = "ready"
    parent_timestamp: datetime | None = None
    expires_at: datetime | None = None
    init_source: str | None = None
    endpoint_id: str | None = None
    endpoint_created_at: datetime = field(default_factory=now)
    annotation: dict[str, str] | None = None
    annotated_at: datetime | None = None
    last_reset_at: datetime | None = None
    created_at: datetime = field(default_factory=now)
    updated_at: datetime = field(default_factory=now)
    state_changed_at: datetime = field(default_factory=now)

    def set_state(self, current: str, pending: str | None = None) -> None:
        self.current_state, self.pending_state = current, pending
        self.state_changed_at = self.updated_at = now()

    @property
    def ready(self) -> bool:
        return self.current_state == "ready"


class NeonWorld:
    """One Neon project, its branches made real by local clusters."""

    def __init__(
        self,
        state_dir: Path,
        *,
        project_id: str | None = None,
        default_branch: str = "production",
        database: str = "neondb",
        operation_delay: float = 0.2,
        branch_limit: int = 10,
    ) -> None:
        self.state_dir = state_dir
        self.project_id = project_id or neon_id()
        self.project_name = self.project_id
        self.default_branch_name = default_branch
        self.database = database
        self.operation_delay = operation_delay
        self.branch_limit = branch_limit
        self.simulated_delay = 0.0  # seconds operations were held open on purpose
        self.created_at = now()
        self.branches: dict[str, NeonBranch] = {}
        self.operations: dict[str, Operation] = {}
        self.role_name = roles.APP_USER  # the role of every URI the fake gives out
        self._tasks: set[asyncio.Task[None]] = set()
        root = neon_id("br")
        self.default_id = root
        location = locate_state(Path("/"), {"BRANCHLINE_STATE_DIR": str(state_dir)})
        self.store = Store(location)
        self.provider = LocalDatabaseProvider(
            project=LOCAL_PROJECT,
            state_dir=location.project_dir(LOCAL_PROJECT),
            store=self.store,
            root=root,
            database=database,
        )

    # -- life -----------------------------------------------------------------

    async def open(self) -> None:
        """Start the state database and make the default branch (a real cluster)."""
        await self.store.start()
        await self.provider.init_root()
        await self.provider.allow_createdb(self.default_id)
        branch = NeonBranch(
            id=self.default_id,
            name=self.default_branch_name,
            local=self.default_id,
            parent_id=None,
            default=True,
            endpoint_id=neon_id("ep"),
        )
        branch.set_state("ready")
        self.branches[branch.id] = branch

    async def close(self) -> None:
        """Let running operations end, then stop every cluster and the state database."""
        pending = list(self._tasks)
        if pending:
            await asyncio.wait(pending, timeout=60)
        for task in pending:
            task.cancel()
        with contextlib.suppress(BranchlineError, OSError):
            await self.provider.aclose()
        await self.provider.stop_clusters()
        await asyncio.to_thread(self.store.stop)

    # -- lookups --------------------------------------------------------------

    def branch(self, branch_id: str) -> NeonBranch:
        branch = self.branches.get(branch_id)
        if branch is None:
            raise ApiError(404, f"branch {branch_id} not found")
        return branch

    def running(self, branch_id: str) -> bool:
        return any(
            op.status == "running" and op.branch_id == branch_id for op in self.operations.values()
        )

    def refuse_if_busy(self, *branches: NeonBranch) -> None:
        for branch in branches:
            if self.running(branch.id):
                raise ApiError(
                    423,
                    "project already has running conflicting operations, scheduling of new "
                    "ones is prohibited",
                    code="",
                )

    def children(self, branch_id: str) -> list[NeonBranch]:
        return [b for b in self.branches.values() if b.parent_id == branch_id]

    def by_name(self, name: str) -> NeonBranch | None:
        return next((b for b in self.branches.values() if b.name == name), None)

    def refuse_taken(self, name: str, *, but: str | None = None) -> None:
        other = self.by_name(name)
        if other is not None and other.id != but:
            raise ApiError(409, f'branch already exists; branch_name:"{name}"')

    def refuse_over_limit(self) -> None:
        if len(self.branches) >= self.branch_limit:
            raise ApiError(
                422,
                f"branches limit exceeded: the project may have {self.branch_limit} branches",
                code="BRANCHES_LIMIT_EXCEEDED",
            )

    # -- operations -----------------------------------------------------------

    def start_operations(
        self,
        branch: NeonBranch,
        actions: list[str],
        work: Callable[[], Awaitable[None]],
        *,
        done: Callable[[], None] | None = None,
        failed: Callable[[str], None] | None = None,
    ) -> list[Operation]:
        """Operations that stay `running` until `work` is over and the configured
        delay has passed (whichever is later), then `finished` (or `failed`)."""
        ops = [
            Operation(
                id=str(uuid.uuid4()),
                branch_id=branch.id,
                action=action,
                endpoint_id=branch.endpoint_id if action.endswith("_compute") else None,
            )
            for action in actions
        ]
        for op in ops:
            self.operations[op.id] = op
        delay = self.operation_delay
        self.simulated_delay += delay

        async def run() -> None:
            error: str | None = None
            try:
                await asyncio.gather(work(), asyncio.sleep(delay))
            except Exception as exc:
                error = one_line(exc)
                logger.warning("fake neon: %s on %s failed: %s", actions, branch.id, error)
            for op in ops:
                op.end(error)
            if error is None and done is not None:
                done()
            if error is not None and failed is not None:
                failed(error)

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return ops

    def sweep_expired(self) -> list[str]:
        """Delete the branches whose `expires_at` has passed (Neon does so itself)."""
        moment = now()
        gone = []
        for branch in list(self.branches.values()):
            if branch.expires_at is None or branch.expires_at > moment or branch.default:
                continue
            if self.running(branch.id) or self.children(branch.id):
                continue
            self._delete(branch)
            gone.append(branch.id)
        return gone

    # -- branches ---------------------------------------------------------------

    def create_branch(self, body: dict[str, Any]) -> dict[str, Any]:
        spec: dict[str, Any] = body.get("branch") or {}
        if spec.get("parent_lsn"):
            raise ApiError(
                400,
                "parent_lsn is not supported by the fake Neon: it makes point-in-time "
                "branches from parent_timestamp only",
            )
        parent = self.branch(spec.get("parent_id") or self.default_id)
        branch_id = neon_id("br")
        name = spec.get("name") or branch_id
        self.refuse_taken(name)
        self.refuse_over_limit()
        self.refuse_if_busy(parent)
        at = parse_time(spec["parent_timestamp"]) if spec.get("parent_timestamp") else None
        if at is not None:
            if not parent.default:
                raise ApiError(
                    400,
                    "the fake Neon makes point-in-time branches of the default branch only "
                    f"({self.default_id}), whose WAL it archives",
                )
            if at > now():
                raise ApiError(400, "parent_timestamp is in the future")
            earliest = self.earliest_moment()
            if at < earliest:
                raise ApiError(
                    400,
                    f"parent_timestamp {stamp(at)} is outside the project's history: the "
                    f"earliest moment a branch can be made from is {stamp(earliest)}",
                )
        expires = parse_time(spec["expires_at"]) if spec.get("expires_at") else None
        if expires is not None and expires <= now():
            raise ApiError(400, "expires_at must be in the future")
        init_source = spec.get("init_source") or "parent-data"
        if init_source not in ("parent-data", "schema-only"):
            raise ApiError(400, f"unknown init_source {init_source!r}")
        schema_only = init_source == "schema-only"
        endpoints = body.get("endpoints") or []
        if any(e.get("type") != "read_write" for e in endpoints) or len(endpoints) > 1:
            raise ApiError(400, "the fake Neon makes one read_write endpoint per branch at most")
        branch = NeonBranch(
            id=branch_id,
            name=name,
            local=naming.validate_branch_id(branch_id),
            # A schema-only branch is a root of its own on Neon: no parent.
            parent_id=None if schema_only else parent.id,
            creation_source="console",
            protected=bool(spec.get("protected")),
            parent_timestamp=at,
            expires_at=expires,
            init_source=init_source,
            endpoint_id=neon_id("ep") if endpoints else None,
        )
        annotation = body.get("annotation_value")
        if annotation:
            branch.annotation, branch.annotated_at = dict(annotation), now()
        self.branches[branch.id] = branch
        plan = DataPlan(data="schema") if schema_only else None
        source = parent.local

        async def work() -> None:
            await self.provider.create_branch(branch.local, source, at=at, data=plan)
            await self.provider.allow_createdb(branch.local)

        actions = ["create_branch"] + (["start_compute"] if branch.endpoint_id else [])
        ops = self.start_operations(
            branch, actions, work,
            done=lambda: branch.set_state("ready"),
            failed=lambda _error: branch.set_state("init"),
        )  # fmt: skip
        return {
            **self.branch_body(branch),
            "endpoints": [self.endpoint_json(branch)] if branch.endpoint_id else [],
            "operations": [op.as_json(self.project_id) for op in ops],
            "roles": [self.role_json(branch)],
            "databases": [self.database_json(branch)],
        }

    def update_branch(self, branch_id: str, body: dict[str, Any]) -> dict[str, Any]:
        branch = self.branch(branch_id)
        self.refuse_if_busy(branch)
        spec: dict[str, Any] = body.get("branch") or {}
        if "name" in spec:
            self.refuse_taken(spec["name"], but=branch.id)
            branch.name = spec["name"]
        if "protected" in spec:
            branch.protected = bool(spec["protected"])
        if "expires_at" in spec:
            value = spec["expires_at"]
            branch.expires_at = parse_time(value) if value else None
        branch.updated_at = now()
        return {**self.branch_body(branch), "operations": []}

    def delete_branch(self, branch_id: str) -> dict[str, Any]:
        branch = self.branch(branch_id)
        if branch.default:
            raise ApiError(400, f"branch {branch.id} is the project's default branch")
        if self.children(branch.id):
            raise ApiError(400, f"branch {branch.id} has child branches: delete them first")
        self.refuse_if_busy(branch)
        ops = self._delete(branch)
        return {
            **self.branch_body(branch),
            "operations": [op.as_json(self.project_id) for op in ops],
        }

    def _delete(self, branch: NeonBranch) -> list[Operation]:
        del self.branches[branch.id]
        local = branch.local

        async def work() -> None:
            await self.provider.delete_branch(local)

        actions = (["suspend_compute"] if branch.endpoint_id else []) + ["delete_timeline"]
        return self.start_operations(branch, actions, work)

    def earliest_moment(self) -> datetime:
        """The oldest moment of the default branch a branch can be made from: within the
        project's history retention, and not before the first base backup."""
        backups = self.provider.backups()
        first = backups[0].end_time if backups else now()
        return max(first, now() - timedelta(seconds=HISTORY_RETENTION))

    def reset_password(self, branch_id: str) -> dict[str, Any]:
        """Neon's reset_password: the role's password changes once the operation is over."""
        branch = self.branch(branch_id)
        if not branch.ready:
            raise ApiError(423, f"branch {branch.id} is not ready yet: it has running operations")
        self.refuse_if_busy(branch)
        cluster = self.provider.cluster(branch.local)

        async def work() -> None:
            await asyncio.to_thread(roles.replace_passwords, cluster)

        ops = self.start_operations(branch, ["apply_config"], work)
        role = self.role_json(branch)
        return {"role": role, "operations": [op.as_json(self.project_id) for op in ops]}

    def restore_branch(self, branch_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Reset to the parent's head (the local reset: the URI stays the same), or
        make the branch another source's current data (the same, from that source),
        or the source's data as of `source_timestamp` (a local point-in-time copy of
        the default branch put in its place: a new URI, where Neon keeps it)."""
        branch = self.branch(branch_id)
        source = self.branch(body["source_branch_id"])
        if body.get("source_lsn"):
            raise ApiError(
                400, "source_lsn is not supported by the fake Neon: use source_timestamp"
            )
        at = parse_time(body["source_timestamp"]) if body.get("source_timestamp") else None
        preserve = body.get("preserve_under_name") or None
        if branch.default:
            raise ApiError(
                400, "the fake Neon does not restore the default branch (it has no parent)"
            )
        if source.id == branch.id and at is None:
            raise ApiError(400, "restoring a branch onto itself needs source_timestamp")
        if at is not None and not source.default:
            raise ApiError(
                400,
                "the fake Neon restores to a moment of the default branch only "
                f"({self.default_id}); from other sources it restores their current data",
            )
        if at is not None and at > now():
            raise ApiError(400, "source_timestamp is in the future")
        if self.children(branch.id):
            raise ApiError(
                400, "the fake Neon does not restore a branch that has children (Neon moves "
                "them to the preserved branch)"
            )  # fmt: skip
        if preserve is not None:
            self.refuse_taken(preserve)
            self.refuse_over_limit()
        self.refuse_if_busy(branch, source)
        old_local = branch.local
        kept: list[str] = []  # the local branch holding the old data, when preserved

        if at is None:
            # Neon keeps the branch's endpoint and password: the local reset keeps the
            # port and password, so the URI stays the same from any source.
            async def work() -> None:
                if preserve is not None:
                    keep = neon_id("br")
                    await self.provider.create_branch(keep, old_local)
                    await self.provider.allow_createdb(keep)
                    kept.append(keep)
                await self.provider.reset_branch(old_local, source=source.local)
        else:
            new_local = neon_id("br")

            async def work() -> None:
                await self.provider.create_branch(new_local, source.local, at=at)
                await self.provider.allow_createdb(new_local)
                branch.local = new_local
                if preserve is not None:
                    kept.append(old_local)
                else:
                    await self.provider.delete_branch(old_local)

        def done() -> None:
            branch.set_state("ready")
            branch.last_reset_at = now()
            if source.id != branch.parent_id or at is not None:
                branch.parent_id, branch.parent_timestamp = source.id, at
            if preserve is not None and kept:
                backup = NeonBranch(
                    id=kept[0] if kept[0] != old_local else neon_id("br"),
                    name=preserve,
                    local=kept[0],
                    parent_id=branch.parent_id,
                    creation_source="console",
                )
                backup.set_state("ready")
                self.branches[backup.id] = backup

        branch.set_state("resetting", "ready")
        actions = ["create_timeline"] + (["start_compute"] if branch.endpoint_id else [])
        ops = self.start_operations(
            branch, actions, work, done=done, failed=lambda _e: branch.set_state("ready")
        )
        return {
            **self.branch_body(branch),
            "operations": [op.as_json(self.project_id) for op in ops],
        }

    # -- databases ------------------------------------------------------------

    def ready_branch(self, branch_id: str, database: str) -> NeonBranch:
        branch = self.branch(branch_id)
        if database != self.database:
            raise ApiError(404, f"database {database!r} not found on branch {branch.id}")
        if not branch.ready:
            raise ApiError(423, f"branch {branch.id} is not ready yet: it has running operations")
        return branch

    async def connection_uri(self, branch_id: str, database: str) -> str:
        """The branch's working URI (its local application role). `pooled=true` gets the
        same URI: the fake has no pooler, and a direct connection behaves the same."""
        branch = self.ready_branch(branch_id, database)
        return await self.provider.connection_uri(branch.local)

    async def schema(self, branch_id: str, database: str) -> str:
        branch = self.ready_branch(branch_id, database)
        return await self.provider.schema_dump(branch.local)

    async def compare_schema(self, branch_id: str, base_id: str | None, database: str) -> str:
        branch = self.branch(branch_id)
        base_id = base_id or branch.parent_id or self.default_id
        mine = await self.schema(branch.id, database)
        theirs = await self.schema(base_id, database)
        lines = difflib.unified_diff(
            theirs.splitlines(keepends=True), mine.splitlines(keepends=True),
            fromfile=f"{base_id}/{database}", tofile=f"{branch.id}/{database}",
        )  # fmt: skip
        return "".join(lines)

    # -- JSON -----------------------------------------------------------------

    def branch_json(self, branch: NeonBranch) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": branch.id,
            "project_id": self.project_id,
            "name": branch.name,
            "current_state": branch.current_state,
            "state_changed_at": stamp(branch.state_changed_at),
            "logical_size": 0,
            "creation_source": branch.creation_source,
            "primary": branch.default,
            "default": branch.default,
            "protected": branch.protected,
            "cpu_used_sec": 0,
            "compute_time_seconds": 0,
            "active_time_seconds": 0,
            "written_data_bytes": 0,
            "data_transfer_bytes": 0,
            "created_at": stamp(branch.created_at),
            "updated_at": stamp(branch.updated_at),
        }
        optional = {
            "parent_id": branch.parent_id,
            "pending_state": branch.pending_state,
            "parent_timestamp": stamp(branch.parent_timestamp),
            "expires_at": stamp(branch.expires_at),
            "last_reset_at": stamp(branch.last_reset_at),
            "init_source": branch.init_source,
        }
        out.update({k: v for k, v in optional.items() if v is not None})
        return out

    def branch_body(self, branch: NeonBranch) -> dict[str, Any]:
        return {"branch": self.branch_json(branch)}

    def annotation_json(self, branch: NeonBranch) -> dict[str, Any]:
        out: dict[str, Any] = {
            "object": {"type": "console/branch", "id": branch.id},
            "value": dict(branch.annotation or {}),
        }
        if branch.annotated_at is not None:
            out["created_at"] = out["updated_at"] = stamp(branch.annotated_at)
        return out

    def endpoint_json(self, branch: NeonBranch) -> dict[str, Any]:
        assert branch.endpoint_id is not None
        return {
            "host": f"{branch.endpoint_id}.{PROXY_HOST}",
            "id": branch.endpoint_id,
            "project_id": self.project_id,
            "branch_id": branch.id,
            "autoscaling_limit_min_cu": 0.25,
            "autoscaling_limit_max_cu": 0.25,
            "region_id": REGION,
            "type": "read_write",
            "current_state": "active" if branch.ready else "init",
            "settings": {},
            "pooler_enabled": False,
            "pooler_mode": "transaction",
            "disabled": False,
            "passwordless_access": False,
            "creation_source": branch.creation_source,
            "created_at": stamp(branch.endpoint_created_at),
            "updated_at": stamp(branch.updated_at),
            "proxy_host": PROXY_HOST,
            "suspend_timeout_seconds": 0,
            "provisioner": "k8s-neonvm",
        }

    def role_json(self, branch: NeonBranch) -> dict[str, Any]:
        return {
            "branch_id": branch.id,
            "name": self.role_name,
            "protected": False,
            "created_at": stamp(branch.created_at),
            "updated_at": stamp(branch.created_at),
        }

    def database_json(self, branch: NeonBranch) -> dict[str, Any]:
        return {
            "id": 1,
            "branch_id": branch.id,
            "name": self.database,
            "owner_name": self.role_name,
            "created_at": stamp(branch.created_at),
            "updated_at": stamp(branch.created_at),
        }

    def project_json(self) -> dict[str, Any]:
        created = stamp(self.created_at)
        return {
            "id": self.project_id,
            "platform_id": "aws",
            "region_id": REGION,
            "name": self.project_name,
            "provisioner": "k8s-neonvm",
            "default_endpoint_settings": {
                "autoscaling_limit_min_cu": 0.25,
                "autoscaling_limit_max_cu": 0.25,
                "suspend_timeout_seconds": 0,
            },
            "pg_version": PG_VERSION,
            "proxy_host": PROXY_HOST,
            "branch_logical_size_limit": 512,
            "branch_logical_size_limit_bytes": 512 * 1024 * 1024,
            "store_passwords": True,
            "active_time_seconds": 0,
            "compute_time_seconds": 0,
            "written_data_bytes": 0,
            "data_transfer_bytes": 0,
            "data_storage_bytes_hour": 0,
            "cpu_used_sec": 0,
            "creation_source": "console",
            "history_retention_seconds": HISTORY_RETENTION,
            "created_at": created,
            "updated_at": created,
            "consumption_period_start": created,
            "consumption_period_end": stamp(self.created_at + timedelta(days=30)),
            "owner_id": "00000000-0000-4000-8000-000000000000",
            "owner": {
                "email": "fake@neon.invalid",
                "name": "fake",
                "branches_limit": self.branch_limit,
                "subscription_type": "free_v3",
            },
        }


def one_line(exc: BaseException) -> str:
    """An error for an operation's `error`: one line, no password."""
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return mask_url(" ".join(str(message).split()))[:500]
