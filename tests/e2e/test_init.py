"""`branchline init` as a user runs it: the real command in a fresh git repository,
what it prints (human and --json), the .gitignore it keeps, and a detected run
command that really serves the app."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from branchline import gitguard
from branchline.config import load_config
from branchline.postgres.cluster import free_port
from branchline.providers.compute.envtemplate import render_args
from branchline.scaffold.model import in_dir
from tests.conftest import eventually, run_cli
from tests.init_projects import FASTAPI_MAIN, MANAGE_PY, SETTINGS, URLS, write_files

MONOREPO = {
    "backend/manage.py": MANAGE_PY,
    "backend/mysite/__init__.py": "",
    "backend/mysite/settings.py": SETTINGS,
    "backend/mysite/urls.py": URLS,
    "backend/mysite/wsgi.py": "application = None\n",
    "backend/requirements.txt": "Django>=5\ngunicorn\ndj-database-url\n",
    "backend/Procfile": "release: ./bin/warm-caches\n",
    "apps/web/package.json": json.dumps(
        {"scripts": {"start": "node server.js", "build": "vite build", "test": "vitest run"}}
    ),
    "apps/web/server.js": "require('http').createServer().listen(process.env.PORT)\n",
}


def _git_repo(root: Path) -> Path:
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    return root


def test_init_prints_what_it_detected_and_guessed(tmp_path: Path) -> None:
    root = write_files(_git_repo(tmp_path / "shop"), MONOREPO)
    (root / ".gitignore").write_text("node_modules/")  # no final newline
    first = run_cli("init", cwd=root)
    assert first.returncode == 0, first.stderr
    out = first.stdout
    assert f"wrote {root / 'branchline.toml'}" in out
    detected, guessed = out.split("detected:\n")[1].split("guessed:\n")
    assert "backend run: gunicorn serves mysite.wsgi (from backend/requirements.txt)" in detected
    assert "backend migrate: Django's migrations (from backend/manage.py)" in detected
    assert "backend release: the Procfile's release process (from backend/Procfile)" in detected
    assert "web run: the start script (node server.js) (from apps/web/package.json)" in detected
    assert "web health_path: /health: no health route found" in guessed
    assert "added branchline's state directory to .gitignore" in guessed
    assert (root / ".gitignore").read_text() == (
        "node_modules/\n# branchline's state: live databases, keys (never commit it)\n"
        "/.branchline/\n"
    )
    check = run_cli("config", "check", cwd=root)
    assert check.returncode == 0, check.stderr

    again = run_cli("init", "--force", "--json", cwd=root)
    assert again.returncode == 0, again.stderr
    data = json.loads(again.stdout)
    assert data["gitignore"] is False  # already there: never added twice
    assert (root / ".gitignore").read_text().count(".branchline") == 1
    assert [(s["name"], s["path"], s["marker"]) for s in data["services"]] == [
        ("backend", "backend", "manage.py"),
        ("web", "apps/web", "package.json"),
    ]
    backend = data["services"][0]
    assert backend["run"] == ["gunicorn", "mysite.wsgi", "--bind", "127.0.0.1:{{ port }}"]
    assert backend["build"] == ["python", "manage.py", "collectstatic", "--noinput"]
    assert backend["release"] == ["./bin/warm-caches"]
    assert data["migrate"] == list(
        in_dir("backend", ["python", "manage.py", "migrate", "--noinput"])
    )
    assert {t["name"]: (t["service"], t["createdb"]) for t in data["tests"]} == {
        "test-backend": ("backend", True),
        "test-web": ("web", False),
    }
    assert {
        "service": "backend",
        "subject": "build",
        "what": "collectstatic (STATIC_ROOT is set)",
        "file": "backend/mysite/settings.py",
    } in data["detected"]
    assert all(note["what"] for note in data["guessed"])


def test_init_outside_git_still_keeps_the_state_out_of_a_future_repository(
    tmp_path: Path,
) -> None:
    result = run_cli("--json", "init", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["gitignore"] is True
    assert "/.branchline/" in (tmp_path / ".gitignore").read_text().splitlines()


def test_the_detected_fastapi_command_serves_the_app(tmp_path: Path) -> None:
    root = write_files(
        _git_repo(tmp_path / "items"),
        {
            "requirements.txt": "fastapi\nuvicorn\n",
            "app/__init__.py": "",
            "app/main.py": FASTAPI_MAIN,
        },
    )
    assert run_cli("init", cwd=root).returncode == 0
    config = load_config(root, env={})
    service = config.services["items"]
    port = free_port()
    argv = render_args(service.run, {"port": str(port)}, service="items")
    # The test's own virtualenv provides uvicorn and fastapi, as the user's would.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    server = subprocess.Popen(
        argv, cwd=config.service_dir(service), env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        url = f"http://127.0.0.1:{port}{service.health_path}"
        body = eventually(lambda: _get(url), timeout=20)
        assert json.loads(body) == {"status": "ok"}
    finally:
        server.terminate()
        server.wait(timeout=10)


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:
            return str(answer.read().decode())
    except OSError:
        return None


def test_in_dir_runs_the_command_in_that_folder(tmp_path: Path) -> None:
    folder = tmp_path / "odd $name; rm -rf x"
    folder.mkdir()
    argv = in_dir(folder.name, [sys.executable, "-c", "import os; print(os.getcwd())"])
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == str(folder)


def _git_init(root: Path) -> None:
    subprocess.run(["git", "init", "-q", str(root)], check=True)


def test_gitignore_is_created_once_and_never_duplicated(tmp_path: Path) -> None:
    _git_init(tmp_path)
    state = tmp_path / ".branchline"
    assert gitguard.ignore(state, tmp_path) is True
    assert gitguard.ignore(state, tmp_path) is False
    assert (tmp_path / ".gitignore").read_text().splitlines().count("/.branchline/") == 1


@pytest.mark.parametrize("existing", [".branchline/", ".branchline", "/.branchline/**", ".*"])
def test_gitignore_that_already_covers_the_state_is_left_alone(
    tmp_path: Path, existing: str
) -> None:
    _git_init(tmp_path)
    (tmp_path / ".gitignore").write_text(f"node_modules/\n{existing}")  # no final newline
    assert gitguard.ignore(tmp_path / ".branchline", tmp_path) is False
    assert (tmp_path / ".gitignore").read_text() == f"node_modules/\n{existing}"


def test_gitignore_outside_a_repository_is_ready_for_git_init(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text("*.pyc")
    assert gitguard.ignore(tmp_path / ".branchline", tmp_path) is True
    assert (tmp_path / ".gitignore").read_text().splitlines()[0::2] == ["*.pyc", "/.branchline/"]
    elsewhere = tmp_path.parent / "state-elsewhere"
    assert gitguard.ignore(elsewhere, tmp_path) is False  # not in the project: nothing to do
