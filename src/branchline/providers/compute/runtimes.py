"""What differs between the kinds of service (`[services.<name>] runtime`): what
builds a release, and what serves it. The one seam local compute knows runtimes
through; everything else (the sandbox, supervision, blue-green, health checks, logs)
is the same for every runtime.

- `process` (the default): the service's `build`, then its `run` command on $PORT.
- `worker`: a Cloudflare Worker. Its `build` (if any: `npm ci`, say), then `wrangler
  deploy --dry-run --outdir` writes the bundle into the release (offline: no account,
  no upload); workerd serves it, every variable and secret of the deployment a
  `fromEnvironment` binding (see `workerd.py`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from branchline.config import ServiceConfig
from branchline.config.services import WRANGLER_CONFIGS
from branchline.errors import BranchlineError
from branchline.providers.compute import envtemplate, workerd, workertools

BUNDLE = "bundle"  # in a worker's release directory, beside `tree`: what wrangler wrote


@dataclass(frozen=True)
class BuildStep:
    """One command of a build, run boxed in the service's directory of the release."""

    argv: list[str]
    writable: tuple[Path, ...] = ()  # besides the release's files
    readable: tuple[Path, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Launch:
    """What starts a release: its command, its environment, and what its box shows
    read-only besides the release's files."""

    argv: list[str]
    env: dict[str, str] = field(repr=False)
    readable: tuple[Path, ...] = ()


class Runtime(Protocol):
    def build_steps(
        self, spec: ServiceConfig, service_dir: Path, location: Path
    ) -> list[BuildStep]:
        """The commands that build a release at `location` (its files in
        `location/tree`, the service's in `service_dir`), after its dependencies."""
        ...

    def launch(
        self,
        spec: ServiceConfig,
        location: Path,
        *,
        facts: Mapping[str, str],
        env: dict[str, str],
        own: Sequence[str],
        port: int,
        workdir: Path,
    ) -> Launch:
        """How to serve the release at `location` on `port`: `env` is the process's
        environment, `own` the names in it that are the service's own variables and
        secrets (not the PATH and such), `facts` what `{{ placeholders }}` stand for;
        `workdir` a directory of this start's own for files it needs."""
        ...


class ProcessRuntime:
    """The service's own commands: `build`, then `run`."""

    def build_steps(
        self, spec: ServiceConfig, service_dir: Path, location: Path
    ) -> list[BuildStep]:
        return [BuildStep(list(spec.build))] if spec.build else []

    def launch(
        self, spec: ServiceConfig, location: Path, *, facts: Mapping[str, str],
        env: dict[str, str], own: Sequence[str], port: int, workdir: Path,
    ) -> Launch:  # fmt: skip
        assert spec.run is not None  # the config refuses a process service without one
        return Launch(envtemplate.render_args(spec.run, facts, service=spec.name), env)


class WorkerRuntime:
    """A Cloudflare Worker: bundled by wrangler offline, served by workerd."""

    def __init__(self, tools: workertools.WorkersTools | None = None) -> None:
        self._tools = tools

    @property
    def tools(self) -> workertools.WorkersTools:
        if self._tools is None:
            self._tools = workertools.find()
        return self._tools

    def build_steps(
        self, spec: ServiceConfig, service_dir: Path, location: Path
    ) -> list[BuildStep]:
        wrangler_config(service_dir)  # missing: said now, not by wrangler
        bundle = location / BUNDLE
        bundle.mkdir(exist_ok=True)
        wrangle = self.tools.wrangler_command("deploy", "--dry-run", "--outdir", str(bundle))
        steps = [BuildStep(list(spec.build))] if spec.build else []
        return [*steps, BuildStep(
            wrangle, writable=(bundle,), readable=(self.tools.root,),
            # Offline and quiet: no usage metrics sent, no prompt.
            env={"WRANGLER_SEND_METRICS": "false", "CI": "1"},
        )]  # fmt: skip

    def launch(
        self, spec: ServiceConfig, location: Path, *, facts: Mapping[str, str],
        env: dict[str, str], own: Sequence[str], port: int, workdir: Path,
    ) -> Launch:  # fmt: skip
        tree = location / "tree"
        service_dir = tree / spec.path
        # The build (untrusted) could write the tree: read nothing through a link out of it.
        if not service_dir.resolve().is_relative_to(tree.resolve()):
            raise BranchlineError(
                f"the release's {spec.path}/ leads out of the release (a symbolic link)",
                hint="The service's build must not replace its directories with links.",
            )
        declared = wrangler_config(service_dir)
        bundle = workerd.bundle_from_dir(location / BUNDLE, declared)
        # The Worker's own `[vars]` as plain text (they are in its repository anyway);
        # every variable and secret of the environment from workerd's environment, none
        # written down: the config names them. The environment's win over a same name.
        plain = {k: v for k, v in workerd.vars_of(declared).items() if k not in own}
        config = workerd.write_config(
            bundle, port=port, bindings_from_env=sorted(own), vars=plain, directory=workdir
        )
        return Launch(workerd.serve_command(config, self.tools), env,
                      readable=(self.tools.root, workdir))  # fmt: skip


def wrangler_config(service_dir: Path) -> Path:
    """The service's wrangler config, or an error saying where it was looked for."""
    for name in WRANGLER_CONFIGS:
        if (service_dir / name).is_file():
            return service_dir / name
    raise BranchlineError(
        f"a worker service needs its wrangler config in its directory; {service_dir.name}/ "
        f"has none of {', '.join(WRANGLER_CONFIGS)}",
        hint="Commit the Worker's wrangler.toml (or wrangler.jsonc) beside its code, or "
        "fix the service's `path` in branchline.toml.",
    )


_PROCESS = ProcessRuntime()


@functools.cache
def _worker() -> WorkerRuntime:
    return WorkerRuntime()


def runtime_of(spec: ServiceConfig) -> Runtime:
    """The runtime `spec` names (the worker one finds its tools on first use)."""
    return _worker() if spec.runtime == "worker" else _PROCESS
