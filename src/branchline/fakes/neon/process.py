"""`FakeNeon`: the fake Neon API in a subprocess of its own, for tests and the demo."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

START_TIMEOUT = 120.0  # seconds: a state database and a first cluster on a slow machine
STOP_TIMEOUT = 60.0


class FakeNeonError(RuntimeError):
    """The fake did not start (its log's end says why)."""


class FakeNeon:
    """A running fake Neon: `url` (ends in /api/v2), `project_id`, `api_key`."""

    def __init__(
        self, process: subprocess.Popen[bytes], *, url: str, project_id: str, api_key: str,
        state_dir: Path, log_file: Path,
    ) -> None:  # fmt: skip
        self.process = process
        self.url = url
        self.project_id = project_id
        self.api_key = api_key
        self.state_dir = state_dir
        self.log_file = log_file

    @classmethod
    def start(
        cls,
        state_dir: Path,
        *,
        api_key: str,
        project_id: str | None = None,
        operation_delay: float = 0.2,
        branch_limit: int = 10,
        default_branch: str = "production",
        database: str = "neondb",
        timeout: float = START_TIMEOUT,
    ) -> FakeNeon:
        """Start `python -m branchline.fakes.neon` with its state in `state_dir` (the
        unprivileged Postgres user must be able to enter it) and wait until it answers.
        Its processes carry BRANCHLINE_STATE_DIR=`state_dir`; the key goes by environment."""
        state_dir = state_dir.absolute()
        state_dir.mkdir(parents=True, exist_ok=True)
        ready_file = state_dir / "fake-neon.ready.json"
        ready_file.unlink(missing_ok=True)
        log_file = state_dir / "fake-neon.log"
        command = [
            sys.executable, "-m", "branchline.fakes.neon",
            "--state-dir", str(state_dir), "--ready-file", str(ready_file),
            "--operation-delay", str(operation_delay), "--branch-limit", str(branch_limit),
            "--default-branch", default_branch, "--database", database,
        ]  # fmt: skip
        if project_id:
            command += ["--project-id", project_id]
        env = {**os.environ, "NEON_API_KEY": api_key, "BRANCHLINE_STATE_DIR": str(state_dir)}
        env.pop("BRANCHLINE_DATABASE_URL", None)  # its state is its own
        with log_file.open("ab") as log:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not ready_file.exists():
            if process.poll() is not None:
                raise FakeNeonError(
                    f"the fake Neon exited with {process.returncode}:\n{_tail(log_file)}"
                )
            if time.monotonic() > deadline:
                _kill_group(process)
                raise FakeNeonError(
                    f"the fake Neon did not start within {timeout:g} s:\n{_tail(log_file)}"
                )
            time.sleep(0.05)
        ready = json.loads(ready_file.read_text())
        return cls(
            process, url=ready["url"], project_id=ready["project_id"], api_key=api_key,
            state_dir=state_dir, log_file=log_file,
        )  # fmt: skip

    # -- the control paths ------------------------------------------------------

    @property
    def base(self) -> str:
        """The server's root (the control paths live under /_fake)."""
        return self.url.removesuffix("/api/v2")

    def _control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = httpx.request(method, self.base + path, json=body, timeout=30)
        response.raise_for_status()
        return response.json()

    def inject(
        self,
        status: int,
        times: int = 1,
        method: str | None = None,
        path: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        """The next `times` API calls that match (`method`; `path`, a regex searched in
        the path under /api/v2) answer `status` (429s with a Retry-After header)."""
        body: dict[str, Any] = {"status": status, "times": times}
        if method is not None:
            body["method"] = method
        if path is not None:
            body["path"] = path
        if retry_after is not None:
            body["retry_after"] = retry_after
        self._control("POST", "/_fake/faults", body)

    def calls(self) -> dict[str, Any]:
        """Calls by `METHOD path-template`, `total`, `validation_failures` (`request`,
        `response`), the last `failures`, `simulated_delay_seconds`."""
        result: dict[str, Any] = self._control("GET", "/_fake/calls")
        return result

    def settings(
        self, *, operation_delay: float | None = None, branch_limit: int | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if operation_delay is not None:
            body["operation_delay"] = operation_delay
        if branch_limit is not None:
            body["branch_limit"] = branch_limit
        result: dict[str, Any] = self._control("POST", "/_fake/settings", body)
        return result

    def reset_counters(self) -> None:
        self._control("POST", "/_fake/reset-counters")

    # -- stopping ---------------------------------------------------------------

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait for the clusters to stop; SIGKILL the group if it hangs."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                _kill_group(self.process)
        return self.process.returncode

    def __enter__(self) -> FakeNeon:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(10)


def _tail(path: Path, size: int = 4000) -> str:
    try:
        return path.read_bytes()[-size:].decode(errors="replace")
    except OSError:
        return "(no log)"
