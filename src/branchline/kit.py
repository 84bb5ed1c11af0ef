"""Everything the use cases and pipelines work with: the config, the store, one
instance of each provider (typed by its protocol, never by a concrete class), the
secrets, and the records pipelines keep (previews, rollouts).

It is also the one home of what a deployed service is told: `deployment_env`
builds an environment's DeploymentEnv (its database, the siblings' URLs, its
secrets) for every path that starts a service: the pipelines, `deploy`,
`restart`, `rollback`, `restore` and the supervisor's restarts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from branchline import naming, ports
from branchline.config import (
    CONFIG_FILENAME,
    Config,
    load_config_text,
)
from branchline.environment import Environment
from branchline.errors import ConfigError
from branchline.providers import registry
from branchline.providers.compute import ComputeProvider, DeploymentEnv, Reconfigurable
from branchline.providers.database import DatabaseProvider
from branchline.providers.dns import DnsProvider
from branchline.providers.forge import ForgeProvider, PullRequest
from branchline.sandbox import Sandbox
from branchline.secrets import Secrets
from branchline.store import Store
from branchline.store.approvals import ApprovalLedger, Approvals
from branchline.store.previews import PreviewLedger, Previews
from branchline.store.rollouts import RolloutLedger, Rollouts

CONFIGS_KEPT = 256  # commits' configs kept in memory


@dataclass
class Kit:
    config: Config
    store: Store
    database: DatabaseProvider
    compute: ComputeProvider
    dns: DnsProvider
    forge: ForgeProvider
    secrets: Secrets
    previews: PreviewLedger
    rollouts: RolloutLedger
    approvals: ApprovalLedger
    sandbox: Sandbox
    edge_port: int | None = None
    # Where this machine reaches the edge and DNS (loopback unless `[edge] bind` is
    # one address of another interface).
    edge_host: str = "127.0.0.1"
    _prefix: str | None = field(default=None, repr=False)
    # Each commit's config, read once (a commit never changes).
    _at_commit: dict[str, Config] = field(default_factory=dict, repr=False)
    _trusted_prs: dict[int, bool] = field(default_factory=dict, repr=False)

    @classmethod
    def build(
        cls,
        config: Config,
        store: Store,
        *,
        edge_port: int | None = None,
        dns_port: int | None = None,
        edge_bind: str | None = None,
    ) -> Kit:
        """The providers the config names; the edge and DNS listen on `edge_bind`
        (default `[edge] bind`). Construction does no I/O."""
        edge_host = ports.reachable(config.edge.bind if edge_bind is None else edge_bind)
        address = (edge_host, dns_port) if dns_port else None
        sandbox = Sandbox.for_project(config, store.location.state_dir)
        kit: Kit

        async def current_env(environment: Environment) -> DeploymentEnv:
            return await kit.deployment_env(environment)

        kit = cls(
            config=config,
            store=store,
            database=registry.database_provider(config, store),
            compute=registry.compute_provider(
                config, store, edge_port=edge_port, environment=current_env, sandbox=sandbox
            ),
            dns=registry.dns_provider(config, store, server_address=address),
            forge=registry.forge_provider(config, store),
            secrets=Secrets.for_project(store, config),
            previews=Previews(store, config.project.name),
            rollouts=Rollouts(store, config.project.name),
            approvals=Approvals(store, config.project.name),
            sandbox=sandbox,
            edge_port=edge_port,
            edge_host=edge_host,
        )
        return kit

    @property
    def project(self) -> str:
        return self.config.project.name

    @property
    def repo(self) -> Path:
        return self.config.root

    @property
    def prefix(self) -> str:
        """Where the project sits inside its git repository ("" at the top, "app/" below)."""
        if self._prefix is None:
            self._prefix = _prefix_in_repo(self.config.root)
        return self._prefix

    def trusts(self, pull: PullRequest) -> bool:
        """Whether code of `pull` may have secrets and a preview without an approval:
        any pull request but a fork's, unless `[forge] untrusted = "trusted"`."""
        return not pull.fork or self.config.forge.untrusted == "trusted"

    async def may_preview(self, pull: PullRequest, sha: str) -> bool:
        """A fork's pull request is previewed only once a writer approved this very
        commit (`require-approval`), or never (`no-secrets`)."""
        if self.trusts(pull):
            return True
        if self.config.forge.untrusted == "no-secrets":
            return False
        return await self.approvals.approved(pull.number, sha)

    async def config_at(self, sha: str | None, *, trusted: bool = True) -> Config:
        """The config a run of commit `sha` works with: the served config adopting
        the commit's services, tests and checks (`Config.adopt`), so a branch can
        change them. Code nobody trusts yet (an unapproved fork's) and a commit with
        no branchline.toml get the served config as it is."""
        if sha is None or not trusted:
            return self.config
        cached = self._at_commit.get(sha)
        if cached is None:
            cached = await asyncio.to_thread(self._read_config_at, sha)
            if len(self._at_commit) >= CONFIGS_KEPT:  # a long-running serve: the oldest go
                del self._at_commit[next(iter(self._at_commit))]
            self._at_commit[sha] = cached
        return cached

    async def for_run(self, sha: str | None, pr: int | None) -> Kit:
        """This kit with the config of the run's commit (see `config_at`)."""
        trusted = True
        if pr is not None:
            trusted = self._trusted_prs.get(pr, False)
            if pr not in self._trusted_prs:
                pull = await self.forge.pull_request(pr)
                trusted = pull is not None and self.trusts(pull)
                if pull is not None:  # where a pull request comes from never changes
                    self._trusted_prs[pr] = trusted
        return self.with_config(await self.config_at(sha, trusted=trusted))

    def with_config(self, config: Config) -> Kit:
        """This kit working with `config` (its compute too, where it can)."""
        if config is self.config:
            return self
        compute = self.compute
        if isinstance(compute, Reconfigurable):
            compute = compute.with_config(config)
        return dataclasses.replace(self, config=config, compute=compute)

    def reload(self, newer: Config) -> list[str]:
        """Work with `newer` from now on (a running serve's branchline.toml changed),
        but for the tables serve was started with: returns those that changed, to
        say they wait for a restart."""
        pending = self.config.changed_at_start(newer)
        self.config = self.config.reloaded(newer)
        self._at_commit.clear()  # commits' configs adopt the served one
        if isinstance(self.compute, Reconfigurable):
            self.compute = self.compute.with_config(self.config)
        self.secrets.config = self.config.secrets
        return pending

    def _read_config_at(self, sha: str) -> Config:
        name = f"{self.prefix}{CONFIG_FILENAME}"
        shown = subprocess.run(
            ["git", "-C", str(self.repo), "show", f"{sha}:{name}"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if shown.returncode != 0:
            return self.config  # the commit predates branchline.toml (or lost it)
        # Only the variables the served config refers to: serve's own environment
        # (its tokens, say) is not a branch's to read.
        env = {k: v for k in self.config.variables if (v := os.environ.get(k)) is not None}
        try:
            committed = load_config_text(
                shown.stdout, self.config.path, env,
                is_directory=lambda path: self._is_directory_at(sha, path),
            )  # fmt: skip
        except ConfigError as exc:
            raise ConfigError(
                exc.detail,
                file=f"{name} at commit {sha[:12]}",
                key=exc.key,
                line=exc.line,
                hint=exc.hint or "fix branchline.toml on the branch and push again",
            ) from None
        return self.config.adopt(committed)

    def _is_directory_at(self, sha: str, path: str) -> bool:
        inside = f"{self.prefix}{'' if path == '.' else path}"  # "." is the project's root
        listed = subprocess.run(
            ["git", "-C", str(self.repo), "cat-file", "-t", f"{sha}:{inside}"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        return listed.stdout.strip() == "tree"

    def in_checkout(self, checkout: Path) -> Path:
        """The project's directory inside a checkout of its repository."""
        return checkout / self.prefix if self.prefix else checkout

    def hosts(self, environment: Environment) -> dict[str, str]:
        """Each service's host name in `environment`."""
        zone = self.config.project.zone
        return {
            name: environment.host_name(spec.subdomain, zone)
            for name, spec in self.config.services.items()
        }

    def url(self, host: str) -> str:
        """Where users reach `host`: Cloudflare's edge (https) for Workers on
        Cloudflare, else branchline's edge."""
        if self.config.compute.provider == "cloudflare":
            return f"https://{host}/"
        port = f":{self.edge_port}" if self.edge_port and self.edge_port != 80 else ""
        return f"http://{host}{port}/"

    def run_url(self, run_id: int) -> str | None:
        """Where a person sees run `run_id`: serve's page at `[server] public_url`; in
        GitHub Actions, the workflow run; else serve's page on this machine (None
        without an HTTP server)."""
        public = self.config.server.public_url
        if public:
            return f"{public.rstrip('/')}/runs/{run_id}"
        env = os.environ
        if env.get("GITHUB_ACTIONS") == "true" and env.get("GITHUB_RUN_ID"):
            server = env.get("GITHUB_SERVER_URL", "https://github.com")
            return (
                f"{server}/{env.get('GITHUB_REPOSITORY', '')}/actions/runs/{env['GITHUB_RUN_ID']}"
            )
        port = self.config.edge.api_port
        host = ports.url_host(ports.reachable(self.config.server.bind))
        return f"http://{host}:{port}/runs/{run_id}" if port else None

    def environment_url(self, environment: Environment) -> str | None:
        """The address that stands for `environment` on the code host: its `web`
        service's, else its first service's."""
        hosts = self.hosts(environment)
        host = hosts.get("web") or next(iter(hosts.values()), None)
        return self.url(host) if host else None

    async def database_branch(self, environment: Environment) -> str | None:
        """The branch `environment`'s services use: `pr-<n>` for a preview; for
        production its branch, or the one `branchline restore` pointed it at; none
        for `local`."""
        if environment.is_production:
            chosen = await self.rollouts.branch_of(environment.name)
            return chosen or self.config.database.parent
        return environment.branch(self.config.database.parent)

    async def deployment_env(
        self, environment: Environment, *, database_url: str | None = None
    ) -> DeploymentEnv:
        """What every service of `environment` is given, built here and nowhere else:

        - DATABASE_URL of the environment's branch (or `database_url`: a pre-flight
          runs the live release against a migrated copy), when it has one;
        - each service's URL through the edge and host name (AUTH_URL + AUTH_HOST,
          API_URL + API_HOST, ...), so services reach each other as users do;
        - the environment's secrets (a preview's own over the shared `preview` ones).
        """
        vars: dict[str, str] = {}
        if database_url is None:
            branch = await self.database_branch(environment)
            if branch is not None and await self.database.get_branch(branch) is not None:
                database_url = await self.database.connection_uri(branch)
        if database_url is not None:
            vars["DATABASE_URL"] = database_url
        base = f"http://{ports.url_host(self.edge_host)}:{self.edge_port}" if self.edge_port else ""
        cloud = self.config.compute.cloudflare if self.config.compute.provider != "local" else None
        for name, host in self.hosts(environment).items():
            key = naming.sql_identifier(name).upper()
            # On Cloudflare a sibling is its host, over https (or the `edge_url` that
            # stands for Cloudflare's edge, the host in the Host header).
            if cloud is not None:
                vars[f"{key}_URL"] = cloud.edge_url or f"https://{host}"
            else:
                vars[f"{key}_URL"] = base
            vars[f"{key}_HOST"] = host
        secrets = await self.secrets.get_all(environment.name)
        return DeploymentEnv(vars=vars, secrets=secrets)

    async def aclose(self) -> None:
        await asyncio.gather(
            self.database.aclose(), self.compute.aclose(), self.dns.aclose(), self.forge.aclose()
        )


def _prefix_in_repo(root: Path) -> str:
    """`app/` when the project's root is `app/` of its git work tree (where `.git`
    is); "" at the top or outside any repository."""
    resolved = root.resolve()
    for top in (resolved, *resolved.parents):
        if (top / ".git").exists():
            relative = resolved.relative_to(top).as_posix()
            return "" if relative == "." else f"{relative}/"
    return ""
