"""How the fake Cloudflare runs a deployed version: one small interface, `Runner`, so a
health check of a 'Cloudflare' preview reaches what was uploaded and a rollback
changes what answers.

The runner meant for it runs the version's modules in workerd; it is not written yet
(it will use `providers.compute.workerd`). `EchoRunnerForTests` stands in for it in
the fake's own tests only: a real tiny HTTP server process per script that answers
every request with the main module's text, so a test can tell which version answers
without a JavaScript runtime. It runs no JavaScript and is no Worker."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from branchline.fakes.running import tail

START_TIMEOUT = 30.0  # seconds


@dataclass(frozen=True)
class Deployable:
    """What a runner needs of a deployed version: its modules (bytes), which is main,
    its text bindings (plain_text and secret_text values: the running code needs the
    secrets, nothing else shows them) and its compatibility settings."""

    script: str
    version_id: str
    main_module: str
    modules: Mapping[str, bytes]
    module_types: Mapping[str, str]
    vars: Mapping[str, str] = field(default_factory=dict)
    secrets: Mapping[str, str] = field(default_factory=dict)
    compatibility_date: str = ""
    compatibility_flags: tuple[str, ...] = ()


class RunnerError(RuntimeError):
    """A deployed version could not be started (the message says why)."""


class Runner(Protocol):
    """Runs at most one version per script."""

    def start(self, deployable: Deployable) -> str:
        """Run `deployable` instead of whatever ran for its script before; the URL
        (http://127.0.0.1:<port>) where it answers once this returns."""
        ...

    def stop(self, script: str) -> None:
        """Stop what runs for `script` (nothing running is fine)."""
        ...

    def close(self) -> None:
        """Stop everything this runner started."""
        ...


class EchoRunnerForTests:
    """For tests only (see the module's note): each script's version is served by
    `python -m branchline.fakes.cloudflare.echo`, which answers its main module's text
    with `cf-fake-script` and `cf-fake-version` headers. Its files (the module, never
    a secret) are kept under `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, deployable: Deployable) -> str:
        self.stop(deployable.script)
        home = self.directory / deployable.script / deployable.version_id
        home.mkdir(parents=True, exist_ok=True)
        body = home / "main"
        body.write_bytes(deployable.modules[deployable.main_module])
        ready = home / "ready.json"
        ready.unlink(missing_ok=True)
        log = home / "echo.log"
        command = [sys.executable, "-m", "branchline.fakes.cloudflare.echo", "--body", str(body),
                   "--script", deployable.script, "--version", deployable.version_id,
                   "--ready-file", str(ready)]  # fmt: skip
        # In the fake's own process group: a fake killed with its group takes them along.
        with log.open("ab") as out:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        try:
            url = _wait_ready(process, ready, log)
        except RunnerError:
            _end(process)
            raise
        self.processes[deployable.script] = process
        return url

    def stop(self, script: str) -> None:
        process = self.processes.pop(script, None)
        if process is None:
            return
        _end(process)

    def close(self) -> None:
        for script in list(self.processes):
            self.stop(script)


def _end(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it lingers (the process alone, not its group: that
    is the fake's)."""
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def _wait_ready(process: subprocess.Popen[bytes], ready: Path, log: Path) -> str:
    # The child writes the file once it listens: poll it briefly.
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        with contextlib.suppress(FileNotFoundError, ValueError):
            url: str = json.loads(ready.read_text())["url"]
            return url
        if process.poll() is not None:
            raise RunnerError(f"the echo server exited with {process.returncode}:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise RunnerError(f"the echo server did not start:\n{tail(log)}")
        time.sleep(0.02)


RUNNERS = {"echo-for-tests": EchoRunnerForTests}
