"""What every fake cloud shares as a process: started as `python -m <module>` in a
session of its own (its log and ready file in its state directory, secrets by
environment, BRANCHLINE_STATE_DIR set so a leak check sees it), waited for until its
ready file appears, and stopped with SIGTERM (SIGKILL to its group if it hangs)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self


def launch(
    module: str, what: str, state_dir: Path, args: Sequence[str], *,
    env: Mapping[str, str | None], timeout: float, error: type[RuntimeError],
) -> tuple[subprocess.Popen[bytes], dict[str, Any], Path]:  # fmt: skip
    """Start `module` with `args` (plus --state-dir and --ready-file) and wait for its
    ready file: the process, what it wrote there, and its log. `env` adds variables
    (None removes one); `error` is raised, with the log's end, if it never gets ready."""
    state_dir.mkdir(parents=True, exist_ok=True)
    stem = module.rsplit(".", 1)[-1]
    ready_file = state_dir / f"fake-{stem}.ready.json"
    ready_file.unlink(missing_ok=True)
    log_file = state_dir / f"fake-{stem}.log"
    command = [sys.executable, "-m", module, "--state-dir", str(state_dir),
               "--ready-file", str(ready_file), *args]  # fmt: skip
    environment = {**os.environ, "BRANCHLINE_STATE_DIR": str(state_dir)}
    for name, value in env.items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=environment, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + timeout
    while not ready_file.exists():
        if process.poll() is not None:
            raise error(f"{what} exited with {process.returncode}:\n{tail(log_file)}")
        if time.monotonic() > deadline:
            kill_group(process)
            raise error(f"{what} did not start within {timeout:g} s:\n{tail(log_file)}")
        time.sleep(0.05)
    ready: dict[str, Any] = json.loads(ready_file.read_text())
    return process, ready, log_file


class RunningFake:
    """A fake's process, stopped by `stop()` or at the end of a `with` block."""

    stop_timeout = 10.0

    def __init__(self, process: subprocess.Popen[bytes], state_dir: Path, log_file: Path):
        self.process = process
        self.state_dir = state_dir
        self.log_file = log_file

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM and wait; SIGKILL the group if it hangs."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                kill_group(self.process)
        return self.process.returncode

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(10)


def tail(path: Path, size: int = 4000) -> str:
    try:
        return path.read_bytes()[-size:].decode(errors="replace")
    except OSError:
        return "(no log)"
