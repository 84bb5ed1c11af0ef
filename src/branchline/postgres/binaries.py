"""Find the Postgres server binaries branchline runs its clusters with.

Order: `BRANCHLINE_PG_BIN`, then `pg_config --bindir` from PATH, then the
binaries shipped in the `pgserver` wheel (`pip install 'branchline[embedded-pg]'`).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from branchline.errors import PostgresNotFoundError

REQUIRED = ("initdb", "pg_ctl", "postgres", "pg_basebackup", "pg_dump", "psql")


@dataclass(frozen=True)
class PgBinaries:
    """A directory holding a complete set of Postgres server binaries."""

    bindir: Path
    source: str  # where it was found: env, pg_config or pgserver

    def path(self, name: str) -> str:
        return str(self.bindir / name)

    @functools.cached_property
    def version(self) -> tuple[int, int]:
        out = subprocess.run(
            [self.path("postgres"), "--version"], capture_output=True, text=True, check=True
        ).stdout
        match = re.search(r"(\d+)(?:\.(\d+))?", out)
        if not match:
            raise PostgresNotFoundError(f"cannot read the Postgres version from {out!r}")
        return int(match.group(1)), int(match.group(2) or 0)


def _missing(bindir: Path) -> list[str]:
    return [name for name in REQUIRED if not os.access(bindir / name, os.X_OK)]


def _from_pg_config() -> Path | None:
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
    if result.returncode != 0 or not result.stdout.strip():
        return None
    return Path(result.stdout.strip())


def _from_pgserver() -> Path | None:
    try:
        import pgserver
    except ImportError:
        return None
    return Path(pgserver.__file__).parent / "pginstall" / "bin"


def find_binaries(env: Mapping[str, str] | None = None) -> PgBinaries:
    """Return the first complete set of Postgres binaries, or explain how to get one."""
    env = os.environ if env is None else env
    explicit = env.get("BRANCHLINE_PG_BIN")
    if explicit:
        bindir = Path(explicit)
        missing = _missing(bindir)
        if missing:
            raise PostgresNotFoundError(
                f"BRANCHLINE_PG_BIN={explicit} lacks {', '.join(missing)}",
                hint="Point BRANCHLINE_PG_BIN at the bin directory of a PostgreSQL "
                "installation (the one that holds initdb and pg_ctl), or unset it.",
            )
        return PgBinaries(bindir, "env")
    tried = []
    for source, finder in (("pg_config", _from_pg_config), ("pgserver", _from_pgserver)):
        candidate = finder()
        if candidate is None:
            continue
        if not _missing(candidate):
            return PgBinaries(candidate, source)
        tried.append(f"{candidate} ({source}) lacks {', '.join(_missing(candidate))}")
    detail = "; ".join(tried) if tried else "no pg_config on PATH and no pgserver package"
    raise PostgresNotFoundError(f"no usable Postgres binaries found: {detail}")
