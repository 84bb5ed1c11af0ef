"""The real `branchline` command in a subprocess: output, exit codes, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from branchline import __version__
from branchline.postgres import Cluster
from branchline.store.migrate import bundled_migrations
from tests.conftest import REPO, run_cli

EXAMPLE = REPO / "examples" / "codex" / "branchline.toml"

GOOD = """\
[project]
name = "shop"
zone = "shop.localhost"

[database]
migrate = "python -m migrate"

[services.api]
path = "services/api"
run = "python -m api"

[services.web]
path = "services/web"
run = "python -m web"

[health]
retries = 3
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for service in ("api", "web"):
        (tmp_path / "services" / service).mkdir(parents=True)
    (tmp_path / "branchline.toml").write_text(GOOD)
    return tmp_path


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"branchline {__version__}"


def test_config_check_prints_the_resolved_example() -> None:
    result = run_cli("--json", "config", "check", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["ok"] is True
    assert data["config"]["project"]["zone"] == "codex.localhost"
    assert list(data["config"]["services"]) == ["api", "auth", "web"]
    human = run_cli("config", "check", str(EXAMPLE))
    assert human.returncode == 0 and "codex.localhost" in human.stdout


def test_config_check_masks_secret_values(project: Path) -> None:
    text = GOOD + '\n[services.api.env]\nSTRIPE_KEY = "${STRIPE_KEY}"\nMODE = "live"\n'
    (project / "branchline.toml").write_text(text)
    result = run_cli("--json", "config", "check", cwd=project, env={"STRIPE_KEY": "sk_live_42xyz"})
    assert result.returncode == 0, result.stderr
    assert "sk_live_42xyz" not in result.stdout + result.stderr
    assert json.loads(result.stdout)["config"]["services"]["api"]["env"]["STRIPE_KEY"] == "***"
    metrics = text + '\n[server]\nmetrics_token = "${BRANCHLINE_METRICS_TOKEN}"\n'
    (project / "branchline.toml").write_text(metrics)
    token = "a-metrics-token-nobody-may-see-42"
    result = run_cli("--json", "config", "check", cwd=project,
                     env={"STRIPE_KEY": "x", "BRANCHLINE_METRICS_TOKEN": token})  # fmt: skip
    assert result.returncode == 0 and token not in result.stdout + result.stderr
    assert json.loads(result.stdout)["config"]["server"]["metrics_token"] == "***"


MISTAKES = {
    "unknown key": (("[health]", "[helth]"), "helth", "did you mean `health`"),
    "wrong type": (("retries = 3", 'retries = "ten"'), "health.retries", "retries = 10"),
    "missing field": (('run = "python -m web"', ""), "services.web.run", "add"),
    "undefined var": (('"python -m migrate"', '"${NOPE_UNSET}"'), "database.migrate", "export"),
    "short metrics token": (
        ("[health]", '[server]\nmetrics_token = "abc"\n\n[health]'),
        "server.metrics_token",
        "${BRANCHLINE_METRICS_TOKEN}",
    ),
    "missing path": (('path = "services/web"', 'path = "services/www"'), "services.web.path", ""),
    "duplicate subdomain": (
        ('run = "python -m web"', 'run = "python -m web"\nsubdomain = "api"'),
        "subdomain",
        "",
    ),
}


@pytest.mark.parametrize("case", list(MISTAKES))
def test_config_mistakes_give_one_line_errors_and_exit_2(project: Path, case: str) -> None:
    (old, new), key, hint_word = MISTAKES[case]
    text = GOOD.replace(old, new, 1)
    assert text != GOOD
    (project / "branchline.toml").write_text(text)
    result = run_cli("config", "check", cwd=project)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("error: ") and key in lines[0]
    assert "branchline.toml" in lines[0]
    assert lines[1].startswith("hint: ") and hint_word in lines[1]
    assert "Traceback" not in result.stderr
    as_json = run_cli("--json", "config", "check", cwd=project)
    assert as_json.returncode == 2
    assert key in json.loads(as_json.stderr)["key"]


def test_debug_shows_the_traceback(project: Path) -> None:
    (project / "branchline.toml").write_text(GOOD.replace("retries = 3", "retries = -1"))
    plain = run_cli("config", "check", cwd=project)
    debug = run_cli("config", "check", "--debug", cwd=project)
    assert plain.returncode == debug.returncode == 2
    assert "Traceback" not in plain.stderr
    assert "Traceback" in debug.stderr


def test_missing_config_explains_how_to_create_one(tmp_path: Path) -> None:
    result = run_cli("status", cwd=tmp_path)
    assert result.returncode == 2
    assert "branchline init" in result.stderr


def test_bad_usage_exits_2() -> None:
    result = run_cli("status", "--no-such-flag")
    assert result.returncode == 2
    assert "No such option" in result.stderr


def test_init_writes_a_config_that_checks(tmp_path: Path) -> None:
    (tmp_path / "services" / "api").mkdir(parents=True)
    (tmp_path / "services" / "api" / "pyproject.toml").write_text("")
    (tmp_path / "apps" / "web").mkdir(parents=True)
    (tmp_path / "apps" / "web" / "package.json").write_text("{}")
    result = run_cli("--json", "init", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert {s["name"] for s in json.loads(result.stdout)["services"]} == {"api", "web"}
    check = run_cli("config", "check", cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    again = run_cli("init", str(tmp_path))
    assert again.returncode == 2 and "--force" in again.stderr
    assert run_cli("init", "--force", str(tmp_path)).returncode == 0


def test_status_starts_the_embedded_state_and_reports_it(project: Path, state_dir: Path) -> None:
    env = {"BRANCHLINE_STATE_DIR": str(state_dir)}
    first = run_cli("status", "--json", cwd=project, env=env)
    assert first.returncode == 0, first.stderr
    data = json.loads(first.stdout)
    assert data["project"] == "shop"
    assert data["state"]["kind"] == "embedded"
    assert data["state"]["was"] == "missing"
    # Production is always there: empty until something is deployed.
    assert [(e["name"], e["status"], e["services"]) for e in data["environments"]] == [
        ("production", "empty", [])
    ]
    assert "***" in data["state"]["url"]
    password = Cluster(state_dir / "postgres").meta().password
    assert password not in first.stdout + first.stderr
    human = run_cli("status", cwd=project, env=env)
    assert human.returncode == 0 and "embedded Postgres" in human.stdout
    stopped = run_cli("state", "stop", cwd=project, env=env)
    assert stopped.returncode == 0
    restarted = json.loads(run_cli("status", "--json", cwd=project, env=env).stdout)
    assert restarted["state"]["was"] == "stopped"


def test_two_status_processes_at_once_both_succeed(project: Path, state_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRANCHLINE_")}
    env["BRANCHLINE_STATE_DIR"] = str(state_dir)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "branchline", "--json", "status"],
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    reports = [json.loads(out)["state"] for out, _ in outputs]
    applied = [name for r in reports for name in r["migrations_applied_now"]]
    assert len(applied) == len(bundled_migrations())  # applied once, by one of them
    assert sorted(r["was"] for r in reports) == ["missing", "running"]
    with psycopg.connect(Cluster(state_dir / "postgres").uri("branchline")) as conn:
        rows = conn.execute("SELECT count(*) FROM branchline.schema_migrations").fetchone()
    assert rows == (len(bundled_migrations()),)
