"""Choosing providers by name, once, at the edge: the rest of branchline is
handed the instances and never picks one."""

from __future__ import annotations

from branchline.config import Config
from branchline.errors import UsageError
from branchline.postgres import find_binaries
from branchline.providers.compute.local import LocalComputeProvider
from branchline.providers.database import DatabaseProvider
from branchline.providers.database.local import LocalDatabaseProvider
from branchline.providers.dns.local import LocalDnsProvider
from branchline.providers.forge.local import LocalForge
from branchline.secrets import Secrets
from branchline.store import Store


def database_provider(config: Config, store: Store) -> DatabaseProvider:
    provider = config.database.provider
    if provider == "local":
        pg_bin = config.database.local.pg_bin
        return LocalDatabaseProvider(
            project=config.project.name,
            state_dir=store.location.project_dir(config.project.name),
            store=store,
            root=config.database.parent,
            database=config.database.local.database,
            binaries=find_binaries({"BRANCHLINE_PG_BIN": pg_bin}) if pg_bin else None,
        )
    raise UsageError(
        f"the {provider!r} database provider is not available in this version of branchline",
        hint='Set `provider = "local"` under [database] in branchline.toml.',
    )


def compute_provider(
    config: Config, store: Store, *, edge_port: int | None = None
) -> LocalComputeProvider:
    if config.compute.provider == "local":
        # Restarts and rollbacks start processes again: with the environment's secrets.
        secrets = Secrets.for_project(store, config)
        return LocalComputeProvider(
            config=config,
            store=store,
            state_dir=store.location.project_dir(config.project.name),
            edge_port=edge_port,
            secrets=secrets.get_all,
        )
    raise UsageError(
        f"the {config.compute.provider!r} compute provider is not available in this version",
        hint='Set `provider = "local"` under [compute] in branchline.toml.',
    )


def dns_provider(
    config: Config, store: Store, *, server_address: tuple[str, int] | None = None
) -> LocalDnsProvider:
    if config.dns.provider == "local":
        return LocalDnsProvider(
            config.project.name, config.project.zone, store, server_address=server_address
        )
    raise UsageError(
        f"the {config.dns.provider!r} DNS provider is not available in this version",
        hint='Set `provider = "local"` under [dns] in branchline.toml.',
    )


def forge_provider(config: Config, store: Store) -> LocalForge:
    if config.forge.provider == "local":
        return LocalForge(
            project=config.project.name,
            store=store,
            repo=config.root,
            production_branch=config.project.production_branch,
        )
    raise UsageError(
        f"the {config.forge.provider!r} code host is not available in this version",
        hint='Set `provider = "local"` under [forge] in branchline.toml.',
    )
