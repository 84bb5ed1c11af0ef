"""How `branchline demo` ends, without playing it: its last words (truthful: what was
removed, how to keep it), SIGTERM made into Ctrl-C, the teardown not interrupted,
stray processes found by environment, and where the example app is found."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import pytest
from rich.console import Console

from branchline import demo as demo_module
from branchline import processes
from branchline.demo import example, stopping
from branchline.demo.scenario import Demo, Phase
from branchline.errors import UsageError


def _demo(tmp_path: Path) -> tuple[Demo, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    return Demo(console, root=tmp_path / "branchline-demo-x", command="branchline"), out


def test_a_demo_that_ran_to_its_end_says_what_it_removed_and_how_to_keep_it(
    tmp_path: Path,
) -> None:
    demo, out = _demo(tmp_path)
    removal = stopping.Removal(server="its edge", services=3, clusters=3)
    demo_module._farewell(demo, removal, "done")
    said = out.getvalue()
    assert (
        "removed everything the demo started: 3 services, 3 Postgres clusters, its edge and "
        f"its directory {demo.root}." in said
    )
    assert "URLs above are gone" in said and "`branchline demo --keep`" in said


def test_a_stopped_demo_names_the_signal_and_the_phase(tmp_path: Path) -> None:
    demo, out = _demo(tmp_path)
    demo.phases = [Phase("setup", 1.0, "ready"), Phase("2. a pull request opens")]
    demo_module._stopping(demo, "stopped", signal.SIGTERM)
    demo_module._farewell(demo, stopping.Removal(clusters=4, strays=1), "stopped")
    said = out.getvalue()
    assert "the demo was stopped (SIGTERM) during “2. a pull request opens”" in said
    assert "1 leftover process" in said and "--keep" not in said


def test_what_could_not_be_removed_is_said_not_hidden(tmp_path: Path) -> None:
    demo, out = _demo(tmp_path)
    removal = stopping.Removal(clusters=2, problems=["processes still run for it: 42"])
    demo_module._farewell(demo, removal, "done")
    said = out.getvalue()
    assert "could not remove everything the demo started: processes still run for it: 42" in said
    assert "removed everything" not in said


def test_sigterm_stops_the_demo_as_ctrl_c_does() -> None:
    before = signal.getsignal(signal.SIGTERM)
    # Outside the event loop: a KeyboardInterrupt, as Ctrl-C raises.
    with stopping.Interruptions() as interruptions, pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # it arrives at once
    assert interruptions.stopped_by == signal.SIGTERM

    # In it: the main task is cancelled, so its cleanups run.
    async def main(interruptions: stopping.Interruptions) -> None:
        interruptions.task = asyncio.current_task()
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(10)

    with stopping.Interruptions() as interruptions, pytest.raises(asyncio.CancelledError):
        asyncio.run(main(interruptions))
    assert interruptions.stopped_by == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before  # given back


def test_ctrl_c_stops_a_demo_started_with_it_ignored() -> None:
    """A script without job control (a CI job, `nohup`) starts its commands with
    SIGINT ignored, and asyncio.run then installs no handler: the demo takes SIGINT
    itself, and gives the ignored disposition back at its end."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:

        async def main(interruptions: stopping.Interruptions) -> None:
            interruptions.task = asyncio.current_task()
            os.kill(os.getpid(), signal.SIGINT)
            await asyncio.sleep(10)

        with stopping.Interruptions() as interruptions, pytest.raises(asyncio.CancelledError):
            asyncio.run(main(interruptions))
        assert interruptions.stopped_by == signal.SIGINT
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # given back
    finally:
        signal.signal(signal.SIGINT, before)


def test_the_teardown_is_not_interrupted_by_a_second_signal() -> None:
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with stopping.Interruptions.held():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # they arrive, and are only noted
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


@pytest.mark.integration  # starts processes
def test_stray_processes_are_found_by_environment_not_command_line(tmp_path: Path) -> None:
    root = tmp_path / "branchline-demo-x"
    state = root / "state" / "projects" / "codex"
    tag = processes.tree_prefix(state)
    envs = {
        "serve": {"BRANCHLINE_STATE_DIR": str(root / "state")},
        "keeper": {"BRANCHLINE_STATE": str(state)},
        "service": {processes.TREE_VARIABLE: f"{tag}d1.abcd"},
        "elsewhere": {"BRANCHLINE_STATE_DIR": str(tmp_path / "branchline-demo-xy")},
    }
    started = {
        name: subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                               env={**os.environ, **env}, start_new_session=True)
        for name, env in envs.items()
    }  # fmt: skip
    try:
        found = {p.pid for p in stopping.started_for(root, [tag])}
        assert found == {started[n].pid for n in ("serve", "keeper", "service")}
    finally:
        for process in started.values():
            process.kill()
            process.wait()


def test_the_example_comes_from_the_package_else_the_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert example.CODEX.find() == example.EXAMPLES_IN_CHECKOUT / "codex"  # editable install
    shipped = tmp_path / "branchline"
    (shipped / "examples" / "codex").mkdir(parents=True)
    (shipped / "examples" / "codex" / "branchline.toml").write_text("")
    monkeypatch.setattr(resources, "files", lambda _package: shipped)
    assert example.CODEX.find() == shipped / "examples" / "codex"  # a wheel
    monkeypatch.setattr(resources, "files", lambda _package: tmp_path / "nothing")
    monkeypatch.setattr(example, "EXAMPLES_IN_CHECKOUT", tmp_path / "nothing-either")
    with pytest.raises(UsageError, match="example app the demo copies is missing"):
        example.CODEX.find()


def test_without_pytest_the_demo_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(example.util, "find_spec", lambda _name: None)
    with pytest.raises(UsageError, match="pytest") as raised:
        example.check_tools()
    assert "pip install 'branchline[demo]'" in (raised.value.hint or "")
