"""`Config`, the whole of branchline.toml, with the checks that span its tables.

Besides `Config` this holds the small tables `[project]`, `[preview]`, `[production]`,
`[health]` and `[secrets]` (the provider tables are in `providers`, services and test
jobs in `services`), and the checks that need more than one table: defaults that depend
on other keys, the names of services and jobs, unique sub-domains, the services test
jobs refer to, and which service variables are secret.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator

from branchline.config.base import _assign_masks, _collect_secrets, _Model, is_secret_name
from branchline.config.data import DataChoice, check_seed
from branchline.config.fields import (
    BindAddress,
    Command,
    Domain,
    Duration,
    NonEmpty,
    Repository,
    SecretName,
    Slug,
    _slug_problem,
)
from branchline.config.interpolation import _Secrets
from branchline.config.limits import LimitsConfig, RetentionConfig
from branchline.config.problems import Loc, _did_you_mean, _invalid
from branchline.config.providers import ComputeConfig, DatabaseConfig, DnsConfig, ForgeConfig
from branchline.config.services import JobConfig, ServiceConfig, _default_glob

CONFIG_FILENAME = "branchline.toml"
# The tables a run takes from its own commit's branchline.toml (see Config.adopt).
BY_COMMIT = ("services", "tests", "health", "production")
# The tables a running `serve` built its providers and sandbox from: a change to
# them takes effect when serve restarts (the rest is taken at once).
AT_START = (
    "project", "database", "compute", "dns", "forge", "security", "edge", "server", "limits",
    "retention",
)  # fmt: skip


class ProjectConfig(_Model):
    """`[project]`: the project's name and the domain its environments live under."""

    name: Slug
    zone: Domain  # e.g. "revelations.studio"; locally "codex.localhost"
    production_branch: NonEmpty = "main"
    github_repository: Repository | None = None  # "owner/name", for the github forge


class PreviewConfig(_Model):
    """`[preview]`: how long previews live, how many may run at once, what their
    database holds, and the hooks of their life (like review apps' `postdeploy` and
    `pr-predestroy`): `seed` runs once after the first migration of a preview's
    branch, `predestroy` before the preview is torn down. Both are code of the pull
    request, run as the migrations are (sandbox, DATABASE_URL), within `hook_timeout`."""

    ttl: Duration = timedelta(hours=72)
    max_live: int = Field(default=10, ge=1)
    data: DataChoice = "copy"
    seed: Command | None = None
    predestroy: Command | None = None
    hook_timeout: Duration = timedelta(minutes=10)

    @model_validator(mode="after")
    def _seed_needs_command(self) -> Self:
        check_seed(self.data, self.seed, where="[preview]")
        return self


class ProductionConfig(_Model):
    """`[production]`: how careful the production rollout is."""

    # A migration the live release cannot run against makes a code-only rollback
    # impossible; the rollout refuses it unless this says it is intended.
    allow_breaking_migrations: bool = False


# The reference waits for TLS certificates and edge propagation on the cloud.
CLOUD_HEALTH_DEFAULTS: dict[str, object] = {
    "first_wait": "30s",
    "later_wait": "15s",
    "retries": 10,
    "backoff_base": "5s",
    "service_timeout": "5m",
}
# Locally a service listens on loopback behind our own proxy: there is nothing to
# wait for. A small Python service needs ~75 ms to listen, so the first check is
# often refused; a 100 ms backoff base (measured: rollback 0.7 s with 500 ms)
# keeps "PR opened -> preview healthy" and rollbacks fast.
LOCAL_HEALTH_DEFAULTS: dict[str, object] = {
    "first_wait": "0s",
    "later_wait": "0s",
    "retries": 10,
    "backoff_base": "100ms",
    "service_timeout": "5m",
}


class HealthConfig(_Model):
    """`[health]`: checks after each deploy. Defaults depend on `[compute] provider`."""

    first_wait: Duration = timedelta(0)  # before checking the first service deployed
    later_wait: Duration = timedelta(0)  # before checking each later service
    retries: int = Field(default=10, ge=0)
    backoff_base: Duration = timedelta(milliseconds=500)  # waits are base * 2**attempt
    service_timeout: Duration = timedelta(minutes=5)  # at most this long per service

    @field_validator("service_timeout")
    @classmethod
    def _positive_timeout(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise _invalid("must be longer than zero", 'write for example `{key} = "5m"`')
        return value

    def wait_before(self, position: int) -> timedelta:
        """The wait before checking the service deployed at `position` (0 = first)."""
        return self.first_wait if position == 0 else self.later_wait

    def backoff_schedule(self) -> tuple[timedelta, ...]:
        """The waits between retries: base, 2*base, 4*base, ... (5s, 10s, 20s on the cloud)."""
        return tuple(self.backoff_base * 2**attempt for attempt in range(self.retries))


class SecretScope(_Model):
    """`[secrets.<environment>]`: the secret names an environment needs."""

    names: tuple[SecretName, ...] = ()
    generate: tuple[SecretName, ...] = ()  # made up (32 random bytes, base64) when missing

    @model_validator(mode="after")
    def _generate_subset_of_names(self) -> Self:
        seen: set[str] = set()
        for index, name in enumerate(self.names):
            if name in seen:
                raise _invalid(
                    f"`{name}` is listed twice", "list each name once", loc=("names", index)
                )
            seen.add(name)
        for index, name in enumerate(self.generate):
            if name not in seen:
                raise _invalid(
                    f"`{name}` is in `generate` but not in `names`",
                    f'add "{name}" to `names`, or remove it from `generate`',
                    loc=("generate", index),
                )
        return self


class SecretsConfig(_Model):
    """`[secrets]`: names per environment; values live in branchline's encrypted store."""

    production: SecretScope = Field(default_factory=SecretScope)
    preview: SecretScope = Field(default_factory=SecretScope)
    test: SecretScope = Field(default_factory=SecretScope)

    @model_validator(mode="after")
    def _production_is_never_generated(self) -> Self:
        if self.production.generate:
            name = self.production.generate[0]
            raise _invalid(
                "production secrets cannot be generated",
                f"remove `generate` from `[secrets.production]` and set the value with "
                f"`branchline secret set {name} --env production`",
                loc=("production", "generate"),
            )
        return self


Port = Annotated[int, Field(ge=0, le=65535)]


class EdgeConfig(_Model):
    """`[edge]`: the project's local addresses. The URLs a preview's comment shows
    carry the edge's port, so a taken port is an error, never a silent move; 0 asks
    for any free port (throw-away projects, tests)."""

    port: Port = 8080  # the edge proxy (HTTP, by host name)
    dns_port: Port = 8053  # the zone's DNS server (UDP and TCP)
    api_port: Port = 8081  # serve's HTTP server (webhooks, API, dashboard); 0: none
    # The address the edge proxy and the DNS server listen on: loopback unless a
    # team lets reviewers reach previews directly ("0.0.0.0": every interface).
    bind: BindAddress = "127.0.0.1"


class SecurityConfig(_Model):
    """`[security]`: how code from branches and pull requests (tests, builds,
    migrations, services) runs: in a bubblewrap sandbox unless `sandbox = "off"`."""

    sandbox: Literal["bubblewrap", "off"] = "bubblewrap"
    # PATH of boxed code (its directories are shown read-only); default: the PATH
    # branchline runs with, minus anything inside branchline's state.
    path: tuple[NonEmpty, ...] | None = None
    # More read-only directories boxed code may see (tools installed off PATH).
    expose: tuple[NonEmpty, ...] = ()


class ServerConfig(_Model):
    """`[server]`: serve's HTTP server (webhooks, API, dashboard, /metrics)."""

    # When set, /metrics answers only `Authorization: Bearer <this>` (a reference such
    # as "${BRANCHLINE_METRICS_TOKEN}", like every secret here).
    metrics_token: SecretStr | None = None
    # The address people reach serve's pages at ("https://ci.example.com"): commit
    # statuses and deployments on the code host link to `<public_url>/runs/<id>`.
    public_url: str | None = Field(None, pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$")
    # The address the HTTP server listens on: loopback unless GitHub must reach the
    # webhooks directly (behind a TLS-terminating proxy: serve speaks plain HTTP).
    bind: BindAddress = "127.0.0.1"

    @field_validator("metrics_token")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError(
                "metrics_token must be at least 16 characters (make one with "
                "`openssl rand -hex 32`)"
            )
        return value


class Config(_Model):
    """A loaded, validated branchline.toml. Build it with `load_config()`."""

    project: ProjectConfig
    database: DatabaseConfig
    compute: ComputeConfig = Field(default_factory=ComputeConfig)
    dns: DnsConfig = Field(default_factory=DnsConfig)
    forge: ForgeConfig = Field(default_factory=ForgeConfig)
    services: dict[str, ServiceConfig] = Field(default_factory=dict)
    tests: dict[str, JobConfig] = Field(default_factory=dict)
    preview: PreviewConfig = Field(default_factory=PreviewConfig)
    production: ProductionConfig = Field(default_factory=ProductionConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    secrets: SecretsConfig = Field(default_factory=SecretsConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    edge: EdgeConfig = Field(default_factory=EdgeConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)

    _path: Path = PrivateAttr(default_factory=lambda: Path(CONFIG_FILENAME))
    # Values substituted from secret-looking variables (they may be inside a command).
    _secret_values: frozenset[str] = PrivateAttr(default_factory=frozenset)
    # sha256 of the text it was loaded from (a running serve notices a change).
    _digest: str | None = PrivateAttr(default=None)
    # The environment variables that text refers to (`${VAR}`).
    _variables: frozenset[str] = PrivateAttr(default_factory=frozenset)

    @property
    def path(self) -> Path:
        """The absolute path of branchline.toml."""
        return self._path

    @property
    def variables(self) -> frozenset[str]:
        """The environment variables the file refers to: a commit's config may use
        these and no others (a branch must not read serve's environment)."""
        return self._variables

    @property
    def digest(self) -> str | None:
        """sha256 of the text this config was loaded from."""
        return self._digest

    @property
    def root(self) -> Path:
        """The directory holding branchline.toml; service paths are relative to it."""
        return self._path.parent

    def service_dir(self, service: ServiceConfig | str) -> Path:
        """The absolute directory of a service."""
        config = self.services[service] if isinstance(service, str) else service
        return self.root / config.path

    def services_in_deploy_order(self) -> list[ServiceConfig]:
        """Services sorted by (order, name): the order production deploys them in."""
        return sorted(self.services.values(), key=lambda service: (service.order, service.name))

    def secret_values(self) -> set[str]:
        """Every secret value in the config (to mask in logs); never print these."""
        found = set(self._secret_values)
        _collect_secrets(self, (), self._masked, found)
        return {value for value in found if value}

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: Any) -> Any:
        # Defaults that depend on other keys are filled in before validation, so that
        # the validated model holds only concrete values.
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if isinstance(data.get("health", {}), dict):
            data["health"] = {**_health_defaults(data.get("compute")), **data.get("health", {})}
        for section in ("services", "tests"):
            tables = data.get(section)
            if isinstance(tables, dict):
                _check_table_names(section, tables)
        services = data.get("services")
        if isinstance(services, dict):
            data["services"] = {
                name: _service_defaults(name, table, position)
                for position, (name, table) in enumerate(services.items(), start=1)
            }
        return data

    @model_validator(mode="after")
    def _cross_checks(self) -> Self:
        for name, service in self.services.items():
            service._name = name
        for name, job in self.tests.items():
            job._name = name
        _check_unique_subdomains(self.services)
        _check_run_commands(self.services)
        _check_cloud_runtimes(self.compute.provider, self.services)
        _check_job_services(self.tests, self.services)
        _check_shared_branch_data(self.tests)
        _assign_masks(self, self._masked | _secret_env_paths(self.services))
        return self

    def adopt(self, committed: Config) -> Config:
        """This (served) config with what a commit may change: its services, test
        jobs, health checks and production rules. The rest stays as served: the
        project, the providers, the secrets, the sandbox and the preview limits; a
        branch must not point branchline elsewhere nor loosen its guards."""
        adopted = self.model_copy(update={name: getattr(committed, name) for name in BY_COMMIT})
        adopted._secret_values = self._secret_values | committed._secret_values
        return adopted

    def changed_at_start(self, newer: Config) -> list[str]:
        """The tables of `AT_START` that `newer` changes."""
        return [name for name in AT_START if getattr(self, name) != getattr(newer, name)]

    def reloaded(self, newer: Config) -> Config:
        """`newer`, but with this config's `AT_START` tables (see `changed_at_start`)."""
        merged = newer.model_copy(update={name: getattr(self, name) for name in AT_START})
        merged._secret_values = newer._secret_values | self._secret_values
        return merged

    def _attach(
        self, path: Path, secrets: _Secrets, digest: str | None = None,
        variables: frozenset[str] = frozenset(),
    ) -> None:  # fmt: skip
        self._path = path
        self._digest = digest
        self._variables = variables
        self._secret_values = frozenset(secrets.values)
        _assign_masks(self, self._masked | frozenset(secrets.paths))


def _health_defaults(compute: object) -> dict[str, object]:
    provider = compute.get("provider", "local") if isinstance(compute, dict) else "local"
    return dict(LOCAL_HEALTH_DEFAULTS if provider == "local" else CLOUD_HEALTH_DEFAULTS)


def _check_table_names(section: str, tables: dict[str, Any]) -> None:
    for name in tables:
        problem = _slug_problem(name)
        if problem:
            kind = "service" if section == "services" else "test job"
            raise _invalid(
                f"{kind} name {problem}",
                f"rename `[{section}.{name}]`, e.g. `[{section}.{_suggest_slug(name)}]`",
                loc=(section, name),
            )


def _suggest_slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:40].rstrip("-")
    if not slug or not slug[0].isalpha():
        slug = f"s-{slug}".rstrip("-")
    return slug


def _service_defaults(name: str, table: object, position: int) -> object:
    if not isinstance(table, dict):
        return table
    filled = {"subdomain": name, "order": position, **table}
    if "paths" not in table and isinstance(table.get("path"), str):
        filled["paths"] = [_default_glob(table["path"])]
    return filled


def _check_unique_subdomains(services: Mapping[str, ServiceConfig]) -> None:
    owners: dict[str, str] = {}
    for name, service in services.items():
        first = owners.setdefault(service.subdomain, name)
        if first != name:
            raise _invalid(
                f"sub-domain `{service.subdomain}` is used by both `{first}` and `{name}`",
                f'each service needs its own host name: set `subdomain = "..."` under '
                f"`[services.{name}]` to one no other service uses",
                loc=("services", name, "subdomain"),
            )


def _check_run_commands(services: Mapping[str, ServiceConfig]) -> None:
    for name, service in services.items():
        if service.runtime == "process" and service.run is None:
            raise _invalid(
                "missing required key `run` (the command that serves the service on $PORT)",
                f'add `run = ["python", "app.py"]` (say) under `[services.{name}]`, or '
                '`runtime = "worker"` for a Cloudflare Worker',
                loc=("services", name, "run"),
            )


def _check_cloud_runtimes(provider: str, services: Mapping[str, ServiceConfig]) -> None:
    """Cloudflare runs Workers only: a process service has nowhere to run there."""
    if provider != "cloudflare":
        return
    for name, service in services.items():
        if service.runtime != "worker":
            raise _invalid(
                f'`[compute] provider = "cloudflare"` runs Workers only, and service '
                f"`{name}` is a process",
                'make it a Worker (`runtime = "worker"`, its wrangler.toml in its path), '
                'or keep `[compute] provider = "local"`',
                loc=("services", name, "runtime"),
            )


def _check_job_services(jobs: Mapping[str, JobConfig], services: Mapping[str, Any]) -> None:
    for name, job in jobs.items():
        if job.per_service and job.service is not None:
            raise _invalid(
                "`per_service = true` and `service` contradict each other",
                "keep `per_service` to test every service in its own job, or `service` "
                "for a job about one service",
                loc=("tests", name, "per_service"),
            )
        if job.service is not None and job.service not in services:
            raise _invalid(
                f"unknown service `{job.service}`",
                _did_you_mean(job.service, list(services), noun="services"),
                loc=("tests", name, "service"),
            )


def _check_shared_branch_data(jobs: Mapping[str, JobConfig]) -> None:
    """Jobs on one branch (the run's, or the own-branch one) must agree on its data."""
    for own in (False, True):
        sharing = [(n, j) for n, j in jobs.items() if j.database and j.own_branch is own]
        if not sharing:
            continue
        first, spec = sharing[0]
        for name, job in sharing[1:]:
            if (job.data, job.seed) == (spec.data, spec.seed):
                continue
            which = "a branch of their own" if own else "the run's branch"
            differ = f"{spec.data!r} and {job.data!r}" if job.data != spec.data else "seeds"
            fix = (
                "jobs with `own_branch` share one branch"
                if own
                else "or move one to a branch of its own with `own_branch = true`"
            )
            raise _invalid(
                f"`{first}` and `{name}` share {which} but want different data ({differ})",
                f"give them the same `data` and `seed`; {fix}",
                loc=("tests", name, "data"),
            )


def _secret_env_paths(services: Mapping[str, ServiceConfig]) -> frozenset[Loc]:
    return frozenset(
        ("services", name, "env", key)
        for name, service in services.items()
        for key in service.env
        if is_secret_name(key)
    )
