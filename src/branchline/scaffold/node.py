"""Node projects: package.json's scripts (start, build, test, migrate), the package
manager its lock file names, and Prisma's migrations."""

from __future__ import annotations

import json
from typing import Any

from branchline.scaffold.model import Findings, in_dir

# (lock file, package manager, install command), the first present wins.
_MANAGERS = (
    ("pnpm-lock.yaml", "pnpm", "pnpm install --frozen-lockfile"),
    ("yarn.lock", "yarn", "yarn install --frozen-lockfile"),
    ("package-lock.json", "npm", "npm ci"),
    ("npm-shrinkwrap.json", "npm", "npm ci"),
)
_DATABASE_PACKAGES = {
    "pg",
    "postgres",
    "@prisma/client",
    "prisma",
    "knex",
    "sequelize",
    "typeorm",
    "drizzle-orm",
    "kysely",
    "pg-promise",
    "@mikro-orm/core",
}
_NO_TEST = "no test specified"  # npm init's placeholder test script


def _package(found: Findings) -> dict[str, Any] | None:
    try:
        data = json.loads((found.directory / "package.json").read_text(errors="replace"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def detect(found: Findings) -> None:
    package = _package(found)
    if package is None:
        return
    scripts = package.get("scripts")
    scripts = scripts if isinstance(scripts, dict) else {}
    source = found.file("package.json")
    workspace = "workspaces" in package or (found.directory / "pnpm-workspace.yaml").is_file()
    if workspace and "start" not in scripts:
        found.note("package.json", "a workspace root without a start script: not a service", source)
        return
    found.mark("package.json")
    lock, manager, install = next(
        ((lock, m, i) for lock, m, i in _MANAGERS if (found.directory / lock).is_file()),
        ("", "npm", "npm install"),
    )
    told = found.file(lock) if lock else source
    if found.build is None and "build" in scripts:
        both = ["sh", "-c", f"{install} && {manager} run build"]
        found.build = found.step("build", both, f"{install}, then the build script", told)
    elif found.build is None:
        found.build = found.step("build", install.split(), "installs the dependencies", told)
    if found.run is None:
        _run(found, scripts, manager, source)
    test = scripts.get("test")
    if isinstance(test, str) and _NO_TEST not in test:
        dependencies = {
            **_dict(package.get("dependencies")),
            **_dict(package.get("devDependencies")),
        }
        uses_db = bool(dependencies.keys() & _DATABASE_PACKAGES)
        step = found.step("tests", in_dir(found.path, [manager, "test"]), "the test script", source)
        found.tests.append((step, uses_db, False))
    if found.migrate is None and isinstance(scripts.get("migrate"), str):
        script = in_dir(found.path, [manager, "run", "migrate"])
        found.migrate = found.step("migrate", script, "the migrate script", source)
    elif found.migrate is None and (found.directory / "prisma" / "schema.prisma").is_file():
        prisma = in_dir(found.path, ["npx", "prisma", "migrate", "deploy"])
        schema = found.file("prisma/schema.prisma")
        found.migrate = found.step("migrate", prisma, "Prisma's migrations", schema)


def _run(found: Findings, scripts: dict[str, Any], manager: str, source: str) -> None:
    start = scripts.get("start")
    if isinstance(start, str):
        found.serves = True
        found.run = found.step("run", [manager, "start"], f"the start script ({start})", source)
        if not _reads_port(found, start):
            text = "make the start script listen on the PORT variable"
            found.note("run", text, source, guessed=True)
    elif (found.directory / "server.js").is_file():
        found.serves = True
        found.run = found.step("run", ["node", "server.js"], "server.js", found.file("server.js"))
    else:
        text = "no start script: add one that serves on PORT"
        found.run = found.step("run", [manager, "start"], text, source, guessed=True)


def _reads_port(found: Findings, start: str) -> bool:
    """Whether the start script, or the script file it runs, mentions PORT
    (`next start` reads it by itself)."""
    if "PORT" in start or "next start" in start:
        return True
    inside = found.directory.resolve()
    for word in start.split():
        path = (found.directory / word).resolve()
        if word.endswith((".js", ".mjs", ".cjs", ".ts")) and path.is_relative_to(inside):
            try:
                if "PORT" in path.read_text(errors="replace"):
                    return True
            except OSError:
                continue
    return False


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
