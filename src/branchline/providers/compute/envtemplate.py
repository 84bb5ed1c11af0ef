"""Service environment values built from the deployment's facts.

A value in `[services.<name>.env]` may name parts of the database connection
and of the deployment in double braces, so that apps expecting other variable
names work without wrappers:

    POSTGRES_SERVER = "{{ db.host }}"      POSTGRES_PORT = "{{ db.port }}"
    POSTGRES_USER = "{{ db.user }}"        POSTGRES_PASSWORD = "{{ db.password }}"
    POSTGRES_DB = "{{ db.name }}"          SQLALCHEMY_URL = "{{ db.uri }}"
    PUBLIC_URL = "{{ url }}"               ALLOWED_HOSTS = "{{ host }}"
    ... also {{ port }}, {{ release }}, {{ commit }}, {{ environment }}, {{ service }}

`run` may use them too (`["uvicorn", "app:app", "--port", "{{ port }}"]`).

These are filled in when the process starts (unlike ${VAR}, which is read from
the environment when branchline.toml is loaded).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from psycopg.conninfo import conninfo_to_dict

from branchline.errors import UsageError

# Facts that hold the database password: never put on a command line.
SECRET_FACTS = frozenset({"db.uri", "db.password"})
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_.]+)\s*\}\}")


def database_facts(uri: str | None) -> dict[str, str]:
    if not uri:
        return {}
    parts = conninfo_to_dict(uri)
    return {
        "db.uri": uri,
        "db.host": str(parts.get("host") or ""),
        "db.port": str(parts.get("port") or "5432"),
        "db.user": str(parts.get("user") or ""),
        "db.password": str(parts.get("password") or ""),
        "db.name": str(parts.get("dbname") or ""),
    }


def render(env: Mapping[str, str], facts: Mapping[str, str], *, service: str) -> dict[str, str]:
    """Fill the placeholders; an unknown one is a clear error naming the variable."""
    return {key: fill(value, facts, f"services.{service}.env.{key}") for key, value in env.items()}


def render_args(args: Sequence[str], facts: Mapping[str, str], *, service: str) -> list[str]:
    """The `run` command with its placeholders filled (`--port {{ port }}`): one
    argument stays one argument, whatever its value holds (no shell)."""
    for i, arg in enumerate(args):
        for name in _PLACEHOLDER.findall(arg):
            if name in SECRET_FACTS:
                raise UsageError(
                    f"services.{service}.run[{i}] uses {{{{ {name} }}}}: a command line is "
                    "visible to every user of the machine (ps)",
                    hint=f"Pass it in `[services.{service}.env]` instead, e.g. "
                    f'DB_PASSWORD = "{{{{ {name} }}}}", and read the variable.',
                )
    return [fill(arg, facts, f"services.{service}.run[{i}]") for i, arg in enumerate(args)]


def fill(text: str, facts: Mapping[str, str], where: str) -> str:
    """`text` with every `{{ name }}` replaced by its fact; `where` names it in errors."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.startswith("db.") and "db.uri" not in facts:
            raise UsageError(
                f"{where} uses {{{{ {name} }}}}, but this deployment has no database "
                "(no DATABASE_URL)",
                hint="Deploy it with a database branch, or drop the placeholder.",
            )
        if name not in facts:
            raise UsageError(
                f"{where}: unknown placeholder {{{{ {name} }}}}",
                hint="Known: " + ", ".join(f"{{{{ {k} }}}}" for k in sorted(facts)) + ".",
            )
        return facts[name]

    return _PLACEHOLDER.sub(one, text)


def identity(
    *, project: str, service: str, environment: str, release: str, commit: str, host: str
) -> dict[str, str]:
    """What every service is told about itself, whatever runs it (a process, workerd,
    Cloudflare): its release and commit (a health check reports the commit), its
    environment, name, host and project."""
    return {
        "BRANCHLINE_RELEASE": release, "BRANCHLINE_COMMIT": commit,
        "BRANCHLINE_ENVIRONMENT": environment, "BRANCHLINE_SERVICE": service,
        "BRANCHLINE_HOST": host, "BRANCHLINE_PROJECT": project,
    }  # fmt: skip
