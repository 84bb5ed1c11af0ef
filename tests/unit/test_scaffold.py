"""`branchline init`'s detection: small projects of each kind built in a temporary
directory; every generated branchline.toml is loaded with branchline's own loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from branchline.config import Config, load_config
from branchline.scaffold import Detection, detect_project, render_starter_config
from branchline.scaffold.model import in_dir
from branchline.scaffold.procfile import to_argv
from tests.init_projects import FASTAPI_MAIN, MANAGE_PY, SETTINGS, URLS, write_files


def _generate(root: Path) -> tuple[Detection, Config]:
    """Detect, write branchline.toml, and load it as `branchline` would."""
    detection = detect_project(root)
    (root / "branchline.toml").write_text(render_starter_config(root, detection))
    return detection, load_config(root, env={})


def _django(root: Path, requirements: str, settings: str = SETTINGS) -> Path:
    return write_files(
        root,
        {
            "manage.py": MANAGE_PY,
            "mysite/__init__.py": "",
            "mysite/settings.py": settings,
            "mysite/urls.py": URLS,
            "mysite/wsgi.py": "application = None\n",
            "requirements.txt": requirements,
        },
    )


def _notes(detection: Detection, *, guessed: bool) -> list[str]:
    return [n.line() for n in (detection.guessed() if guessed else detection.detected())]


def test_django_with_gunicorn(tmp_path: Path) -> None:
    root = _django(
        tmp_path / "shop", "Django>=5.0\ngunicorn==22.0  # the server\ndj-database-url\n"
    )
    detection, config = _generate(root)
    (service,) = config.services.values()
    assert service.name == "shop" and service.path == "."
    assert service.run == ("gunicorn", "mysite.wsgi", "--bind", "127.0.0.1:{{ port }}")
    assert service.build == ("python", "manage.py", "collectstatic", "--noinput")
    assert service.health_path == "/healthz/"  # from the root URLconf
    assert config.database.migrate == ("python", "manage.py", "migrate", "--noinput")
    (job,) = config.tests.values()
    assert job.command == ("python", "manage.py", "test")
    assert job.database and job.createdb and job.service == "shop"
    detected = _notes(detection, guessed=False)
    assert "shop run: gunicorn serves mysite.wsgi (from requirements.txt)" in detected
    assert "shop build: collectstatic (STATIC_ROOT is set) (from mysite/settings.py)" in detected
    assert "shop migrate: Django's migrations (from manage.py)" in detected
    assert _notes(detection, guessed=True) == []
    text = (root / "branchline.toml").read_text()
    assert '# PUBLIC_HOST = "{{ host }}"' in text  # the ALLOWED_HOSTS recipe


def test_django_without_gunicorn_runs_runserver_and_says_what_it_guessed(tmp_path: Path) -> None:
    settings = 'ROOT_URLCONF = "mysite.urls"\nDATABASES = {}\n'
    root = _django(tmp_path, "django\npytest-django\n", settings)
    detection, config = _generate(root)
    (service,) = config.services.values()
    assert service.run == (
        "python", "manage.py", "runserver", "127.0.0.1:{{ port }}", "--noreload"
    )  # fmt: skip
    assert service.build is None
    assert config.tests["test"].command == ("python", "-m", "pytest")
    guessed = " ".join(_notes(detection, guessed=True))
    assert "development server" in guessed
    assert "no STATIC_ROOT" in guessed
    assert "do not read DATABASE_URL" in guessed


def test_fastapi_from_pyproject_with_alembic(tmp_path: Path) -> None:
    pyproject = """\
[project]
name = "items"
dependencies = ["fastapi[standard]>=0.110", "sqlmodel", "alembic"]

[dependency-groups]
dev = ["pytest>=8"]
"""
    root = write_files(
        tmp_path,
        {
            "pyproject.toml": pyproject,
            "alembic.ini": "[alembic]\nscript_location = alembic\n",
            "app/__init__.py": "",
            "app/main.py": FASTAPI_MAIN,
            "app/models.py": "class Item: ...\n",
        },
    )
    detection, config = _generate(root)
    (service,) = config.services.values()
    assert service.run == (
        "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", "{{ port }}"
    )  # fmt: skip
    assert service.health_path == "/api/health"
    assert config.database.migrate == ("alembic", "upgrade", "head")
    assert config.tests["test"].command == ("python", "-m", "pytest")
    assert config.tests["test"].database
    assert "migrate: alembic's migrations (from alembic.ini)" in " ".join(
        _notes(detection, guessed=False)
    )
    assert _notes(detection, guessed=True) == []  # fastapi[standard] brings uvicorn


def test_fastapi_in_a_src_layout_without_uvicorn(tmp_path: Path) -> None:
    main = "import fastapi\n\napi: fastapi.FastAPI = fastapi.FastAPI(docs_url=None)\n"
    root = write_files(
        tmp_path,
        {"requirements.txt": "fastapi\n", "src/items/__init__.py": "", "src/items/web.py": main},
    )
    detection, config = _generate(root)
    (service,) = config.services.values()
    assert service.run[:4] == ("uvicorn", "items.web:api", "--app-dir", "src")
    assert service.health_path == "/health"  # docs are off: a guess, and said so
    guessed = " ".join(_notes(detection, guessed=True))
    assert "uvicorn is not among the dependencies" in guessed
    assert "health_path: /health: no health route found" in guessed


def test_the_app_is_a_module_level_object_not_words_in_a_string(tmp_path: Path) -> None:
    files = {
        "requirements.txt": "fastapi\nuvicorn\n",
        "docs.py": f'EXAMPLE = """\n{FASTAPI_MAIN}"""\n',  # shallowest, but only text
        "tests/test_api.py": "from fastapi import FastAPI\napp = FastAPI()\n",
        "service/main.py": "import fastapi\n\napplication = fastapi.FastAPI()\n",
    }
    _, config = _generate(write_files(tmp_path, files))
    (service,) = config.services.values()
    assert service.run[:2] == ("uvicorn", "service.main:application")


def test_an_app_factory_is_a_guess_said_out_loud(tmp_path: Path) -> None:
    factory = "from fastapi import FastAPI\n\ndef create_app():\n    return FastAPI()\n"
    files = {"requirements.txt": "fastapi\n", "main.py": factory}
    detection, config = _generate(write_files(tmp_path / "api", files))
    assert config.services["api"].run == ("python", "-m", "api")
    assert "no `app = FastAPI(...)` was found" in " ".join(_notes(detection, guessed=True))


def test_procfile_web_and_release(tmp_path: Path) -> None:
    procfile = (
        "# processes\n"
        "web: gunicorn app:app --bind 127.0.0.1:$PORT --workers 2\n"
        "release: ./bin/release-tasks --quiet\n"
        "worker: celery -A app worker\n"
    )
    root = write_files(tmp_path, {"Procfile": procfile, "requirements.txt": "flask\ngunicorn\n"})
    detection, config = _generate(root)
    (service,) = config.services.values()
    assert service.run == (
        "gunicorn",
        "app:app",
        "--bind",
        "127.0.0.1:{{ port }}",
        "--workers",
        "2",
    )
    (release,) = [s.release for s in detection.services]
    assert release is not None and release.argv == ("./bin/release-tasks", "--quiet")
    text = (root / "branchline.toml").read_text()
    # The service's release phase, said where it came from.
    assert '\nrelease = ["./bin/release-tasks", "--quiet"]' in text
    assert "The release phase" in text
    assert service.release == ("./bin/release-tasks", "--quiet")  # a key the config takes
    assert any("worker process is not a web service" in n for n in _notes(detection, guessed=True))


def test_procfile_release_that_migrates_becomes_migrate(tmp_path: Path) -> None:
    procfile = "web: bin/serve\nrelease: python manage.py migrate --noinput && ./warm-cache\n"
    root = _django(tmp_path, "django\ngunicorn\n")
    (root / "Procfile").write_text(procfile)
    detection, config = _generate(root)
    # The team's own release line wins over the framework's migrate, and over gunicorn.
    assert config.database.migrate == (
        "sh", "-c", "python manage.py migrate --noinput && ./warm-cache"
    )  # fmt: skip
    assert config.services[detection.services[0].name].run == ("bin/serve",)
    assert detection.services[0].release is None


@pytest.mark.parametrize(
    ("line", "argv"),
    [
        ("gunicorn app:app -b :${PORT}", ["gunicorn", "app:app", "-b", ":{{ port }}"]),
        ('gunicorn "app:create_app()" -w 2', ["gunicorn", "app:create_app()", "-w", "2"]),
        ("cd src && exec node server.js", ["sh", "-c", "cd src && exec node server.js"]),
        ("NODE_ENV=production node s.js", ["sh", "-c", "NODE_ENV=production node s.js"]),
        ("node s.js --port ${PORT:-5000}", ["sh", "-c", "node s.js --port ${PORT:-5000}"]),
        ("bin/start 2>&1 | tee log", ["sh", "-c", "bin/start 2>&1 | tee log"]),
    ],
)
def test_procfile_lines_become_argument_lists_or_sh(line: str, argv: list[str]) -> None:
    assert to_argv(line) == argv


def test_shell_lines_survive_interpolation(tmp_path: Path) -> None:
    # `${PORT:-5000}` and `$$` are shell syntax, not branchline's ${VAR}: loaded unchanged.
    line = 'node s.js --port ${PORT:-5000} --pid $$ --home "$HOME"'
    root = write_files(tmp_path, {"Procfile": f"web: {line}\n"})
    _, config = _generate(root)
    (service,) = config.services.values()
    assert service.run == ("sh", "-c", line)


def test_node_app_scripts(tmp_path: Path) -> None:
    package = {
        "name": "web",
        "scripts": {"start": "node server.js", "build": "tsc", "test": "node --test"},
        "dependencies": {"pg": "^8"},
    }
    root = write_files(
        tmp_path, {"package.json": json.dumps(package), "package-lock.json": "{}", "server.js": ""}
    )
    detection, config = _generate(root)
    (service,) = config.services.values()
    assert service.run == ("npm", "start")
    assert service.build == ("sh", "-c", "npm ci && npm run build")
    job = config.tests["test"]
    assert job.command == ("npm", "test") and job.database  # pg is a dependency
    assert any("listen on the PORT variable" in n for n in _notes(detection, guessed=True))
    assert config.database.migrate[0] == "sh"  # no migrations found: a placeholder, said so
    assert "migrate: no migrations found" in " ".join(_notes(detection, guessed=True))


def test_cloudflare_workers_are_worker_services_without_a_run_command(tmp_path: Path) -> None:
    """A wrangler config makes a directory a Worker: `runtime = "worker"` (wrangler
    bundles it, workerd serves it), its package.json still giving its build."""
    package = {"name": "api", "scripts": {"start": "wrangler dev"}, "dependencies": {"pg": "^8"}}
    files = {"package.json": json.dumps(package), "package-lock.json": "{}",
             "src/index.js": "export default {}"}  # fmt: skip
    root = write_files(tmp_path, {
        **{f"services/api/{k}": v for k, v in files.items()},
        "services/api/wrangler.toml": 'name = "api"\nmain = "src/index.js"\n',
        **{f"services/auth/{k}": v for k, v in files.items()},
        "services/auth/wrangler.jsonc": '{ "name": "auth" } // a comment',
    })  # fmt: skip
    detection, config = _generate(root)
    assert sorted(config.services) == ["api", "auth"]
    for name, marker in (("api", "wrangler.toml"), ("auth", "wrangler.jsonc")):
        service = config.services[name]
        assert (service.runtime, service.run, service.build) == ("worker", None, ("npm", "ci"))
        assert next(s for s in detection.services if s.name == name).marker == marker
    text = (root / "branchline.toml").read_text()
    assert text.count('runtime = "worker"') == 2 and "\nrun = " not in text
    assert "wrangler dev" not in text


def test_node_placeholder_test_script_is_not_a_job(tmp_path: Path) -> None:
    package = {
        "scripts": {"start": "next start", "test": 'echo "Error: no test specified" && exit 1'}
    }
    root = write_files(tmp_path / "web", {"package.json": json.dumps(package), "yarn.lock": ""})
    detection, config = _generate(root)
    assert config.tests == {}
    assert config.services[detection.services[0].name].build == (
        "yarn", "install", "--frozen-lockfile"
    )  # fmt: skip
    guessed = _notes(detection, guessed=True)
    assert [line.split(":")[0] for line in guessed] == ["web health_path", "migrate"]


def test_monorepo_backend_and_apps(tmp_path: Path) -> None:
    workspace = {"private": True, "workspaces": ["apps/*", "packages/*"]}
    app = {
        "scripts": {"start": "vite preview --port $PORT", "build": "vite build", "test": "vitest"}
    }
    root = write_files(
        tmp_path,
        {
            "package.json": json.dumps(workspace),
            "backend/requirements.txt": "fastapi\nuvicorn[standard]\nalembic\npytest\n",
            "backend/alembic.ini": "[alembic]\n",
            "backend/app/main.py": FASTAPI_MAIN,
            "apps/web/package.json": json.dumps(app),
            "apps/admin/package.json": json.dumps({"scripts": {"start": "node admin.js"}}),
            "apps/docs/README.md": "no marker: not a service\n",
            "packages/ui/package.json": json.dumps({"scripts": {"build": "tsc"}}),  # a library
        },
    )
    detection, config = _generate(root)
    assert [(s.name, s.path) for s in config.services_in_deploy_order()] == [
        ("backend", "backend"),
        ("admin", "apps/admin"),
        ("web", "apps/web"),
    ]
    assert config.services["backend"].run[:2] == ("uvicorn", "app.main:app")
    # Migrations and tests run at the project root: they change into the folder first.
    assert config.database.migrate == in_dir("backend", ["alembic", "upgrade", "head"])
    assert {name: (job.command, job.service) for name, job in config.tests.items()} == {
        "test-backend": (in_dir("backend", ["python", "-m", "pytest"]), "backend"),
        "test-web": (in_dir("apps/web", ["npm", "test"]), "web"),
    }
    assert "package.json: a workspace root without a start script: not a service" in " ".join(
        _notes(detection, guessed=False)
    )


def test_hostile_directory_names_become_safe_service_names(tmp_path: Path) -> None:
    files = {
        'services/$(rm -rf ~)"/package.json': "{}",
        "services/9lives/go.mod": "",
        # A newline in a folder's name must not end a comment line in the toml early.
        "services/x\n[evil]\nrun = 1/manage.py": MANAGE_PY,
        "services/x\n[evil]\nrun = 1/requirements.txt": "django\n",
    }
    write_files(tmp_path, files)
    _, config = _generate(tmp_path)
    assert sorted(config.services) == ["rm-rf", "svc-9lives", "x-evil-run-1"]
    assert config.database.migrate[4] == "services/x\n[evil]\nrun = 1"


def test_nothing_detected_still_loads(tmp_path: Path) -> None:
    detection, config = _generate(tmp_path)
    assert config.services == {} and config.tests == {}
    text = (tmp_path / "branchline.toml").read_text()
    assert "# [services.api]" in text
    assert "services: none found" in " ".join(_notes(detection, guessed=True))
