"""`FakeGitHub`: the fake GitHub REST API in a subprocess of its own, for tests and the
demo. Give githubkit `base_url=fake.url`."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from branchline.fakes.running import RunningFake, launch

START_TIMEOUT = 60.0  # seconds: the document's parse on a slow machine


class FakeGitHubError(RuntimeError):
    """The fake did not start (its log's end says why)."""


class FakeGitHub(RunningFake):
    """A running fake GitHub: `url` (no trailing slash), `repository` (owner/name),
    `token` (the personal token it accepts)."""

    def __init__(
        self, process: subprocess.Popen[bytes], *, url: str, repository: str, token: str,
        state_dir: Path, log_file: Path,
    ) -> None:  # fmt: skip
        super().__init__(process, state_dir, log_file)
        self.url = url
        self.repository = repository
        self.token = token

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
        args = ["--repository", repository, "--installation-id", str(installation_id),
                "--token-lifetime", str(token_lifetime)]  # fmt: skip
        if app_id is not None:
            args += ["--app-id", str(app_id)]
        env = {"GITHUB_TOKEN": token, "GITHUB_APP_PRIVATE_KEY": app_private_key_pem or None}
        process, ready, log_file = launch(
            "branchline.fakes.github", "the fake GitHub", state_dir, args, env=env,
            timeout=timeout, error=FakeGitHubError,
        )  # fmt: skip
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

    def add_comment(self, number: int, body: str, *, author: str) -> int:
        """A comment `author` writes on an issue or pull on github.com; its id."""
        said = self._control(
            "POST", f"/_fake/issues/{number}/comments", {"body": body, "author": author}
        )
        return int(said["id"])

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
