"""Service environment values built from the deployment's facts.

A value in `[services.<name>.env]` may name parts of the database connection
and of the deployment in double braces, so that apps expecting other variable
names work without wrappers:

    POSTGRES_SERVER = "{{ db.host }}"      POSTGRES_PORT = "{{ db.port }}"
    POSTGRES_USER = "{{ db.user }}"        POSTGRES_PASSWORD = "{{ db.password }}"
    POSTGRES_DB = "{{ db.name }}"          SQLALCHEMY_URL = "{{ db.uri }}"
    PUBLIC_URL = "{{ url }}"               ... also {{ port }}, {{ release }}, {{ commit }},
                                           {{ environment }}, {{ service }}

These are filled in when the process starts (unlike ${VAR}, which is read from
the environment when branchline.toml is loaded).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from psycopg.conninfo import conninfo_to_dict

from branchline.errors import UsageError

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
    rendered = {}
    for key, value in env.items():

        def fill(match: re.Match[str], key: str = key) -> str:
            name = match.group(1)
            if name.startswith("db.") and "db.uri" not in facts:
                raise UsageError(
                    f"services.{service}.env.{key} uses {{{{ {name} }}}}, but this deployment "
                    "has no database (no DATABASE_URL)",
                    hint="Deploy it with a database branch, or drop the placeholder.",
                )
            if name not in facts:
                raise UsageError(
                    f"services.{service}.env.{key}: unknown placeholder {{{{ {name} }}}}",
                    hint="Known: " + ", ".join(f"{{{{ {k} }}}}" for k in sorted(facts)) + ".",
                )
            return facts[name]

        rendered[key] = _PLACEHOLDER.sub(fill, value)
    return rendered
