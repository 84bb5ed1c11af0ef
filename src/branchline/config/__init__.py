"""branchline.toml: its schema, its loader, and errors that say how to fix them.

`load_config()` reads the file with tomllib, replaces `${VAR}` references from the
environment, validates the result with the pydantic models (`schema`) and returns a
`Config`. Every problem becomes one `ConfigError` (exit code 2) naming the file,
the dotted key path (`services.api.run`), the line when it can be found, what is
wrong and how to fix it. pydantic's own messages are never shown.

Interpolation, applied to every string value before validation:

- `${VAR}` is the value of VAR; an undefined VAR is an error;
- `${VAR:-default}` is `default` when VAR is unset or empty;
- `$$` is a literal `$`; any other `$` is left as it is (so `$PORT` reaches a shell).

Commands (`migrate`, `build`, `run`, a test job's `command`) are either a string,
split with `shlex.split` and never run through a shell, or an array of strings.
Interpolation happens before splitting: use the array form to keep a value with
spaces in one argument. Whoever needs pipes, `&&` or `$PORT` expansion writes the
shell explicitly: `run = ["sh", "-c", "exec app --port $PORT"]`. Services read
PORT and DATABASE_URL from their environment at run time; they are not known
when the file is loaded.

Modules, one concern each: `load` (finding and reading the file), `interpolation`,
`schema` with `providers` and `services` (the tables), `fields` (value types such as
durations, commands and names), `durations`, `base` (the base table and secret
masking), `problems` and `locate` (turning a problem into one error with file, line,
key and hint). Import from `branchline.config` itself.
"""

from __future__ import annotations

from branchline.config.base import MASK, is_secret_name
from branchline.config.durations import format_duration, parse_duration
from branchline.config.load import (
    find_config,
    load_config,
    load_config_text,
)
from branchline.config.providers import (
    CloudflareComputeConfig,
    CloudflareDnsConfig,
    ComputeConfig,
    DatabaseConfig,
    DnsConfig,
    ForgeConfig,
    GithubForgeConfig,
    LocalDatabaseConfig,
    NeonConfig,
)
from branchline.config.schema import (
    CLOUD_HEALTH_DEFAULTS,
    CONFIG_FILENAME,
    LOCAL_HEALTH_DEFAULTS,
    Config,
    EdgeConfig,
    HealthConfig,
    PreviewConfig,
    ProjectConfig,
    SecretsConfig,
    SecretScope,
    SecurityConfig,
)
from branchline.config.services import JobConfig, ServiceConfig

__all__ = [
    "CLOUD_HEALTH_DEFAULTS",
    "CONFIG_FILENAME",
    "LOCAL_HEALTH_DEFAULTS",
    "MASK",
    "CloudflareComputeConfig",
    "CloudflareDnsConfig",
    "ComputeConfig",
    "Config",
    "DatabaseConfig",
    "DnsConfig",
    "EdgeConfig",
    "ForgeConfig",
    "GithubForgeConfig",
    "HealthConfig",
    "JobConfig",
    "LocalDatabaseConfig",
    "NeonConfig",
    "PreviewConfig",
    "ProjectConfig",
    "SecretScope",
    "SecretsConfig",
    "SecurityConfig",
    "ServiceConfig",
    "find_config",
    "format_duration",
    "is_secret_name",
    "load_config",
    "load_config_text",
    "parse_duration",
    "referenced_variables",
]
