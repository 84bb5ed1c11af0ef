"""`branchline init`'s service detection and starter config."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from branchline.scaffold import detect_services, render_starter_config


def _touch(path: Path, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_detects_services_in_monorepo_folders(tmp_path: Path) -> None:
    _touch(tmp_path / "services/api/pyproject.toml")
    _touch(tmp_path / "apps/web/package.json", json.dumps({"scripts": {"build": "vite build"}}))
    _touch(tmp_path / "workers/auth/wrangler.toml")
    _touch(tmp_path / "services/docs/README.md")  # no marker: not a service
    found = {s.name: s for s in detect_services(tmp_path)}
    assert set(found) == {"api", "web", "auth"}
    assert found["api"].run == ["python", "-m", "api"]
    assert found["web"].build == ["npm", "run", "build"]
    assert found["web"].path == "apps/web"


def test_root_is_the_service_when_nothing_else_is_found(tmp_path: Path) -> None:
    project = tmp_path / "My App"
    _touch(project / "requirements.txt")
    (service,) = detect_services(project)
    assert service.path == "."
    assert service.name == "my-app"


def test_hostile_directory_names_become_safe_service_names(tmp_path: Path) -> None:
    _touch(tmp_path / "services" / '$(rm -rf ~)"' / "package.json", "{}")
    _touch(tmp_path / "services" / "9lives" / "go.mod")
    names = [s.name for s in detect_services(tmp_path)]
    assert names == ["rm-rf", "svc-9lives"]


def test_starter_config_is_valid_toml_with_the_detected_services(tmp_path: Path) -> None:
    _touch(tmp_path / "services/api/pyproject.toml")
    text = render_starter_config(tmp_path, detect_services(tmp_path))
    data = tomllib.loads(text)
    assert data["services"]["api"]["path"] == "services/api"
    assert data["database"]["provider"] == "local"
    assert data["project"]["zone"].endswith(".localhost")


def test_starter_config_without_services_explains_how_to_add_one(tmp_path: Path) -> None:
    text = render_starter_config(tmp_path, [])
    assert "[services.api]" in text  # as a commented example
    assert "services" not in tomllib.loads(text)
