"""A Python project's dependencies, from requirements files, pyproject.toml (PEP 621,
dependency groups, uv, Poetry) or a Pipfile; and the reading helpers the Python
detectors share."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from branchline.scaffold.model import Findings

_SPEC = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?")
# Not where an app is defined: dependencies, build output, tests.
_SKIP_DIRS = {
    "node_modules",
    "site-packages",
    "__pycache__",
    "venv",
    "env",
    "build",
    "dist",
    "tests",
    "test",
}
HEALTH_WORDS = ("health", "ping", "livez", "readyz")
LOOPBACK_PORT = "127.0.0.1:{{ port }}"


def dependencies(found: Findings) -> dict[str, str]:
    """The distributions the directory's dependency files list -> the file listing it."""
    deps: dict[str, str] = {}
    directory = found.directory
    requirements = [*directory.glob("requirements*.txt"), *directory.glob("requirements/*.txt")]
    for file in sorted(requirements):
        for line in read(file).splitlines():
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith("-"):  # -r, -e, --index-url ...
                _add(deps, line, found.file(file.relative_to(directory).as_posix()))
    for spec in _pyproject_specs(_toml(directory / "pyproject.toml")):
        _add(deps, spec, found.file("pyproject.toml"))
    for spec in _pipfile_specs(_toml(directory / "Pipfile")):
        _add(deps, spec, found.file("Pipfile"))
    return deps


def read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[:1_000_000]
    except OSError:
        return ""


def python_files(directory: Path, depth: int = 3) -> Iterator[Path]:
    """The project's own .py files, a few levels deep (no virtualenvs, no vendored code)."""
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or path.name in _SKIP_DIRS:
            continue
        if path.is_file() and path.suffix == ".py":
            yield path
        elif path.is_dir() and depth > 1 and not (path / "pyvenv.cfg").exists():
            yield from python_files(path, depth - 1)


def _toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(read(path)) if path.is_file() else {}
    except tomllib.TOMLDecodeError:
        return {}


def _add(deps: dict[str, str], spec: str, source: str) -> None:
    match = _SPEC.match(spec)
    if match is None:
        return
    name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
    deps.setdefault(name, source)
    if name == "fastapi" and "standard" in (match.group(2) or ""):
        deps.setdefault("uvicorn", source)  # fastapi[standard] brings uvicorn


def _pyproject_specs(data: dict[str, Any]) -> Iterator[str]:
    project, tool = _dict(data.get("project")), _dict(data.get("tool"))
    yield from _strings(project.get("dependencies"))
    for group in _dict(project.get("optional-dependencies")).values():
        yield from _strings(group)
    for group in _dict(data.get("dependency-groups")).values():
        yield from _strings(group)
    yield from _strings(_dict(tool.get("uv")).get("dev-dependencies"))
    poetry = _dict(tool.get("poetry"))
    tables = [poetry.get("dependencies"), poetry.get("dev-dependencies")]
    tables += [_dict(group).get("dependencies") for group in _dict(poetry.get("group")).values()]
    for table in tables:
        yield from (name for name in _dict(table) if name != "python")


def _pipfile_specs(data: dict[str, Any]) -> Iterator[str]:
    for table in (data.get("packages"), data.get("dev-packages")):
        yield from _dict(table)


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _strings(items: object) -> list[str]:
    return [i for i in items if isinstance(i, str)] if isinstance(items, list) else []
