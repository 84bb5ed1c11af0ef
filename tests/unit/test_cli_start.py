"""The `branchline` command answers at once: importing it (and asking it for its
version or help) does not load the server, the API, Postgres' driver or the job
queue; and its shell completion is on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from branchline.cli import main

HEAVY = ("branchline.server", "fastapi", "procrastinate", "psycopg")

# Run in a fresh interpreter: this test process has imported everything already.
PROBE = """
import contextlib, io, sys
import branchline.cli.main
print("import", *sorted(sys.modules), sep="\\t")
for args in {args!r}:
    with contextlib.redirect_stdout(io.StringIO()):
        code = branchline.cli.main.run(args)
    assert code == 0, (args, code)
    print(" ".join(args), *sorted(sys.modules), sep="\\t")
"""


def loaded_after(*lines: list[str]) -> dict[str, set[str]]:
    """Which modules are loaded after importing the CLI, then after each command line."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(args=list(lines))],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    steps = (line.split("\t") for line in done.stdout.splitlines())
    return {step: set(modules) for step, *modules in steps}


def heavy_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def test_importing_the_cli_loads_nothing_heavy() -> None:
    found = loaded_after(["--version"], ["--help"])
    for step in ("import", "--version", "--help"):
        assert heavy_in(found[step]) == [], step
    # `--version` does not even build the typer application.
    assert "branchline.cli.app" not in found["--version"]
    assert "branchline.cli.app" in found["--help"]


def test_show_completion_prints_a_script(capsys: pytest.CaptureFixture[str]) -> None:
    assert main.run(["--show-completion", "bash"]) == 0
    script = capsys.readouterr().out
    assert "_branchline_completion()" in script and "_BRANCHLINE_COMPLETE" in script
    assert "complete " in script and "branchline" in script


def test_install_completion_writes_to_the_users_shell_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main.run(["--install-completion", "bash"]) == 0
    assert "completion installed" in capsys.readouterr().out
    assert "branchline" in (tmp_path / ".bashrc").read_text()


def test_a_command_line_builds_only_the_command_it_names() -> None:
    from branchline.cli.app import app, app_for

    trimmed = app_for(["--json", "-c", "status", "pr", "list"])  # -c's value is no command
    assert [g.name for g in trimmed.registered_groups] == ["pr"]
    assert trimmed.registered_commands == []
    assert trimmed.registered_callback is app.registered_callback
    assert [c.name for c in app_for(["status"]).registered_commands] == ["status"]
    assert len(app.registered_commands) > 1 and len(app.registered_groups) > 1
    for whole in (["sttus"], ["--", "status"], ["--config", "x.toml"]):
        assert app_for(whole) is app, whole
    # The root's help lists every command and group, without building the groups' commands.
    for listing in ([], ["--help"], ["--json", "--help", "status"]):
        shown = app_for(listing)
        assert [c.name for c in shown.registered_commands] == [
            c.name for c in app.registered_commands
        ]
        assert [g.name for g in shown.registered_groups] == [g.name for g in app.registered_groups]
        assert all(g.typer_instance.registered_commands == [] for g in shown.registered_groups)


def test_a_trimmed_application_answers_as_the_whole_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main.run(["pr", "--help"]) == 0
    assert "Local pull requests." in capsys.readouterr().out
    assert main.run(["pr", "lst"]) == 2
    assert "Did you mean 'list'?" in capsys.readouterr().err
    assert main.run(["--help", "status"]) == 0
    listed = capsys.readouterr().out
    assert "Local pull requests." in listed and "Show where branchline keeps its state" in listed


# What `status` and `pr list` read does not need the edge's proxy and DNS server,
# the HTTP client, the cipher or the preview pipelines: they load when a command
# deploys, proxies, seals or removes.
NOT_FOR_READING = ("branchline.edge.proxy", "branchline.edge.process", "dnslib", "httpx",
                   "cryptography", "branchline.pipelines.cleanup", "procrastinate")  # fmt: skip


def test_what_a_read_only_command_loads_leaves_out_what_it_does_not_use() -> None:
    probe = ("import sys, branchline.operations.environments, branchline.cli.context\n"
             "print(*sorted(sys.modules), sep='\\n')")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True, timeout=60)  # fmt: skip
    loaded = set(done.stdout.split())
    found = [m for m in loaded if any(m == n or m.startswith(n + ".") for n in NOT_FOR_READING)]
    assert sorted(found) == []
