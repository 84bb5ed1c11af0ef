"""`branchline db pool` end to end: the real command on a project with production,
moved into a loop-mounted reflink XFS and back out, with --json and without."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from branchline.postgres import Cluster
from tests import clonefs
from tests.conftest import run_cli

CONFIG = """\
[project]
name = "shop"
zone = "shop.localhost"

[database]
migrate = ["true"]

[services.api]
path = "api"
run = "python -m api"
"""


@pytest.fixture
def project(
    tmp_path: Path, state_dir: Path, clone_dir: Path
) -> Iterator[tuple[Path, dict[str, str], Path]]:
    """A project with production made; its pool released afterwards whatever happened
    (clone_dir: skipped, or failed under CI, where no loop-mounted XFS can be made)."""
    (tmp_path / "api").mkdir()
    (tmp_path / "branchline.toml").write_text(CONFIG)
    env = {"BRANCHLINE_STATE_DIR": str(state_dir)}
    project_dir = state_dir / "projects" / "shop"
    try:
        result = run_cli("db", "init", cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
        yield tmp_path, env, project_dir
    finally:
        for home in [*project_dir.glob("branches/*"), *project_dir.glob("spares/*-*")]:
            Cluster(home).destroy()
        clonefs.release(project_dir / "pool", project_dir / "pool.img")


def cli(project: tuple[Path, dict[str, str], Path], *args: str) -> tuple[int, str, str]:
    root, env, _ = project
    done = run_cli(*args, cwd=root, env=env)
    return done.returncode, done.stdout, done.stderr


def test_pool_through_the_cli(project: tuple[Path, dict[str, str], Path]) -> None:
    project_dir = project[2]
    code, out, err = cli(project, "--json", "db", "pool", "status")
    assert code == 0 and json.loads(out) == {"pool": None}, err

    code, out, err = cli(project, "--json", "db", "pool", "create", "--size", "1G")
    assert code == 0, err
    made = json.loads(out)
    assert made["already"] is False and "branches" in made["moved"]
    assert made["pool"]["image"] == str(project_dir / "pool.img")
    assert (project_dir / "branches").is_symlink()

    code, out, err = cli(project, "--json", "db", "pool", "status")
    shown = json.loads(out)["pool"]
    assert shown["mounted"] and shown["can_clone"] is True and shown["size"] == 1024**3
    code, out, err = cli(project, "db", "pool", "status")
    assert "can clone: yes" in out and "branches in the pool" in out

    code, out, err = cli(project, "db", "pool", "create", "--size", "1G")
    assert code == 0 and "there already" in out, err
    code, out, err = cli(project, "db", "pool", "create", "--size", "2G")
    assert code == 2 and "db pool delete" in err

    # Production starts again from the pool when used.
    code, out, err = cli(project, "--json", "db", "branches", "create", "pr-1")
    assert code == 0 and json.loads(out)["status"] == "ready", err
    assert (project_dir / "pool" / "branches" / "pr-1").exists()

    code, out, err = cli(project, "--json", "db", "pool", "delete")
    assert code == 0 and "branches" in json.loads(out)["moved"], err
    assert not (project_dir / "branches").is_symlink()
    assert not clonefs.loop_devices(project_dir / "pool.img")
    code, out, err = cli(project, "--json", "db", "url", "pr-1")
    assert code == 0 and json.loads(out)["uri"].startswith("postgresql://"), err
