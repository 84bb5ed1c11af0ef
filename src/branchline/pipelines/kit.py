"""Everything a pipeline's actions work with: the config, the store and one
instance of each provider, built once per worker."""

from __future__ import annotations

import asyncio
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from branchline import naming
from branchline.config import Config
from branchline.providers.compute.local import LocalComputeProvider
from branchline.providers.database import DatabaseProvider
from branchline.providers.dns.local import LocalDnsProvider
from branchline.providers.forge.local import LocalForge
from branchline.providers.registry import (
    compute_provider,
    database_provider,
    dns_provider,
    forge_provider,
)
from branchline.secrets import Secrets
from branchline.store import Store
from branchline.store import rollouts as rollout_rows


@dataclass
class Kit:
    config: Config
    store: Store
    database: DatabaseProvider
    compute: LocalComputeProvider
    dns: LocalDnsProvider
    forge: LocalForge
    secrets: Secrets
    edge_port: int | None = None
    # Where the project sits inside its git repository ("" at the top, "app/" below).
    prefix: str = field(default="")

    @classmethod
    def build(
        cls,
        config: Config,
        store: Store,
        *,
        edge_port: int | None = None,
        dns_port: int | None = None,
    ) -> Kit:
        address = ("127.0.0.1", dns_port) if dns_port else None
        return cls(
            config=config,
            store=store,
            database=database_provider(config, store),
            compute=compute_provider(config, store, edge_port=edge_port),
            dns=dns_provider(config, store, server_address=address),
            forge=forge_provider(config, store),
            secrets=Secrets.for_project(store, config),
            edge_port=edge_port,
            prefix=_prefix_in_repo(config.root),
        )

    @property
    def project(self) -> str:
        return self.config.project.name

    @property
    def repo(self) -> Path:
        return self.config.root

    def in_checkout(self, checkout: Path) -> Path:
        """The project's directory inside a checkout of its repository."""
        return checkout / self.prefix if self.prefix else checkout

    def hosts(self, environment: str) -> dict[str, str]:
        """Each service's host name in `environment`."""
        zone = self.config.project.zone
        return {
            name: naming.host_name(spec.subdomain, environment, zone)
            for name, spec in self.config.services.items()
        }

    def url(self, host: str) -> str:
        port = f":{self.edge_port}" if self.edge_port and self.edge_port != 80 else ""
        return f"http://{host}{port}/"

    async def database_branch(self, environment: str) -> str:
        """The branch `environment`'s services use: `pr-<n>` for a preview; for
        production its branch, or the one `branchline restore` pointed it at."""
        if environment.startswith("preview-"):
            return naming.branch_for_pr(int(environment.removeprefix("preview-")))
        async with self.store.connect() as conn:
            chosen = await rollout_rows.branch_of(conn, self.project, environment)
        return chosen or self.config.database.parent

    async def aclose(self) -> None:
        await asyncio.gather(self.database.aclose(), self.compute.aclose())


def _prefix_in_repo(root: Path) -> str:
    done = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--show-prefix"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return done.stdout.strip() if done.returncode == 0 else ""
