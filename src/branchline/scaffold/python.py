"""Python projects: Django (see `django`), alembic (`alembic.ini`), FastAPI/Starlette
apps served by uvicorn, Flask apps, pytest."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from branchline.scaffold import django
from branchline.scaffold.model import Findings, in_dir
from branchline.scaffold.pydeps import (
    HEALTH_WORDS,
    LOOPBACK_PORT,
    dependencies,
    python_files,
    read,
)

_APP = re.compile(r"\b(FastAPI|Starlette|Flask)\(")
# Where apps usually live, asked first; then any file, shallowest first.
_PREFERRED = ("main.py", "app.py", "app/main.py", "api/main.py", "src/main.py", "server.py")
_MARKERS = ("manage.py", "pyproject.toml", "requirements.txt", "Pipfile")


def detect(found: Findings) -> None:
    deps = dependencies(found)
    marker = next((m for m in _MARKERS if (found.directory / m).is_file()), None)
    if marker is not None:
        found.mark(marker)
    if marker == "manage.py":
        django.detect(found, deps)
    if (found.directory / "alembic.ini").is_file() and found.migrate is None:
        argv = in_dir(found.path, ["alembic", "upgrade", "head"])
        ini = found.file("alembic.ini")
        found.migrate = found.step("migrate", argv, "alembic's migrations", ini)
    if found.run is None and deps.keys() & {"fastapi", "uvicorn", "starlette"}:
        _asgi(found, deps)
    if found.run is None and "flask" in deps:
        _flask(found, deps)
    if "pytest" in deps and not found.tests:
        pytest = in_dir(found.path, ["python", "-m", "pytest"])
        found.tests.append((found.step("tests", pytest, "pytest", deps["pytest"]), True, False))
    if found.run is None and marker is not None:
        module = found.directory.name.replace("-", "_")
        found.run = found.step(
            "run",
            ["python", "-m", module],
            "no web app found: set the command that serves it on PORT",
            found.file(marker),
            guessed=True,
        )


def _asgi(found: Findings, deps: dict[str, str]) -> None:
    app = _find_app(found.directory, ("FastAPI", "Starlette"))
    listed = deps.get("fastapi") or deps.get("starlette") or deps["uvicorn"]
    if app is None:
        text = "an ASGI framework is a dependency, but no `app = FastAPI(...)` was found"
        found.note("run", text, listed, guessed=True)
        return
    target, app_dir, file, var = app
    argv = ["uvicorn", target, *app_dir, "--host", "127.0.0.1", "--port", "{{ port }}"]
    found.serves = True
    found.run = found.step("run", argv, f"uvicorn serves {target}", found.file(file))
    if "uvicorn" not in deps:
        text = "uvicorn is not among the dependencies: add it (or fastapi[standard])"
        found.note("run", text, listed, guessed=True)
    source = read(found.directory / file)
    found.health_path = _health_route(source, var)
    if found.health_path is None and "docs_url=None" not in source:
        found.health_path = "/docs"  # FastAPI serves it unless told not to
        text = "/docs, which FastAPI serves; a /health route would say more"
        found.note("health_path", text, found.file(file), guessed=True)


def _flask(found: Findings, deps: dict[str, str]) -> None:
    app = _find_app(found.directory, ("Flask",))
    if app is None:
        return
    target, app_dir, file, var = app
    if "gunicorn" in deps:
        chdir = ["--chdir", app_dir[1]] if app_dir else []
        argv = ["gunicorn", target, *chdir, "--bind", LOOPBACK_PORT]
        text = f"gunicorn serves {target}"
    else:
        argv = ["flask", "--app", target, "run", "--host", "127.0.0.1", "--port", "{{ port }}"]
        text = f"Flask's development server runs {target}; add gunicorn for a real one"
    found.serves = True
    found.run = found.step("run", argv, text, found.file(file), guessed="gunicorn" not in deps)
    found.health_path = _health_route(read(found.directory / file), var)


def _find_app(directory: Path, classes: tuple[str, ...]) -> tuple[str, list[str], str, str] | None:
    """(`module:var`, `--app-dir` arguments, the file, the variable) of the app object."""

    def rank(path: Path) -> tuple[int, int, str]:
        relative = path.relative_to(directory).as_posix()
        preferred = _PREFERRED.index(relative) if relative in _PREFERRED else len(_PREFERRED)
        return preferred, relative.count("/"), relative

    for path in sorted(python_files(directory), key=rank):
        var = _app_variable(read(path), classes)
        if var is None:
            continue
        parts = list(path.relative_to(directory).with_suffix("").parts)
        app_dir = ["--app-dir", parts.pop(0)] if parts[0] == "src" and len(parts) > 1 else []
        if parts[-1] == "__init__" and len(parts) > 1:
            parts.pop()
        return f"{'.'.join(parts)}:{var}", app_dir, path.relative_to(directory).as_posix(), var
    return None


def _app_variable(source: str, classes: tuple[str, ...]) -> str | None:
    """The module-level variable assigned `FastAPI(...)` (or another of `classes`);
    parsed, so that the same words in a string or a comment do not count."""
    if not _APP.search(source):
        return None  # most files: no need to parse them
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    for statement in tree.body:
        value: ast.expr | None
        if isinstance(statement, ast.Assign):
            target, value = statement.targets[0], statement.value
        elif isinstance(statement, ast.AnnAssign):
            target, value = statement.target, statement.value
        else:
            continue
        if not (isinstance(target, ast.Name) and isinstance(value, ast.Call)):
            continue
        func = value.func
        called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        if called in classes:
            return target.id
    return None


def _health_route(source: str, var: str) -> str | None:
    """A health URL declared on the app object itself (a router's would need its prefix)."""
    pattern = rf"@{re.escape(var)}\.(?:get|route|head|api_route)\(\s*['\"]([^'\"]+)['\"]"
    routes = re.findall(pattern, source)
    return next((r for r in routes if any(word in r for word in HEALTH_WORDS)), None)
