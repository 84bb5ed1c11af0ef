"""Choosing providers by name, once, at the edge: the rest of branchline is
handed the instances, typed by their protocols, and never picks one."""

from __future__ import annotations

from branchline.config import Config
from branchline.errors import UsageError
from branchline.postgres import find_binaries
from branchline.providers.compute import ComputeProvider, EnvironmentSource
from branchline.providers.database import DatabaseProvider
from branchline.providers.dns import DnsProvider
from branchline.providers.forge import ForgeProvider
from branchline.sandbox import Sandbox
from branchline.store import Store


def database_provider(config: Config, store: Store) -> DatabaseProvider:
    provider = config.database.provider
    if provider == "local":
        from branchline.providers.database.local import LocalDatabaseProvider

        pg_bin = config.database.local.pg_bin
        return LocalDatabaseProvider(
            project=config.project.name,
            state_dir=store.location.project_dir(config.project.name),
            store=store,
            root=config.database.parent,
            database=config.database.local.database,
            binaries=find_binaries({"BRANCHLINE_PG_BIN": pg_bin}) if pg_bin else None,
            min_free=config.database.local.reserve,
        )
    raise _unavailable("database", provider)


def compute_provider(
    config: Config,
    store: Store,
    *,
    edge_port: int | None = None,
    environment: EnvironmentSource | None = None,
    sandbox: Sandbox | None = None,
) -> ComputeProvider:
    """`environment` gives a service's current DeploymentEnv when compute starts one
    by itself (a restart, a rollback); without it such a start gets no variables.
    Builds and services run in `sandbox` (the project's, by default)."""
    if config.compute.provider == "local":
        from branchline.providers.compute.local import LocalComputeProvider

        return LocalComputeProvider(
            config=config,
            store=store,
            state_dir=store.location.project_dir(config.project.name),
            edge_port=edge_port,
            environment=environment,
            sandbox=sandbox or Sandbox.for_project(config, store.location.state_dir),
        )
    raise _unavailable("compute", config.compute.provider)


def dns_provider(
    config: Config, store: Store, *, server_address: tuple[str, int] | None = None
) -> DnsProvider:
    if config.dns.provider == "local":
        from branchline.providers.dns.local import LocalDnsProvider

        return LocalDnsProvider(
            config.project.name, config.project.zone, store, server_address=server_address
        )
    raise _unavailable("dns", config.dns.provider)


def forge_provider(config: Config, store: Store) -> ForgeProvider:
    if config.forge.provider == "local":
        from branchline.providers.forge.local import LocalForge

        return LocalForge(
            project=config.project.name,
            store=store,
            repo=config.root,
            production_branch=config.project.production_branch,
        )
    raise _unavailable("forge", config.forge.provider)


def _unavailable(section: str, provider: str) -> UsageError:
    what = {"database": "database provider", "compute": "compute provider",
            "dns": "DNS provider", "forge": "code host"}[section]  # fmt: skip
    return UsageError(
        f"the {provider!r} {what} is not available in this version of branchline",
        hint=f'Set `provider = "local"` under [{section}] in branchline.toml.',
    )
