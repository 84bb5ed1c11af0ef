"""Choosing providers by name, once, at the edge: the rest of branchline is
handed the instances, typed by their protocols, and never picks one."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from branchline.config import Config
from branchline.errors import UsageError
from branchline.postgres import find_binaries
from branchline.providers.compute import ComputeProvider, EnvironmentSource
from branchline.providers.database import DatabaseProvider
from branchline.providers.dns import DnsProvider
from branchline.providers.forge import ForgeProvider
from branchline.sandbox import Sandbox
from branchline.store import Store

if TYPE_CHECKING:
    from branchline.providers.compute.cloudflare_api import CloudflareWorkersClient
    from branchline.providers.database.neon_api import NeonClient
    from branchline.providers.dns.cloudflare_api import CloudflareDnsClient
    from branchline.providers.forge.github_api import GitHubClient


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
            branching=config.database.local.branching,
            wal_retention=config.database.local.wal_retention,
            max_archive_size=config.database.local.archive_limit,
        )
    if provider == "neon" and config.database.neon is not None:
        from branchline.providers.database.neon import NeonDatabaseProvider

        neon = config.database.neon
        return NeonDatabaseProvider(
            project=config.project.name, store=store, client=_neon_client(config),
            root=config.database.parent, database=neon.database, role=neon.role,
            pooled=neon.pooled, operation_timeout=neon.operation_timeout.total_seconds(),
        )  # fmt: skip
    raise _unavailable("database", provider)


def _neon_client(config: Config) -> NeonClient:
    from branchline.providers.database.neon_api import API_KEY_VARIABLE, NeonClient

    neon = config.database.neon
    assert neon is not None, "the config requires [database.neon] with provider neon"
    key = neon.api_key.get_secret_value() if neon.api_key else os.environ.get(API_KEY_VARIABLE)
    return NeonClient(
        base_url=neon.api_url, api_key=key, project_id=neon.project_id,
        deadline=max(120.0, neon.operation_timeout.total_seconds()),
    )  # fmt: skip


async def verify_database(config: Config) -> str | None:
    """Ask a cloud database provider whether the config's settings work (no state
    database needed): what it found, or None for the local provider; raises what is
    wrong (a missing or refused key, an unknown project or root branch)."""
    if config.database.provider != "neon":
        return None
    from branchline.providers.database.neon import verify

    client = _neon_client(config)
    try:
        return await verify(client, config.database.parent)
    finally:
        await client.aclose()


async def verify_forge(config: Config) -> str | None:
    """Ask GitHub whether `[forge.github]` works (None for the local code host)."""
    if config.forge.provider != "github":
        return None
    from branchline.providers.forge.github import GitHubForge

    return await GitHubForge(github_client(config)).verify()


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
    from branchline.providers.compute.local import LocalComputeProvider

    local = LocalComputeProvider(
        config=config,
        store=store,
        state_dir=store.location.project_dir(config.project.name),
        edge_port=edge_port,
        environment=environment,
        sandbox=sandbox or Sandbox.for_project(config, store.location.state_dir),
    )
    if config.compute.provider == "local":
        return local
    if config.compute.provider == "cloudflare" and config.compute.cloudflare is not None:
        from branchline.providers.compute.cloudflare import CloudflareComputeProvider

        cf = config.compute.cloudflare
        # Releases are built (and kept) here, as local compute builds them.
        return CloudflareComputeProvider(
            config=config, store=store, client=workers_client(config), builder=local,
            script_name=cf.script_name, edge_url=cf.edge_url, environment=environment,
        )  # fmt: skip
    raise _unavailable("compute", config.compute.provider)


def workers_client(config: Config) -> CloudflareWorkersClient:
    """The Workers API client `[compute.cloudflare]` describes (its zone for routes:
    its own `zone_id`, else `[dns.cloudflare] zone_id`)."""
    from branchline.providers.cloudflare_client import TOKEN_VARIABLE
    from branchline.providers.compute.cloudflare_api import CloudflareWorkersClient

    cf = config.compute.cloudflare
    assert cf is not None, "the config requires [compute.cloudflare] with provider cloudflare"
    token = cf.api_token.get_secret_value() if cf.api_token else os.environ.get(TOKEN_VARIABLE)
    zone = cf.zone_id or (config.dns.cloudflare.zone_id if config.dns.cloudflare else None)
    return CloudflareWorkersClient(
        account_id=cf.account_id, zone_id=zone, api_token=token, base_url=cf.api_url,
        deadline=cf.call_deadline.total_seconds(),
    )  # fmt: skip


def dns_provider(
    config: Config, store: Store, *, server_address: tuple[str, int] | None = None
) -> DnsProvider:
    if config.dns.provider == "local":
        from branchline.providers.dns.local import LocalDnsProvider

        return LocalDnsProvider(
            config.project.name, config.project.zone, store, server_address=server_address
        )
    if config.dns.provider == "cloudflare" and config.dns.cloudflare is not None:
        from branchline.providers.dns.cloudflare import CloudflareDnsProvider, Resolver

        cloudflare = config.dns.cloudflare
        return CloudflareDnsProvider(
            config.project.name, config.project.zone, store, cloudflare_dns_client(config),
            resolvers=[Resolver.parse(text) for text in cloudflare.resolvers],
            verify_timeout=cloudflare.verify_timeout.total_seconds(),
        )  # fmt: skip
    raise _unavailable("dns", config.dns.provider)


def cloudflare_dns_client(config: Config) -> CloudflareDnsClient:
    """The client of `[dns.cloudflare]`'s zone (the token: its `api_token`, else
    CLOUDFLARE_API_TOKEN; no I/O)."""
    from branchline.providers.dns.cloudflare_api import TOKEN_VARIABLE, CloudflareDnsClient

    cloudflare = config.dns.cloudflare
    assert cloudflare is not None, "the config requires [dns.cloudflare] with provider cloudflare"
    token = cloudflare.api_token.get_secret_value() if cloudflare.api_token else None
    return CloudflareDnsClient(
        zone_id=cloudflare.zone_id, api_token=token or os.environ.get(TOKEN_VARIABLE),
        base_url=cloudflare.api_url, deadline=cloudflare.call_deadline.total_seconds(),
    )  # fmt: skip


async def verify_compute(config: Config) -> str | None:
    """Ask Cloudflare whether `[compute.cloudflare]` works: the token reaches the
    account's Workers scripts and the zone's Workers routes (None for local compute)."""
    if config.compute.provider != "cloudflare":
        return None
    client = workers_client(config)
    try:
        scripts = await client.list_scripts()
        routes = await client.routes() if client.zone_id else None
    finally:
        await client.aclose()
    account = client.account_id
    found = f"Cloudflare Workers: the token reaches account {account} ({len(scripts)} scripts)"
    if routes is None:
        return found + "; no zone for the routes: set `[compute.cloudflare] zone_id`"
    return found + f" and the Workers routes of zone {client.zone_id} ({len(routes)} routes)"


async def verify_dns(config: Config) -> str | None:
    """Ask Cloudflare whether `[dns.cloudflare]` works: the token is accepted and
    reaches the zone's records (None for the local DNS)."""
    if config.dns.provider != "cloudflare":
        return None
    from branchline.providers.dns.cloudflare import verify

    client = cloudflare_dns_client(config)
    try:
        return await verify(client, config.project.zone)
    finally:
        await client.aclose()


def forge_provider(config: Config, store: Store) -> ForgeProvider:
    if config.forge.provider == "local":
        from branchline.providers.forge.local import LocalForge

        return LocalForge(
            project=config.project.name,
            store=store,
            repo=config.root,
            production_branch=config.project.production_branch,
        )
    if config.forge.provider == "github":
        from branchline.providers.forge.github import GitHubForge

        return GitHubForge(github_client(config))
    raise _unavailable("forge", config.forge.provider)


def github_client(config: Config) -> GitHubClient:
    """The GitHub client `[forge.github]` describes (token or App; no I/O)."""
    from branchline.providers.forge.github_api import TOKEN_VARIABLE, Credentials, GitHubClient

    github = config.forge.github
    if github is None:
        raise UsageError(
            "the GitHub code host needs a `[forge.github]` table",
            hint='Add `[forge.github]` with `repository = "owner/name"` to branchline.toml.',
        )
    repository = github.repository or config.project.github_repository
    if not repository:
        raise UsageError(
            "which GitHub repository? Neither `[forge.github] repository` nor "
            "`[project] github_repository` is set",
            hint='Add `repository = "owner/name"` under [forge.github] in branchline.toml.',
        )
    token = github.token.get_secret_value() if github.token else None
    if github.app_id is None and not token:
        token = os.environ.get(TOKEN_VARIABLE) or None
    credentials = Credentials(
        token=token, app_id=github.app_id,
        private_key=github.private_key.get_secret_value() if github.private_key else None,
        installation_id=github.installation_id,
    )  # fmt: skip
    return GitHubClient(
        repository=repository, credentials=credentials, api_url=github.api_url,
        rate_limit_wait=github.rate_limit_wait.total_seconds(),
        write_interval=github.write_interval.total_seconds(),
    )  # fmt: skip


def _unavailable(section: str, provider: str) -> UsageError:
    what = {"database": "database provider", "compute": "compute provider",
            "dns": "DNS provider", "forge": "code host"}[section]  # fmt: skip
    return UsageError(
        f"the {provider!r} {what} is not available in this version of branchline",
        hint=f'Set `provider = "local"` under [{section}] in branchline.toml.',
    )
