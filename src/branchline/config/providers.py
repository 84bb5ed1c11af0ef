"""The provider tables `[database]`, `[compute]`, `[dns]` and `[forge]`.

Each picks a provider, `local` or a cloud one, and a cloud provider needs a table of
its own settings (`[database.neon]`, `[compute.cloudflare]`, ...).
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator

from branchline.config.base import _Model
from branchline.config.fields import Command, NonEmpty
from branchline.config.problems import _invalid


def _require_table(provider: str, table: object, section: str) -> None:
    """A cloud provider needs its own table of settings (`[database.neon]`, ...)."""
    if provider != "local" and table is None:
        raise _invalid(
            f'`provider = "{provider}"` needs a `[{section}.{provider}]` table',
            f'add a `[{section}.{provider}]` table, or write `provider = "local"`',
            loc=(provider,),
        )


class LocalDatabaseConfig(_Model):
    """`[database.local]`: one Postgres cluster per branch on this machine."""

    pg_bin: str | None = None  # Postgres bin directory; default: PATH, then the pgserver wheel
    # The database inside every branch that services connect to (Neon's "neondb").
    database: str = Field("app", pattern=r"^[a-z_][a-z0-9_]{0,62}$")


class NeonConfig(_Model):
    """`[database.neon]`: branches through the Neon API."""

    project_id: NonEmpty
    api_key: SecretStr
    api_url: str = "https://console.neon.tech/api/v2"
    database: str = "neondb"
    role: str = "neondb_owner"


class DatabaseConfig(_Model):
    """`[database]`: where branches come from and how the schema is migrated."""

    provider: Literal["local", "neon"] = "local"
    parent: NonEmpty = "production"  # every ephemeral branch is copied from this one
    migrate: Command  # run at the project root with DATABASE_URL set
    local: LocalDatabaseConfig = Field(default_factory=LocalDatabaseConfig)
    neon: NeonConfig | None = None

    @model_validator(mode="after")
    def _provider_table(self) -> Self:
        _require_table(self.provider, self.neon, "database")
        return self


class CloudflareComputeConfig(_Model):
    """`[compute.cloudflare]`: services as Cloudflare Workers."""

    account_id: NonEmpty
    api_token: SecretStr


class ComputeConfig(_Model):
    """`[compute]`: where services run."""

    provider: Literal["local", "cloudflare"] = "local"
    cloudflare: CloudflareComputeConfig | None = None

    @model_validator(mode="after")
    def _provider_table(self) -> Self:
        _require_table(self.provider, self.cloudflare, "compute")
        return self


class CloudflareDnsConfig(_Model):
    """`[dns.cloudflare]`: records through the Cloudflare DNS API."""

    zone_id: NonEmpty
    api_token: SecretStr


class DnsConfig(_Model):
    """`[dns]`: who serves the zone's records."""

    provider: Literal["local", "cloudflare"] = "local"
    cloudflare: CloudflareDnsConfig | None = None

    @model_validator(mode="after")
    def _provider_table(self) -> Self:
        _require_table(self.provider, self.cloudflare, "dns")
        return self


class GithubForgeConfig(_Model):
    """`[forge.github]`: pull requests, comments and issues on GitHub."""

    token: SecretStr
    webhook_secret: SecretStr | None = None
    api_url: str = "https://api.github.com"


class ForgeConfig(_Model):
    """`[forge]`: the code host (pull requests, comments, statuses, issues)."""

    provider: Literal["local", "github"] = "local"
    github: GithubForgeConfig | None = None
    # Pull requests from forks: tested without secrets and previewed only once a
    # writer approves ("require-approval"), never previewed ("no-secrets"), or
    # treated like any other ("trusted").
    untrusted: Literal["no-secrets", "require-approval", "trusted"] = "require-approval"

    @model_validator(mode="after")
    def _provider_table(self) -> Self:
        _require_table(self.provider, self.github, "forge")
        return self
