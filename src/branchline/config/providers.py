"""The provider tables `[database]`, `[compute]`, `[dns]` and `[forge]`.

Each picks a provider, `local` or a cloud one, and a cloud provider needs a table of
its own settings (`[database.neon]`, `[compute.cloudflare]`, ...).
"""

from __future__ import annotations

import ipaddress
import re
from datetime import timedelta
from typing import Literal, Self

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from branchline.config.base import _Model
from branchline.config.data import MaskValue, check_mask_rules
from branchline.config.fields import Command, Duration, NonEmpty, Repository
from branchline.config.problems import _invalid
from branchline.config.sizes import SizeSpec, parse_size


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
    # Free space only production's WAL may use: a branch, spare or backup that would
    # eat into it is refused. "500MB", "5%"; default 10% of the filesystem, at most 1 GB.
    min_free: str | int | None = None
    # How a branch is copied from its parent: "clone" (copy-on-write clones of its
    # files: constant time, needs XFS with reflink or btrfs, see `db pool create`),
    # "copy" (an online pg_basebackup: time grows with the data), or "auto": clones
    # where the filesystem can (tried, not guessed), else copies.
    branching: Literal["auto", "clone", "copy"] = "auto"
    # Production's WAL archive is kept this long: any moment this far back can be
    # restored (`db restore`), unless max_archive_size drops older moments first. "0s"
    # keeps only what the newest base backup needs.
    wal_retention: Duration = timedelta(days=7)
    # The most production's WAL archive and base backups together may take: "4GB", or a
    # share of the filesystem, "10%". gc drops the oldest backups and their WAL past it.
    # Default 10% of the filesystem: the same share as the reserve, so a busy
    # production's archive never takes more than it, on any size of disk.
    max_archive_size: str | int | None = None

    @field_validator("min_free", "max_archive_size")
    @classmethod
    def _size(cls, value: str | int | None, info: ValidationInfo) -> str | int | None:
        if value is None:
            return value
        try:
            size = parse_size(value)
        except ValueError as exc:
            raise _invalid(
                str(exc), 'write a size such as `{key} = "500MB"` or a share `"10%"`'
            ) from None
        if info.field_name == "max_archive_size" and size.of(1024**4) == 0:
            raise _invalid(
                f"max_archive_size = {value!r} leaves no room for even one base backup, "
                "and a restore starts from one",
                'write a size such as `{key} = "4GB"` or a share `"10%"` (the default)',
            )
        return value

    @property
    def reserve(self) -> SizeSpec | None:
        return None if self.min_free is None else parse_size(self.min_free)

    @property
    def archive_limit(self) -> SizeSpec | None:
        """None: the default, 10% of the filesystem."""
        return None if self.max_archive_size is None else parse_size(self.max_archive_size)


class NeonConfig(_Model):
    """`[database.neon]`: branches through the Neon API (see the README's Neon part)."""

    project_id: NonEmpty
    # Default: the NEON_API_KEY variable. Never write the key itself in the file: use
    # `api_key = "${SOME_VARIABLE}"` when it lives under another name.
    api_key: SecretStr | None = None
    api_url: str = "https://console.neon.tech/api/v2"
    database: NonEmpty = "neondb"  # the database services connect to, in every branch
    role: NonEmpty = "neondb_owner"  # the role they connect as (it owns `database`)
    # Connections through Neon's pooler (PgBouncer, transaction mode), as the reference's
    # Workers use; migrations that need a session (advisory locks, SET) may want false.
    pooled: bool = True
    # How long a create, reset or delete may take, waiting on Neon's operations.
    operation_timeout: Duration = timedelta(minutes=5)


class DatabaseConfig(_Model):
    """`[database]`: where branches come from and how the schema is migrated."""

    provider: Literal["local", "neon"] = "local"
    parent: NonEmpty = "production"  # every ephemeral branch is copied from this one
    migrate: Command  # run at the project root with DATABASE_URL set
    # Past it the migrate command's whole process tree is killed and its step fails.
    migrate_timeout: Duration = timedelta(minutes=10)
    local: LocalDatabaseConfig = Field(default_factory=LocalDatabaseConfig)
    neon: NeonConfig | None = None
    # Applied to every copy of production a test or preview gets (see config.data).
    mask: dict[str, MaskValue] = Field(default_factory=dict)

    @field_validator("mask", mode="before")
    @classmethod
    def _mask_rules(cls, value: object) -> object:
        return check_mask_rules(value) if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _provider_table(self) -> Self:
        _require_table(self.provider, self.neon, "database")
        return self


class CloudflareComputeConfig(_Model):
    """`[compute.cloudflare]`: services as Cloudflare Workers (see the README's
    Cloudflare part). Every service must be `runtime = "worker"`."""

    account_id: NonEmpty
    # The zone the services' Workers routes live in; default: `[dns.cloudflare] zone_id`.
    zone_id: str | None = None
    # Default: the CLOUDFLARE_API_TOKEN variable (`api_token = "${SOME_VARIABLE}"` else).
    api_token: SecretStr | None = None
    api_url: str = "https://api.cloudflare.com/client/v4"
    # A service's script name: `{project}`, `{service}` and `{environment}` filled in
    # (`codex-web-preview-8`, `codex-auth-production`).
    script_name: str = Field("{project}-{service}-{environment}", min_length=1)
    # Where requests for the services' host names go, for health checks: default
    # `https://<host>` (as DNS answers); a proxy or a test's fake edge otherwise.
    edge_url: str | None = None
    call_deadline: Duration = timedelta(minutes=2)

    @field_validator("script_name")
    @classmethod
    def _script_name(cls, value: str) -> str:
        try:
            filled = value.format(project="p", service="s", environment="e")
        except (KeyError, IndexError, ValueError):
            raise _invalid(
                f"`script_name = {value!r}` uses a placeholder other than {{project}}, "
                "{service} and {environment}",
                'write e.g. `script_name = "{project}-{service}-{environment}"`',
            ) from None
        if "{service}" not in value or "{environment}" not in value:
            raise _invalid(
                f"`script_name = {value!r}` must hold {{service}} and {{environment}}",
                "two services or two environments would share one script otherwise",
            )
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", filled):
            raise _invalid(
                f"`script_name = {value!r}` makes names Cloudflare refuses",
                "use lowercase letters, digits, `-` and `_` around the placeholders",
            )
        return value


class ComputeConfig(_Model):
    """`[compute]`: where services run."""

    provider: Literal["local", "cloudflare"] = "local"
    cloudflare: CloudflareComputeConfig | None = None

    @model_validator(mode="after")
    def _provider_table(self) -> Self:
        _require_table(self.provider, self.cloudflare, "compute")
        return self


class CloudflareDnsConfig(_Model):
    """`[dns.cloudflare]`: records through the Cloudflare DNS API (see the README's
    Cloudflare DNS part)."""

    zone_id: NonEmpty  # the id of `[project] zone` in Cloudflare (its Overview page)
    # Default: the CLOUDFLARE_API_TOKEN variable. Never write the token itself in the
    # file: use `api_token = "${SOME_VARIABLE}"` when it lives under another name.
    api_token: SecretStr | None = None
    api_url: str = "https://api.cloudflare.com/client/v4"
    # The DNS servers `verify` asks ("1.1.1.1", "127.0.0.1:5353"); default: the system's.
    resolvers: list[str] = Field(default_factory=list)
    # How long `verify` waits for every resolver to see a record.
    verify_timeout: Duration = timedelta(minutes=2)
    # The longest one API call waits out Cloudflare's rate limits and errors.
    call_deadline: Duration = timedelta(minutes=2)

    @field_validator("resolvers")
    @classmethod
    def _resolvers(cls, value: list[str]) -> list[str]:
        for text in value:
            try:
                resolver_address(text)
            except ValueError:
                raise _invalid(
                    f"{text!r} is not a DNS server address",
                    'write an IP address, with a port if not 53: `resolvers = ["1.1.1.1", '
                    '"127.0.0.1:5353"]`',
                ) from None
        return value


def resolver_address(text: str) -> tuple[str, int]:
    """(host, port) of a DNS server written `1.1.1.1`, `127.0.0.1:5353`,
    `2606:4700::1111` or `[::1]:5353`; ValueError for anything else."""
    host, port = text.strip(), 53
    if host.startswith("["):
        host, _, rest = host[1:].partition("]")
        if rest:
            port = int(rest.removeprefix(":"))
    elif host.count(":") == 1:
        host, _, number = host.partition(":")
        port = int(number)
    ipaddress.ip_address(host)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range")
    return host, port


class DnsConfig(_Model):
    """`[dns]`: who serves the zone's records."""

    provider: Literal["local", "cloudflare"] = "local"
    cloudflare: CloudflareDnsConfig | None = None

    @model_validator(mode="after")
    def _provider_table(self) -> Self:
        _require_table(self.provider, self.cloudflare, "dns")
        return self


class GithubForgeConfig(_Model):
    """`[forge.github]`: pull requests, comments, commit statuses, deployments and
    issues on GitHub, as a token or as a GitHub App (see the README's GitHub part)."""

    # "owner/name"; default: `[project] github_repository`.
    repository: Repository | None = None
    # Default: the GITHUB_TOKEN variable. Never write a token itself in the file: use
    # `token = "${SOME_VARIABLE}"` when it lives under another name.
    token: SecretStr | None = None
    # A GitHub App instead of a token: its id and private key (PEM text, e.g.
    # "${GITHUB_APP_PRIVATE_KEY}"); the installation is looked up unless given.
    app_id: int | None = Field(None, gt=0)
    private_key: SecretStr | None = None
    installation_id: int | None = Field(None, gt=0)
    webhook_secret: SecretStr | None = None
    api_url: str = "https://api.github.com"
    # The longest one call waits out GitHub's rate limits before it fails.
    rate_limit_wait: Duration = timedelta(minutes=10)
    # GitHub asks for a second between writes (its secondary rate limits punish bursts).
    write_interval: Duration = timedelta(seconds=1)

    @model_validator(mode="after")
    def _app_whole(self) -> Self:
        if (self.app_id is None) != (self.private_key is None):
            raise _invalid(
                "a GitHub App needs both `app_id` and `private_key`",
                'set both (`private_key = "${GITHUB_APP_PRIVATE_KEY}"`), or neither to use '
                "a token (GITHUB_TOKEN)",
                loc=("app_id" if self.app_id is None else "private_key",),
            )
        if self.app_id is not None and self.token is not None:
            raise _invalid(
                "`token` and a GitHub App (`app_id`) are two ways to sign in: choose one",
                "remove `token` to act as the App, or `app_id` and `private_key` to use it",
                loc=("token",),
            )
        return self


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
