"""How the fake Cloudflare runs a deployed version: one small interface, `Runner`, so a
health check of a 'Cloudflare' preview reaches what was uploaded and a rollback
changes what answers.

`WorkerdRunner` (the fake's default, "workerd") runs the version's modules in workerd,
Cloudflare's open-source Workers runtime, through `providers.compute.workerd`: one
workerd process per script, its plain-text bindings in its config, its secrets only in
the process's environment. `EchoRunnerForTests` ("echo-for-tests") stands in for it in
the fake's own tests only: a real tiny HTTP server process per script that answers
every request with the main module's text, so a test can tell which version answers
without a JavaScript runtime. It runs no JavaScript and is no Worker.

Both start a script's new version before they stop its old one: a version that will
not start leaves the one before it answering (the fake undoes the failed deployment).
Their processes stay in the fake's process group: a fake killed with its group takes
them along."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from branchline.errors import BranchlineError
from branchline.fakes.running import tail
from branchline.masking import mask
from branchline.providers.compute import workerd, workertools

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
        # The new one answers: the old one stops (a failed start left it running).
        self.stop(deployable.script)
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


@dataclass(frozen=True)
class _Served:
    """A version workerd serves: its process, and the directory of its config and
    modules (removed when it stops)."""

    process: subprocess.Popen[bytes]
    home: Path


class WorkerdRunner:
    """Each script's deployed version served by workerd on a free loopback port, one
    process per script. Under `directory`: `<script>/<version>-*/` (the version's
    config and modules, while it runs) and `<script>/workerd.log` (the Worker's
    console output and uncaught exceptions, every version's, appended). No file the
    runner writes holds a secret: the config names each one, workerd reads it from its
    environment (what a Worker prints itself goes to its log as it is, as on
    Cloudflare, where `wrangler tail` shows it). A failed start's log lines are in
    its error with the secrets masked."""

    # What workerd gets of the fake's environment (the rest is not its business).
    INHERITED = ("PATH", "HOME", "TMPDIR")

    def __init__(
        self, directory: Path, *, tools: workertools.WorkersTools | None = None,
        timeout: float = START_TIMEOUT,
    ) -> None:  # fmt: skip
        self.directory = directory
        self.timeout = timeout
        self._tools = tools
        self._lock = threading.Lock()
        self.processes: dict[str, _Served] = {}

    @property
    def tools(self) -> workertools.WorkersTools:
        if self._tools is None:
            try:
                self._tools = workertools.find()
            except BranchlineError as missing:
                raise RunnerError(f"{missing.message} ({missing.hint})") from None
        return self._tools

    def start(self, deployable: Deployable) -> str:
        bundle = bundle_of(deployable)
        if not _SCRIPT_NAME.fullmatch(deployable.script):
            raise RunnerError(f"script name {deployable.script!r} cannot name a directory")
        script_dir = self.directory / deployable.script
        script_dir.mkdir(parents=True, exist_ok=True)
        home = Path(tempfile.mkdtemp(prefix=f"{deployable.version_id}-", dir=script_dir))
        try:
            process, url = self._serve(deployable, bundle, home, script_dir / "workerd.log")
        except BaseException:
            shutil.rmtree(home, ignore_errors=True)
            raise
        # The new version answers: the old one stops (a failed start left it running).
        with self._lock:
            old = self.processes.get(deployable.script)
            self.processes[deployable.script] = _Served(process, home)
        if old is not None:
            _stop(old)
        return url

    def _serve(
        self, deployable: Deployable, bundle: workerd.WorkerBundle, home: Path, log: Path
    ) -> tuple[subprocess.Popen[bytes], str]:
        environment = {k: os.environ[k] for k in self.INHERITED if os.environ.get(k)}
        # How a leak check finds it, as it finds the fake (the fake's own directory).
        environment["BRANCHLINE_STATE_DIR"] = str(self.directory)
        environment.update(deployable.secrets)
        secrets = list(deployable.secrets.values())
        # A port taken between its choice and workerd's bind: another one, twice more.
        for attempt in range(3):
            port = _free_port()
            try:
                config = workerd.write_config(
                    bundle, port=port, bindings_from_env=sorted(deployable.secrets),
                    vars=dict(deployable.vars), directory=home,
                )  # fmt: skip
            except BranchlineError as refused:
                raise RunnerError(refused.message) from None
            command = workerd.serve_command(config, self.tools)
            start = log.stat().st_size if log.exists() else 0
            with log.open("ab") as out:
                out.write(f"-- version {deployable.version_id} on port {port}\n".encode())
                out.flush()
                # In the fake's own process group: a fake killed with its group takes it along.
                process = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    env=environment, cwd=home,
                )  # fmt: skip
            try:
                _wait_answering(process, port, self.timeout)
            except RunnerError as failed:
                # It serves nothing yet: no grace (one stuck in a start-up loop would
                # ignore SIGTERM).
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait(5)
                said = _since(log, start)
                if "address already in use" in said.lower() and attempt < 2:
                    continue
                raise RunnerError(f"{failed}:\n{mask(said, secrets)}") from None
            return process, f"http://127.0.0.1:{port}"
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, script: str) -> None:
        with self._lock:
            served = self.processes.pop(script, None)
        if served is not None:
            _stop(served)

    def close(self) -> None:
        for script in list(self.processes):
            self.stop(script)


def bundle_of(deployable: Deployable) -> workerd.WorkerBundle:
    """The version as workerd's bundle: each module's kind from its upload's content
    type (an unknown one is refused, named)."""
    modules = {}
    for name, content in deployable.modules.items():
        content_type = deployable.module_types.get(name, "")
        kind = workerd.KIND_BY_CONTENT_TYPE.get(content_type.split(";")[0].strip().lower())
        if kind is None:
            raise RunnerError(
                f"module {name!r} has content type {content_type!r}, which workerd cannot "
                f"run (known: {', '.join(sorted(workerd.KIND_BY_CONTENT_TYPE))})"
            )
        modules[name] = workerd.WorkerModule(kind, content)
    try:
        return workerd.WorkerBundle(
            deployable.main_module, modules, deployable.compatibility_date,
            tuple(deployable.compatibility_flags),
        )  # fmt: skip
    except BranchlineError as refused:
        raise RunnerError(refused.message) from None


_SCRIPT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(served: _Served) -> None:
    _end(served.process)
    shutil.rmtree(served.home, ignore_errors=True)


def _wait_answering(process: subprocess.Popen[bytes], port: int, timeout: float) -> None:
    """Until workerd answers HTTP on `port`. It binds its socket before it compiles and
    starts the Worker, and a module that does not parse or throws at start-up makes it
    exit: a connection proves nothing, an answer does (see `_answers`)."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RunnerError(f"workerd exited with {process.returncode}")
        if _answers(port) and process.poll() is None:
            return
        if time.monotonic() > deadline:
            raise RunnerError(f"workerd did not answer within {timeout:g} s")
        time.sleep(0.02)


def _answers(port: int) -> bool:
    """Whether an HTTP server answers on `port`. The probe is no request (its method is
    not one): workerd's HTTP layer refuses it with a 400 of its own, and the Worker
    sees nothing of it (no fetch() run, no log line)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.settimeout(2)
            sock.sendall(b"\x00 branchline-probe\r\n\r\n")
            return sock.recv(16).startswith(b"HTTP/")
    except OSError:
        return False


def _since(log: Path, start: int, size: int = 4000) -> str:
    """What `log` got after byte `start` (its last `size` bytes)."""
    try:
        with log.open("rb") as file:
            file.seek(start)
            return file.read()[-size:].decode(errors="replace")
    except OSError:
        return "(no log)"


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


# Each made with the directory its files go in.
RUNNERS: Mapping[str, Callable[[Path], Runner]] = {
    "workerd": WorkerdRunner,
    "echo-for-tests": EchoRunnerForTests,
}
DEFAULT_RUNNER = "workerd"
