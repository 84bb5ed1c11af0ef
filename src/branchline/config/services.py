"""`[services.<name>]` and `[tests.<job>]`: the services a change deploys, and the jobs
of the testing pipeline that run against it.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import Literal, Self

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from branchline.config.base import _Model
from branchline.config.data import DataChoice, check_seed
from branchline.config.fields import Command, Duration, EnvName, HealthPath, Label, NonEmpty
from branchline.config.problems import _invalid

# Set by branchline for each service process; a value in the file would be wrong.
_RESERVED_ENV = frozenset({"PORT", "DATABASE_URL"})


# Where a Worker service's config is, as wrangler looks for it: in its `path`.
WRANGLER_CONFIGS = ("wrangler.toml", "wrangler.jsonc", "wrangler.json")


class DepsConfig(_Model):
    """`[services.<name>.deps]`: the service's dependencies, installed once per
    content of its lock files and shared by every release with the same ones.

    `install` runs in the release's service directory with `$DEPS` set to an empty
    directory outside the release (create the virtualenv there: `python -m venv
    "$DEPS"`); the release then holds `link` (default `.venv`) pointing at it, and
    the service's PATH starts with `<link>/bin`. A rollback across a change of the
    lock files runs the dependencies its release was built with."""

    lock: tuple[NonEmpty, ...] = Field(min_length=1)  # relative to the service's path
    install: Command
    link: NonEmpty = ".venv"

    @field_validator("lock", "link")
    @classmethod
    def _relative(cls, value: tuple[str, ...] | str) -> tuple[str, ...] | str:
        for item in (value,) if isinstance(value, str) else value:
            if PurePosixPath(item).is_absolute() or ".." in PurePosixPath(item).parts:
                raise _invalid(
                    f"`{item}` is not inside the service's directory",
                    'write it relative to the service\'s `path`, e.g. "requirements.txt"',
                )
        return value


class ServiceConfig(_Model):
    """`[services.<name>]`: one deployable unit (the reference's "worker").

    `build` and `run` execute in the service's directory (`path`); `run` reads PORT
    and DATABASE_URL from its environment. `paths` are globs relative to the
    project root that mark the service as changed (default `<path>/**`; empty means
    always changed). `subdomain` defaults to the name and `order` to the position in
    the file; deploys go by (order, name).

    `runtime = "worker"`: the service is a Cloudflare Worker (its wrangler.toml or
    wrangler.jsonc in `path`). Its release is the bundle `wrangler deploy --dry-run
    --outdir` makes (after `build`, if any: `npm ci`, say), and it runs in workerd with
    the environment's variables and secrets as bindings; it has no `run`.
    """

    path: str
    runtime: Literal["process", "worker"] = "process"
    build: Command | None = None
    run: Command | None = None  # required by the process runtime
    health_path: HealthPath = "/health"
    subdomain: Label
    order: int = 0
    paths: tuple[NonEmpty, ...] = ()
    env: dict[EnvName, str] = Field(default_factory=dict)
    # Run once per deploy of a release, before it is started and switched to (a
    # release phase: `manage.py check --deploy`, cache warm-up), with the service's
    # variables and secrets; a failure stops the deploy and the old release serves.
    release: Command | None = None
    # More of the repository in the release, beside `path` (root lock files, shared
    # packages): paths relative to branchline.toml, kept where they are.
    include: tuple[NonEmpty, ...] = ()
    deps: DepsConfig | None = None

    _name: str = PrivateAttr(default="")

    @property
    def name(self) -> str:
        """The service's name: the key of its `[services.<name>]` table."""
        return self._name

    @field_validator("path")
    @classmethod
    def _path_is_directory(cls, value: str, info: ValidationInfo) -> str:
        if PurePosixPath(value).is_absolute():
            raise _invalid(
                f"path `{value}` is absolute",
                "write it relative to the directory of branchline.toml, "
                'e.g. `path = "services/api"`',
            )
        path = _normalize_path(value)
        context = info.context or {}
        root = context.get("root")
        is_directory = context.get("is_directory")
        if is_directory is not None:  # a commit's config: its own tree decides
            if not is_directory(path):
                raise _invalid(
                    f"path `{path}` is not a directory at this commit",
                    "commit the service's directory, or set `path` to the service's "
                    "directory relative to branchline.toml",
                )
            return path
        if root is not None and not (Path(root) / path).is_dir():
            state = "is not a directory" if (Path(root) / path).exists() else "does not exist"
            raise _invalid(
                f"path `{path}` {state} in {root}",
                f"create the directory {Path(root) / path}, or set `path` to the service's "
                "directory relative to branchline.toml",
            )
        return path

    @field_validator("include")
    @classmethod
    def _included_inside_the_repository(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for index, item in enumerate(value):
            if PurePosixPath(item).is_absolute() or ".." in PurePosixPath(item).parts:
                raise _invalid(
                    f"`{item}` is outside the project",
                    'write it relative to the directory of branchline.toml, e.g. "uv.lock"',
                    loc=(index,),
                )
        return tuple(_normalize_path(item) for item in value)

    @field_validator("env")
    @classmethod
    def _no_reserved_env(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if name in _RESERVED_ENV:
                raise _invalid(
                    f"`{name}` is set by branchline when the service starts",
                    f"remove `{name}` from `env`; the service reads it from its environment",
                    loc=(name,),
                )
        return value

    @model_validator(mode="after")
    def _worker_has_no_run(self) -> Self:
        # (A process service without `run` is refused where its name is known: Config.)
        if self.runtime == "worker" and self.run is not None:
            raise _invalid(
                "a worker service has no `run`: workerd serves its bundle",
                "remove `run`; `build` may prepare the bundle (`npm ci`), wrangler makes it",
                loc=("run",),
            )
        return self


def _normalize_path(value: str) -> str:
    """`./services/api/` -> `services/api`; the project root is `.`."""
    return PurePosixPath(value).as_posix()


def _default_glob(path: str) -> str:
    path = _normalize_path(path)
    return "**" if path == "." else f"{path}/**"


class JobConfig(_Model):
    """`[tests.<job>]`: one job of the testing pipeline, run at the project root.

    `paths` are globs that decide whether the job runs (empty: always). With
    `database = true` the job gets DATABASE_URL of the run's ephemeral branch; with
    `own_branch = true` a branch of its own (the reference's separate E2E branch).
    """

    command: Command
    paths: tuple[NonEmpty, ...] = ()
    database: bool = False
    # The job's database role may create databases (Django's test runner makes its
    # own `test_<name>` database).
    createdb: bool = False
    own_branch: bool = False
    timeout: Duration = timedelta(minutes=15)
    service: str | None = None  # the service this job tests, if any
    # One job per service (`unit-api`, `unit-auth`, ...), each run only when that
    # service's `paths` (or the job's own) changed; `{service}` and `{service_path}`
    # in `command` become the service's name and directory.
    per_service: bool = False
    # What its branch holds ("copy", "schema", "empty", "seed"; see config.data), and
    # a command run on it after the migrations.
    data: DataChoice = "copy"
    seed: Command | None = None

    _name: str = PrivateAttr(default="")

    @property
    def name(self) -> str:
        """The job's name: the key of its `[tests.<job>]` table."""
        return self._name

    @model_validator(mode="after")
    def _own_branch_needs_database(self) -> Self:
        if self.own_branch and not self.database:
            raise _invalid(
                "`own_branch = true` needs `database = true`",
                "a job gets its own database branch only when it uses a database: "
                "add `database = true`, or remove `own_branch`",
                loc=("own_branch",),
            )
        if (self.data != "copy" or self.seed is not None) and not self.database:
            raise _invalid(
                f"`{'data' if self.data != 'copy' else 'seed'}` needs `database = true`",
                "a job's branch and its data exist only when it uses a database: add "
                "`database = true`",
                loc=("data" if self.data != "copy" else "seed",),
            )
        check_seed(self.data, self.seed, where="the job's table")
        return self
