"""`branchline init`: a commented starter branchline.toml, with services
detected from the files that usually mark one (package.json, pyproject.toml,
requirements.txt, go.mod, Cargo.toml, wrangler.toml, Procfile)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

# Folders that monorepos conventionally keep their deployables in.
SERVICE_PARENTS = ("services", "apps", "workers", "packages", "cmd")
MARKERS = (
    "package.json",
    "pyproject.toml",
    "requirements.txt",
    "go.mod",
    "Cargo.toml",
    "wrangler.toml",
    "Procfile",
)
MAX_SERVICES = 20


@dataclass(frozen=True)
class DetectedService:
    name: str
    path: str  # relative to the project root, with forward slashes
    marker: str
    build: list[str] | None
    run: list[str]


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if not slug or not slug[0].isalpha():
        slug = "svc-" + slug
    return slug[:40].rstrip("-")


def _commands(directory: Path, marker: str) -> tuple[list[str] | None, list[str]]:
    if marker == "package.json":
        try:
            scripts = json.loads((directory / marker).read_text()).get("scripts", {})
        except (OSError, ValueError, AttributeError):
            scripts = {}
        build = ["npm", "run", "build"] if "build" in scripts else None
        return (["npm", "ci"] if build is None else build), ["npm", "start"]
    if marker == "pyproject.toml" or marker == "requirements.txt":
        module = directory.name.replace("-", "_")
        return None, ["python", "-m", module]
    if marker == "go.mod":
        return ["go", "build", "-o", "app", "."], ["./app"]
    if marker == "Cargo.toml":
        return ["cargo", "build", "--release"], ["cargo", "run", "--release"]
    if marker == "wrangler.toml":
        return ["npm", "ci"], ["sh", "-c", 'exec npx wrangler dev --port "$PORT"']
    return None, ["sh", "-c", "echo 'set the run command for this service'; exit 1"]


def _marker_of(directory: Path) -> str | None:
    return next((m for m in MARKERS if (directory / m).is_file()), None)


def detect_services(root: Path) -> list[DetectedService]:
    """Services in the conventional monorepo folders, else the root itself."""
    found: list[DetectedService] = []
    names: set[str] = set()
    for parent in SERVICE_PARENTS:
        base = root / parent
        if not base.is_dir():
            continue
        for directory in sorted(p for p in base.iterdir() if p.is_dir()):
            marker = _marker_of(directory)
            if marker is None or len(found) >= MAX_SERVICES:
                continue
            name = _slug(directory.name)
            if name in names:
                name = _slug(f"{parent}-{directory.name}")
            names.add(name)
            build, run = _commands(directory, marker)
            found.append(
                DetectedService(name, directory.relative_to(root).as_posix(), marker, build, run)
            )
    if not found:
        marker = _marker_of(root)
        if marker is not None:
            build, run = _commands(root, marker)
            found.append(DetectedService(_slug(root.name) or "app", ".", marker, build, run))
    return found


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def _toml_list(values: list[str]) -> str:
    return "[" + ", ".join(_toml_str(v) for v in values) + "]"


def _detect_migrate(root: Path) -> list[str]:
    if (root / "alembic.ini").is_file():
        return ["alembic", "upgrade", "head"]
    if (root / "manage.py").is_file():
        return ["python", "manage.py", "migrate"]
    return ["sh", "-c", 'psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f migrations/all.sql']


def render_starter_config(root: Path, services: list[DetectedService]) -> str:
    """The text of a starter branchline.toml for the project at `root`."""
    project = _slug(root.resolve().name) or "app"
    lines = [
        "# branchline.toml: how branchline builds, tests, previews and deploys this project.",
        "# Check it with `branchline config check`. ${VAR} and ${VAR:-default} read the",
        "# environment; commands are argument lists or strings split like a shell would",
        '# (never run through a shell; write ["sh", "-c", "..."] when you need one).',
        "",
        "[project]",
        f"name = {_toml_str(project)}",
        "# The domain previews and production live under: api-preview-8.<zone>, api.<zone>.",
        f"zone = {_toml_str(project + '.localhost')}",
        'production_branch = "main"',
        "",
        "[database]",
        'provider = "local"          # or "neon"',
        'parent = "production"       # previews and tests branch from this',
        "# Runs with DATABASE_URL set to the branch being migrated.",
        f"migrate = {_toml_list(_detect_migrate(root))}",
        "",
    ]
    if not services:
        lines += [
            "# No services were detected. Describe each deployable like this:",
            "# [services.api]",
            '# path = "services/api"',
            '# run = ["python", "-m", "api"]   # receives PORT',
            '# health_path = "/health"',
            "",
        ]
    for order, service in enumerate(services, start=1):
        lines += [
            f"# Detected from {service.path}/{service.marker}.",
            f"[services.{service.name}]",
            f"path = {_toml_str(service.path)}",
        ]
        if service.build is not None:
            lines.append(f"build = {_toml_list(service.build)}")
        lines += [
            f"run = {_toml_list(service.run)}   # receives PORT",
            'health_path = "/health"',
            f"order = {order}",
            "",
        ]
    lines += [
        "[preview]",
        'ttl = "72h"        # previews expire unless their PR is updated',
        "max_live = 10",
        "",
    ]
    return "\n".join(lines)
