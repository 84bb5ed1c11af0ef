"""A Kit of in-memory providers and records, for pipeline and operation tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from branchline.config import Config, load_config
from branchline.kit import Kit
from branchline.sandbox import Sandbox
from branchline.secrets import Secrets
from branchline.store import Store
from tests.fakes.compute import MemoryCompute
from tests.fakes.database import MemoryDatabase
from tests.fakes.dns import MemoryDns
from tests.fakes.forge import MemoryForge
from tests.fakes.records import (
    MemoryApprovals,
    MemoryPreviews,
    MemoryRollouts,
    MemorySealedStore,
)

EXAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "examples" / "codex" / "branchline.toml"
KEY = b"k" * 32


class _NoStore:
    """What a memory kit has instead of a state database: anything that reaches for
    it is a use case that skipped the kit's protocols."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a memory kit has no state database (store.{name})")


def memory_kit(config: Config | None = None, *, edge_port: int | None = 8080) -> Kit:
    """The example project's config (unless given) on fakes. The compute fake asks
    the kit for an environment's DeploymentEnv, as the local one does."""
    config = config or load_config(EXAMPLE_CONFIG, env={})
    kit: Kit

    async def current(environment: Any) -> Any:
        return await kit.deployment_env(environment)

    kit = Kit(
        config=config,
        store=cast(Store, _NoStore()),
        database=MemoryDatabase(config.database.parent),
        compute=MemoryCompute(config, current),
        dns=MemoryDns(config.project.zone),
        forge=MemoryForge(),
        secrets=Secrets(MemorySealedStore(), config.project.name, config.secrets, KEY),
        previews=MemoryPreviews(config.project.name),
        rollouts=MemoryRollouts(config.project.name),
        approvals=MemoryApprovals(),
        # Nothing runs code here: the sandbox is off, and says so if asked.
        sandbox=Sandbox.configure(enabled=False, protected=(), path=()),
        edge_port=edge_port,
        _prefix="",
    )
    return kit
