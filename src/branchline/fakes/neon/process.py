"""`FakeNeon`: the fake Neon API in a subprocess of its own, for tests and the demo."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import httpx

from branchline.fakes.running import RunningFake, launch

START_TIMEOUT = 120.0  # seconds: a state database and a first cluster on a slow machine


class FakeNeonError(RuntimeError):
    """The fake did not start (its log's end says why)."""


class FakeNeon(RunningFake):
    """A running fake Neon: `url` (ends in /api/v2), `project_id`, `api_key`."""

    stop_timeout = 60.0  # its clusters stop first

    def __init__(
        self, process: subprocess.Popen[bytes], *, url: str, project_id: str, api_key: str,
        state_dir: Path, log_file: Path,
    ) -> None:  # fmt: skip
        super().__init__(process, state_dir, log_file)
        self.url = url
        self.project_id = project_id
        self.api_key = api_key

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
        args = [
            "--operation-delay", str(operation_delay), "--branch-limit", str(branch_limit),
            "--default-branch", default_branch, "--database", database,
        ]  # fmt: skip
        if project_id:
            args += ["--project-id", project_id]
        # Its state is its own: never a state database the caller's environment names.
        env = {"NEON_API_KEY": api_key, "BRANCHLINE_DATABASE_URL": None}
        process, ready, log_file = launch(
            "branchline.fakes.neon", "the fake Neon", state_dir, args, env=env, timeout=timeout,
            error=FakeNeonError,
        )  # fmt: skip
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
