"""Code from a pushed branch tries to reach branchline's state, other environments
and the machine, as the attacks that once succeeded did. Each finds nothing now.

The attacker is a test job of the project (`hunt.py`, committed on a branch): it
runs in a real testing run started by `branchline push`, so it gets exactly what a
test step gets. It writes what it found to its output and fails (exit 1) when it
found anything, so a run that passes is a run whose sandbox held.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.codex_project import cli_env, commit_on, make_project, served
from tests.conftest import run_cli

HUNT = r"""
import json, os, pathlib, subprocess, sys

found = []
def hit(what):
    found.append(what)
    print("FOUND:", what, flush=True)

state = sys.argv[1]
# 1. branchline's state, by its path, by the variables that once pointed at it, and
#    through git (the worktree's git directory leads to the project's checkout).
for variable in ("BRANCHLINE_STATE", "BRANCHLINE_STATE_DIR", "BRANCHLINE_DATABASE_URL"):
    if os.environ.get(variable):
        hit(f"variable {variable}")
for path in (f"{state}/secret.key", f"{state}/postgres/cluster.json", state):
    if os.path.exists(path):
        hit(f"path {path}")
top = subprocess.run(["git", "rev-parse", "--git-common-dir"], capture_output=True, text=True)
if top.returncode == 0:
    common = pathlib.Path(top.stdout.strip()).resolve()
    for candidate in (common.parent / ".branchline", common.parent):
        try:
            if any(entry.name != ".git" for entry in candidate.iterdir()):
                hit(f"git led to {candidate}")
        except OSError:
            pass
# 2. Any key file or cluster metadata wherever state could be (not the system's own
#    read-only directories, which hold none).
wanted = {"secret.key", "cluster.json", "edge.json", "postmaster.pid"}
for root in ("/tmp", "/root", "/work", "/home", "/var", "/srv", "/mnt", "/run"):
    for directory, _dirs, files in os.walk(root):
        for name in wanted.intersection(files):
            hit(f"readable {directory}/{name}")
# 3. Root, and other users' processes.
if os.getuid() == 0:
    hit("running as root")
others = [p for p in os.listdir("/proc") if p.isdigit() and int(p) > 50]
if len(others) > 20:
    hit(f"sees {len(others)} processes")
# 4. Anything of the machine's /tmp but the way to our own worktree and to the
#    repository's history (other jobs' worktrees, the test clusters, sockets).
ours = {pathlib.Path.cwd().parts[2]}
if top.returncode == 0 and common.parts[1] == "tmp":
    ours.add(common.parts[2])
# The tools the project declared (`[security] path`: the Python running this) are shown
# read-only wherever they live, a checkout under /tmp included; only the way to them.
tools = pathlib.Path(sys.executable).parent.resolve()
if tools.parts[1] == "tmp":
    ours.add(tools.parts[2])
    try:
        beside = [e for e in pathlib.Path("/tmp", tools.parts[2]).iterdir()
                  if e.name != tools.parts[3]]
    except PermissionError:
        beside = []  # not even listable
    for entry in beside:
        hit(f"beside the declared tools: {entry}")
for entry in os.listdir("/tmp"):
    if entry not in ours:
        hit(f"/tmp/{entry}")
# 5. The shell that started serve: its exported tokens and its virtualenv.
for variable in ("AWS_SECRET_ACCESS_KEY", "VIRTUAL_ENV", "PYTHONPATH"):
    if variable in os.environ:
        hit(f"serve's shell: {variable}")
# 6. A file left where the next job or the host would find it.
try:
    with open("/tmp/left-by-a-test", "w") as fh:
        fh.write("x")
except OSError:
    pass
print(json.dumps({"found": found, "uid": os.getuid()}), flush=True)
sys.exit(1 if found else 0)
"""


@pytest.fixture
def project(tmp_path: Path, state_dir: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    root = make_project(tmp_path / "codex", quick_tests=True)
    config = root / "branchline.toml"
    config.write_text(config.read_text().replace(
        '[tests.quick]\ncommand = ["python", "-c", "print(\'quick test ok\')"]',
        f'[tests.quick]\ncommand = ["python", "hunt.py", {json.dumps(str(state_dir))}]\n'
        "database = true",
    ))  # fmt: skip
    (root / "hunt.py").write_text(HUNT)
    from tests.codex_project import git

    git(root, "add", ".")
    git(root, "commit", "-qm", "a test that hunts")
    # Whoever started serve had a token and a virtualenv in their shell.
    shell = {
        **cli_env(state_dir),
        "AWS_SECRET_ACCESS_KEY": "AKIA-never-for-a-branch",
        "VIRTUAL_ENV": str(Path(sys.executable).parent.parent),
        "PYTHONPATH": "/nowhere",
    }
    with served(root, shell) as project:
        yield project


def cli(project: tuple[Path, dict[str, str]], *args: str) -> Any:
    root, env = project
    result = run_cli("--json", *args, cwd=root, env=env)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return json.loads(result.stdout)


def test_a_test_step_finds_nothing_of_branchline_or_the_machine(
    project: tuple[Path, dict[str, str]], state_dir: Path
) -> None:
    root, env = project
    assert cli(project, "db", "init")["status"] == "ready"
    assert (state_dir / "secret.key").exists() or True  # made on first secret use
    secret = run_cli("secret", "set", "AUTH_SECRET", "--env", "test", cwd=root, env=env,
                     input="a-test-secret-only-for-tests\n")  # fmt: skip
    assert secret.returncode == 0, secret.stderr
    assert (state_dir / "secret.key").exists()
    commit_on(root, "attack", {"NOTE": "an attacker's branch\n"}, "attack")
    pushed = cli(project, "push", "attack")
    (run,) = pushed["runs"]
    logs = run_cli("runs", "logs", str(run["id"]), cwd=root, env=env).stdout
    assert "FOUND" not in logs, logs
    assert run["status"] == "success", logs
    report = json.loads(next(line for line in logs.splitlines() if '"found"' in line)
                        .split(" ", 1)[1])  # fmt: skip
    assert report["found"] == [] and report["uid"] != 0
    assert "sandbox: bubblewrap" in logs  # every run log says how its code ran
    assert not Path("/tmp/left-by-a-test").exists()


def test_without_bubblewrap_nothing_untrusted_runs(
    project: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, env = project
    # Every program of PATH but bwrap: the machine lacks it.
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "python").symlink_to(sys.executable)
    for directory in env["PATH"].split(os.pathsep):
        for tool in Path(directory).glob("*") if Path(directory).is_dir() else ():
            target = bare / tool.name
            if tool.name != "bwrap" and not target.exists() and not target.is_symlink():
                target.symlink_to(tool)
    no_bwrap = {**env, "PATH": str(bare)}
    init = run_cli("db", "init", cwd=root, env=no_bwrap)
    assert init.returncode == 0, init.stderr
    pushed = run_cli("--json", "push", "main", cwd=root, env=no_bwrap)
    assert pushed.returncode == 1, pushed.stdout + pushed.stderr
    run_id = json.loads(pushed.stdout)["runs"][0]["id"]
    logs = run_cli("runs", "logs", str(run_id), cwd=root, env=no_bwrap).stdout
    assert "bubblewrap (`bwrap`) is not installed" in logs
    assert "apt-get install bubblewrap" in logs
