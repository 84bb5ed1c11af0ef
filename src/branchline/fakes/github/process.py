"""`FakeGitHub`: the fake GitHub REST API in a subprocess of its own, for tests and the
demo. Give githubkit `base_url=fake.url`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

START_TIMEOUT = 60.0  # seconds: the document's parse on a slow machine
STOP_TIMEOUT = 10.0


class FakeGitHubError(RuntimeError):
    """The fake did not start (its log's end says why)."""


class FakeGitHub:
    """A running fake GitHub: `url` (no trailing slash), `repository` (owner/name),
    `token` (the personal token it accepts)."""

    def __init__(
        self, process: subprocess.Popen[bytes], *, url: str, repository: str, token: str,
        state_dir: Path, log_file: Path,
    ) -> None:  # fmt: skip
        self.process = process
        self.url = url
        self.repository = repository
        self.token = token
        self.state_dir = state_dir
        self.log_file = log_file

    @classmethod
    def start(
        cls,
        state_dir: Path,
        *,
        repository: str = "octo/codex",
        token: str,
        app_id: int | None = None,
        app_private_key_pem: str | None = None,
        installation_id: int = 1,
        token_lifetime: float = 3600.0,
        timeout: float = START_TIMEOUT,
    ) -> FakeGitHub:
        """Start `python -m branchline.fakes.github` (its log and ready file in
        `state_dir`) and wait until it answers. The process carries
        BRANCHLINE_STATE_DIR=`state_dir`; the token and the App key go by environment."""
        state_dir = state_dir.absolute()
        state_dir.mkdir(parents=True, exist_ok=True)
        ready_file = state_dir / "fake-github.ready.json"
        ready_file.unlink(missing_ok=True)
        log_file = state_dir / "fake-github.log"
        command = [
            sys.executable, "-m", "branchline.fakes.github",
            "--state-dir", str(state_dir), "--ready-file", str(ready_file),
            "--repository", repository, "--installation-id", str(installation_id),
            "--token-lifetime", str(token_lifetime),
        ]  # fmt: skip
        env = {**os.environ, "GITHUB_TOKEN": token, "BRANCHLINE_STATE_DIR": str(state_dir)}
        env.pop("GITHUB_APP_PRIVATE_KEY", None)
        if app_id is not None:
            command += ["--app-id", str(app_id)]
        if app_private_key_pem:
            env["GITHUB_APP_PRIVATE_KEY"] = app_private_key_pem
        with log_file.open("ab") as log:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not ready_file.exists():
            if process.poll() is not None:
                raise FakeGitHubError(
                    f"the fake GitHub exited with {process.returncode}:\n{_tail(log_file)}"
                )
            if time.monotonic() > deadline:
                _kill_group(process)
                raise FakeGitHubError(
                    f"the fake GitHub did not start within {timeout:g} s:\n{_tail(log_file)}"
                )
            time.sleep(0.05)
        ready = json.loads(ready_file.read_text())
        return cls(
            process, url=ready["url"], repository=ready["repository"], token=token,
            state_dir=state_dir, log_file=log_file,
        )  # fmt: skip

    # -- the control paths ------------------------------------------------------

    def _control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = httpx.request(method, self.url + path, json=body, timeout=30)
        if response.status_code >= 400:
            raise FakeGitHubError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json()

    def add_pull(
        self,
        *,
        head: str,
        sha: str,
        base: str = "main",
        base_sha: str | None = None,
        title: str = "",
        fork: bool = False,
        files: Sequence[str] = (),
        number: int | None = None,
        author: str = "octocat",
        state: str = "open",
    ) -> int:
        """Seed a pull request (a fork's head repo is `author/<name>`); its number."""
        body: dict[str, Any] = {
            "head": head, "sha": sha, "base": base, "base_sha": base_sha, "title": title,
            "fork": fork, "files": list(files), "number": number, "author": author,
            "state": state,
        }  # fmt: skip
        number_out: int = self._control("POST", "/_fake/pulls", body)["number"]
        return number_out

    def update_pull(
        self,
        number: int,
        *,
        sha: str | None = None,
        state: str | None = None,
        merged: bool | None = None,
        files: Sequence[str] | None = None,
    ) -> None:
        """A push (`sha`, `files`), a close or reopen (`state`), a merge (`merged=True`)."""
        body: dict[str, Any] = {"sha": sha, "state": state, "merged": merged}
        if files is not None:
            body["files"] = list(files)
        self._control("PATCH", f"/_fake/pulls/{number}", body)

    def set_permission(self, login: str, permission: str) -> None:
        """`login`'s role: admin, maintain, write, triage, read or none."""
        self._control("PUT", f"/_fake/permissions/{login}", {"permission": permission})

    def add_label(self, number: int, name: str) -> None:
        """A label put on an issue or pull as a person would on github.com."""
        self._control("POST", f"/_fake/issues/{number}/labels", {"name": name})

    def inject(
        self,
        kind: str,
        *,
        times: int = 1,
        method: str | None = None,
        path: str | None = None,
        retry_after: float | None = None,
        status: int | None = None,
        delay: float | None = None,
    ) -> None:
        """The next `times` calls that match (`method`; `path`, a template such as
        `/repos/{owner}/{repo}/pulls` or a regex searched in the path) meet `kind`:
        "rate-limit" (403, or `status` 429; reset `retry_after` s ahead, default 60),
        "secondary-rate-limit" (403 with retry-after), "error" (`status`, default 500)
        or "latency" (`delay` seconds, default 1, then the real answer)."""
        body: dict[str, Any] = {"kind": kind, "times": times}
        for key, value in (("method", method), ("path", path), ("retry_after", retry_after),
                           ("status", status), ("delay", delay)):  # fmt: skip
            if value is not None:
                body[key] = value
        self._control("POST", "/_fake/faults", body)

    def state(self) -> dict[str, Any]:
        """Everything kept: issues, pulls, labels, comments, statuses, check runs,
        deployments (with their statuses), roles, `tokens_issued`."""
        result: dict[str, Any] = self._control("GET", "/_fake/state")
        return result

    def calls(self) -> dict[str, Any]:
        """`by_route` (`METHOD template`: count), `total`, `invalid` (each `kind`,
        `method`, `path`, `status`, `errors`), `tokens_issued`."""
        result: dict[str, Any] = self._control("GET", "/_fake/calls")
        return result

    def reset_counters(self) -> None:
        self._control("POST", "/_fake/reset-counters")

    # -- stopping ---------------------------------------------------------------

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM and wait; SIGKILL the group if it hangs."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                _kill_group(self.process)
        return self.process.returncode

    def __enter__(self) -> FakeGitHub:
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
