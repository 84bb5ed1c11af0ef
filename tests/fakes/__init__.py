"""In-memory providers and records for fast tests: no cluster, no process, no store.

Each fake obeys the same protocol contract as the local provider (the suite in
`tests/contract/` runs against both) and does the real bookkeeping behind it:
branches have parents and copy their parent's data, deployments go blue-green and
an unhealthy release is never made live, DNS answers what is recorded, the forge
keeps one sticky comment per key. What a fake cannot know (that a process answers)
is a switch a test sets: `compute.unhealthy`, `compute.trial_verdicts`.

`memory_kit(config)` builds a `Kit` of them, for pipeline and operation tests.
"""

from __future__ import annotations

from tests.fakes.compute import MemoryCompute
from tests.fakes.context import FakeStepContext
from tests.fakes.database import MemoryDatabase
from tests.fakes.dns import MemoryDns
from tests.fakes.forge import MemoryForge
from tests.fakes.kit import memory_kit
from tests.fakes.records import (
    MemoryApprovals,
    MemoryPreviews,
    MemoryRollouts,
    MemorySealedStore,
)

__all__ = [
    "FakeStepContext",
    "MemoryApprovals",
    "MemoryCompute",
    "MemoryDatabase",
    "MemoryDns",
    "MemoryForge",
    "MemoryPreviews",
    "MemoryRollouts",
    "MemorySealedStore",
    "memory_kit",
]
