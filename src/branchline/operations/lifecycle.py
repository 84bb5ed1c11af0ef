"""`branchline down`: stop everything the project started, keep its data.

In this order: serve (edge, DNS, supervisor, workers: first, or its supervisor would
start the services again), every service's process tree, the database branches'
and spares' servers, then the state database. None of it needs the state database:
processes are found by their tree tag and clusters by their directories, so a
second `down` (or one after a crash) finds what is left and stops that. Records
stay as they are: the next `serve` starts the live services again.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from branchline.edge import daemon
from branchline.errors import StoreError
from branchline.kit import Kit
from branchline.providers.compute import Halting
from branchline.providers.database import ClusterControl


@dataclass(frozen=True)
class Down:
    serve: bool  # a background serve (or edge) was stopped
    services: list[str]
    clusters: list[str]
    state_database: str  # stopped, not running, external (left alone)
    state_dir: Path
    bytes_on_disk: int

    @property
    def stopped_anything(self) -> bool:
        return bool(
            self.serve or self.services or self.clusters or self.state_database == "stopped"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "stopped": {"serve": self.serve, "services": self.services,
                        "clusters": self.clusters, "state_database": self.state_database},
            "left_on_disk": {"path": str(self.state_dir), "bytes": self.bytes_on_disk},
        }  # fmt: skip


async def down(kit: Kit) -> Down:
    """Stop everything `kit`'s project started; see the module's note."""
    state_dir = kit.store.location.state_dir
    serve = await asyncio.to_thread(daemon.stop, state_dir)
    services = await kit.compute.halt_all() if isinstance(kit.compute, Halting) else []
    clusters = (
        await kit.database.stop_clusters() if isinstance(kit.database, ClusterControl) else []
    )
    try:
        state = "stopped" if await asyncio.to_thread(kit.store.stop) else "not running"
    except StoreError:
        state = "external"  # BRANCHLINE_DATABASE_URL: not branchline's to stop
    size = await asyncio.to_thread(disk_usage, state_dir)
    return Down(serve, services, clusters, state, state_dir, size)


def disk_usage(path: Path) -> int:
    """Bytes the files under `path` take on the disk (links not followed; unreadable
    parts skipped): allocated, not apparent, so a pool's sparse image counts for what
    its branches fill, not for its size."""
    total = 0
    pending = [path]
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
                else:
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
            except OSError:
                continue
    return total
