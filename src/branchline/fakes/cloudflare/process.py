"""`FakeCloudflare`: the fake Cloudflare API in a subprocess of its own, for tests and
the demo. Give the `cloudflare` SDK `base_url=fake.url`."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from branchline.fakes.cloudflare.runners import DEFAULT_RUNNER
from branchline.fakes.running import RunningFake, launch

START_TIMEOUT = 60.0  # seconds: the documents' parse on a slow machine


class FakeCloudflareError(RuntimeError):
    """The fake did not start, or a control call failed (the message says why)."""


class FakeCloudflare(RunningFake):
    """A running fake Cloudflare: `url` (ends in /client/v4), `account_id`, `zones`
    (name -> id), `token` (the API token it accepts)."""

    def __init__(
        self, process: subprocess.Popen[bytes], *, url: str, account_id: str,
        zones: dict[str, str], token: str, state_dir: Path, log_file: Path,
    ) -> None:  # fmt: skip
        super().__init__(process, state_dir, log_file)
        self.url = url
        self.account_id = account_id
        self.zones = zones
        self.token = token

    @classmethod
    def start(
        cls,
        state_dir: Path,
        *,
        token: str,
        account_id: str | None = None,
        zones: Sequence[str] = ("example.com",),
        subdomain: str = "branchline-fake",
        runner: str = DEFAULT_RUNNER,
        timeout: float = START_TIMEOUT,
    ) -> FakeCloudflare:
        """Start `python -m branchline.fakes.cloudflare` (its log, ready file and the
        deployed versions' files in `state_dir`) and wait until it answers. The process
        carries BRANCHLINE_STATE_DIR=`state_dir`; the token goes by environment.
        `runner`: what runs a deployed version (see `runners`): "workerd", the
        uploaded modules in workerd (the Workers tools must be installed), or
        "echo-for-tests", the fake's own tests' stand-in."""
        state_dir = state_dir.absolute()
        args = ["--subdomain", subdomain, "--runner", runner]
        for zone in zones:
            args += ["--zone", zone]
        if account_id:
            args += ["--account-id", account_id]
        process, ready, log_file = launch(
            "branchline.fakes.cloudflare", "the fake Cloudflare", state_dir, args,
            env={"CLOUDFLARE_API_TOKEN": token}, timeout=timeout, error=FakeCloudflareError,
        )  # fmt: skip
        return cls(
            process, url=ready["url"], account_id=ready["account_id"], zones=ready["zones"],
            token=token, state_dir=state_dir, log_file=log_file,
        )  # fmt: skip

    # -- the control paths ------------------------------------------------------

    @property
    def base(self) -> str:
        """The server's root (the control paths live under /_fake)."""
        return self.url.removesuffix("/client/v4")

    def _control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = httpx.request(method, self.base + path, json=body, timeout=30)
        if response.status_code >= 400:
            raise FakeCloudflareError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json()

    def inject(
        self,
        kind: str,
        *,
        times: int = 1,
        method: str | None = None,
        path: str | None = None,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        """The next `times` API calls that match (`method`; `path`, a template such as
        `/zones/{zone_id}/dns_records` or a regex searched in the path under /client/v4)
        meet `kind`: "rate-limit" (429, Retry-After `retry_after` s, default 60) or
        "error" (`status`, default 500)."""
        body: dict[str, Any] = {"kind": kind, "times": times}
        for key, value in (("method", method), ("path", path), ("retry_after", retry_after),
                           ("status", status)):  # fmt: skip
            if value is not None:
                body[key] = value
        self._control("POST", "/_fake/faults", body)

    def add_zone(self, name: str) -> str:
        """A zone the account holds (its id; the same one if it already holds it)."""
        zone_id = str(self._control("POST", "/_fake/zones", {"name": name})["id"])
        self.zones[name] = zone_id
        return zone_id

    def script_url(self, name: str) -> str:
        """Where the deployed version of script `name` answers (a new URL after each
        deployment: read it again after a deploy or a rollback)."""
        return str(self._control("GET", f"/_fake/scripts/{name}")["url"])

    def running_version(self, name: str) -> str:
        """The id of the version that answers for script `name`."""
        return str(self._control("GET", f"/_fake/scripts/{name}")["version_id"])

    def state(self) -> dict[str, Any]:
        """Everything kept: `scripts` (versions with their modules' sizes and hashes,
        bindings without secret values, deployments, secret names, `url`),
        `dns_records`, `domains`, `routes`, `zones`, `subdomain`, `account_id`."""
        result: dict[str, Any] = self._control("GET", "/_fake/state")
        return result

    def calls(self) -> dict[str, Any]:
        """`by_route` (`METHOD template`: count), `total`, `invalid` (each `kind`,
        `method`, `path`, `status`, `errors`), `faults_served`."""
        result: dict[str, Any] = self._control("GET", "/_fake/calls")
        return result

    def reset_counters(self) -> None:
        self._control("POST", "/_fake/reset-counters")
