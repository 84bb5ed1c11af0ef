"""Django (`manage.py`): gunicorn or runserver on the port, collectstatic as the
build, `migrate --noinput`, the test runner, and what the settings are missing."""

from __future__ import annotations

import re
from pathlib import Path

from branchline.scaffold.model import Findings, in_dir
from branchline.scaffold.pydeps import HEALTH_WORDS, LOOPBACK_PORT, read

ALLOWED_HOSTS_RECIPE = [
    "# Django answers 400 to a host name missing from ALLOWED_HOSTS: pass the public",
    '# one in and read it in settings.py (ALLOWED_HOSTS = [os.environ["PUBLIC_HOST"]]):',
    "# [services.<service>.env]",
    '# PUBLIC_HOST = "{{ host }}"',
]


def detect(found: Findings, deps: dict[str, str]) -> None:
    source = found.file("manage.py")
    found.mark("manage.py")
    found.serves = True
    settings = _settings_module(read(found.directory / "manage.py"))
    files = _module_files(found.directory, settings)
    text = "\n".join(read(f) for f in files)
    told = found.file(files[0].relative_to(found.directory).as_posix()) if files else source
    found.note("framework", f"Django (settings {settings or 'not found'})", source)
    wsgi = _wsgi_module(found.directory, settings)
    if found.run is None and wsgi and "gunicorn" in deps:
        argv = ["gunicorn", wsgi, "--bind", LOOPBACK_PORT]
        found.run = found.step("run", argv, f"gunicorn serves {wsgi}", deps["gunicorn"])
    elif found.run is None:
        found.run = found.step(
            "run",
            ["python", "manage.py", "runserver", LOOPBACK_PORT, "--noreload"],
            "Django's development server; add gunicorn to the requirements for a real one",
            source,
            guessed=True,
        )
    if found.build is None and "STATIC_ROOT" in text:
        collect = ["python", "manage.py", "collectstatic", "--noinput"]
        found.build = found.step("build", collect, "collectstatic (STATIC_ROOT is set)", told)
    elif found.build is None:
        found.note("build", "no STATIC_ROOT in the settings: no collectstatic", told, guessed=True)
    if found.migrate is None:
        migrate = in_dir(found.path, ["python", "manage.py", "migrate", "--noinput"])
        found.migrate = found.step("migrate", migrate, "Django's migrations", source)
    if "pytest-django" in deps:
        runner, command, by = "pytest-django", ["python", "-m", "pytest"], deps["pytest-django"]
    else:
        runner, command, by = "Django's test runner", ["python", "manage.py", "test"], source
    # Both runners create their own test database.
    found.tests.append((found.step("tests", in_dir(found.path, command), runner, by), True, True))
    if text and not any(word in text for word in ("DATABASE_URL", "dj_database_url", ".db(")):
        found.note(
            "database",
            "the settings do not read DATABASE_URL, which branchline sets for each branch: "
            "build DATABASES from it (dj-database-url)",
            told,
            guessed=True,
        )
    found.health_path = _health_route(found.directory, text)
    found.comments += ALLOWED_HOSTS_RECIPE


def _settings_module(manage_py: str) -> str | None:
    match = re.search(r"DJANGO_SETTINGS_MODULE['\"]\s*,\s*['\"]([\w.]+)['\"]", manage_py)
    return match.group(1) if match else None


def _module_files(directory: Path, module: str | None) -> list[Path]:
    """The file of a dotted module, or every file of a package (`config.settings`)."""
    if module is None:
        return []
    base = directory.joinpath(*module.split("."))
    if base.with_suffix(".py").is_file():
        return [base.with_suffix(".py")]
    return sorted(base.glob("*.py")) if base.is_dir() else []


def _wsgi_module(directory: Path, settings: str | None) -> str | None:
    parts = (settings or "").split(".")
    for end in range(len(parts) - 1, 0, -1):  # mysite.settings -> mysite.wsgi
        if directory.joinpath(*parts[:end], "wsgi.py").is_file():
            return ".".join([*parts[:end], "wsgi"])
    found = sorted(directory.glob("*/wsgi.py"))
    return f"{found[0].parent.name}.wsgi" if found else None


def _health_route(directory: Path, settings_text: str) -> str | None:
    """A health URL of the root URLconf (one under an include() has a prefix we skip)."""
    match = re.search(r"ROOT_URLCONF\s*=\s*['\"]([\w.]+)['\"]", settings_text)
    files = _module_files(directory, match.group(1) if match else None)
    routes: list[str] = re.findall(r"path\(\s*r?['\"]\^?([^'\"$]*)", "\n".join(map(read, files)))
    route = next((r for r in routes if any(word in r for word in HEALTH_WORDS)), None)
    return None if route is None else "/" + route.lstrip("/")
