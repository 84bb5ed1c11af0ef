"""Nothing secret lies around: branchline's state is never committed, service logs
are private and shown masked, and the state database holds no secret value and no
password in plain text after a whole testing run and a deploy."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from branchline.postgres import Cluster
from tests.codex_project import cli_env, git, make_project, served
from tests.conftest import run_cli

LEAKY_SERVICE = """\
import json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# A careless app: it prints its configuration, secrets and all.
print("starting with", os.environ.get("DATABASE_URL"), os.environ.get("AUTH_SECRET"), flush=True)

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"status": "ok", "commit": os.environ["BRANCHLINE_COMMIT"]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""
SECRET = "a-production-secret-never-in-plain-text"


def test_the_state_directory_is_ignored_and_a_tracked_one_stops_every_command(
    state_dir: Path,
) -> None:
    root = state_dir / "app"  # where the clusters' user can reach the project's state
    (root / "api").mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    assert run_cli("init", str(root)).returncode == 0
    assert "/.branchline/" in (root / ".gitignore").read_text().splitlines()
    assert run_cli("db", "init", cwd=root).returncode == 0  # state in the project
    try:
        git(root, "add", "-A")
        tracked = git(root, "ls-files").splitlines()
        assert tracked and not [path for path in tracked if path.startswith(".branchline")]
        # Forced in anyway: every command refuses until it is out of git.
        git(root, "add", "-f", ".branchline/secret.key" if (root / ".branchline/secret.key")
            .exists() else ".branchline/postgres/cluster.json")  # fmt: skip
        refused = run_cli("status", cwd=root)
        assert refused.returncode == 2
        assert "git tracks 1 file(s) under .branchline/" in refused.stderr
        assert "git rm -r --cached .branchline" in refused.stderr
        git(root, "rm", "-q", "-r", "--cached", ".branchline")
        assert run_cli("status", cwd=root).returncode == 0
    finally:
        run_cli("state", "stop", cwd=root)
        for home in [*(root / ".branchline/projects").glob("*/branches/*"),
                     root / ".branchline/postgres"]:  # fmt: skip
            Cluster(home).destroy()


@pytest.fixture
def project(tmp_path: Path, state_dir: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    root = make_project(tmp_path / "codex", quick_tests=True)
    (root / "services" / "api" / "app.py").write_text(LEAKY_SERVICE)
    git(root, "commit", "-qam", "a service that prints its secrets")
    with served(root, cli_env(state_dir)) as project:
        yield project


def test_logs_and_the_state_database_hold_no_secret(
    project: tuple[Path, dict[str, str]], state_dir: Path
) -> None:
    root, env = project
    assert run_cli("db", "init", cwd=root, env=env).returncode == 0
    for name in ("AUTH_SECRET", "PAYMENT_WEBHOOK_SECRET"):
        done = run_cli("secret", "set", name, "--env", "production", cwd=root, env=env,
                       input=f"{SECRET}-{name}\n")  # fmt: skip
        assert done.returncode == 0, done.stderr
    # A testing run (its branch's URL travels as an artifact), a deploy of the leaky
    # service, a preview branch.
    pushed = run_cli("--json", "push", "main", "--no-wait", cwd=root, env=env)
    assert pushed.returncode == 0, pushed.stderr
    deployed = run_cli("--json", "deploy", "api", "--env", "production", cwd=root, env=env)
    assert deployed.returncode == 0, deployed.stderr
    waited = run_cli("--json", "push", "main", cwd=root, env=env)  # waits for both runs
    assert waited.returncode in (0, 1), waited.stderr
    secrets = [f"{SECRET}-AUTH_SECRET", f"{SECRET}-PAYMENT_WEBHOOK_SECRET"]
    homes = [*(state_dir / "projects" / "codex" / "branches").iterdir(), state_dir / "postgres"]
    passwords = [p for h in homes for p in (Cluster(h).meta().password,
                                             Cluster(h).meta().app_password) if p]  # fmt: skip
    # The service printed them: its log file is private, `logs` masks.
    logs = run_cli("logs", "api", "--env", "production", cwd=root, env=env)
    assert logs.returncode == 0 and "starting with" in logs.stdout
    assert not [s for s in secrets + passwords if s in logs.stdout]
    (deployment,) = [d for d in json.loads(run_cli(
        "--json", "deployments", "list", "--env", "production", cwd=root, env=env
    ).stdout) if d["status"] == "live" and d["service"] == "api"]  # fmt: skip
    log_file = Path(deployment["detail"]["log"])
    assert log_file.stat().st_mode & 0o777 == 0o600
    # The whole state database, dumped: no secret value, no password, no URI with one.
    state = Cluster(state_dir / "postgres")
    dump = subprocess.run(
        [state.binaries.path("pg_dump"), "--data-only", state.uri("branchline")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "database_url" in dump  # the artifact is there, sealed
    leaked = [value for value in secrets + passwords if value in dump]
    assert leaked == [], f"{len(leaked)} secret values in the state database"
