"""Faults a test asks the fake GitHub for (`POST /_fake/faults`) and the rate-limit
headers GitHub sends: a primary rate limit (403 or 429, `x-ratelimit-remaining: 0`
and a reset time), a secondary one (403 with `retry-after`), a plain 5xx, a latency."""

from __future__ import annotations

import contextlib
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from branchline.fakes.github.shapes import DOCS

KINDS = ("rate-limit", "secondary-rate-limit", "error", "latency")
LIMIT = 5000  # an authenticated caller's hourly budget on GitHub
WINDOW = 3600.0


@dataclass
class Fault:
    kind: str
    times: int = 1
    method: str | None = None
    path: str | None = None  # a path template (`/repos/{owner}/{repo}/pulls`) or a regex
    retry_after: float | None = None  # seconds until the limit lifts
    status: int | None = None
    delay: float | None = None  # latency's seconds

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"a fault is one of {', '.join(KINDS)}, not {self.kind!r}")

    def matches(self, method: str, path: str, template: str) -> bool:
        if self.method and self.method.upper() != method:
            return False
        if self.path is None or self.path == template:
            return True
        with contextlib.suppress(re.error):
            return re.search(self.path, path) is not None
        return False


@dataclass
class RateLimit:
    """One caller's core budget, counted down by every API call (faults aside)."""

    used: int = 0
    reset: float = field(default_factory=lambda: time.time() + WINDOW)

    def spend(self) -> None:
        if time.time() >= self.reset:
            self.used, self.reset = 0, time.time() + WINDOW
        self.used += 1

    def headers(self) -> dict[str, str]:
        return {
            "x-ratelimit-limit": str(LIMIT),
            "x-ratelimit-remaining": str(max(LIMIT - self.used, 0)),
            "x-ratelimit-reset": str(math.ceil(self.reset)),
            "x-ratelimit-used": str(self.used),
            "x-ratelimit-resource": "core",
        }


def fault_answer(fault: Fault, rate: RateLimit) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, body, headers) of a fault that answers instead of the API."""
    wait = math.ceil(fault.retry_after if fault.retry_after is not None else 60)
    if fault.kind == "rate-limit":
        headers = {
            **rate.headers(),
            "x-ratelimit-remaining": "0",
            "x-ratelimit-used": str(LIMIT),
            "x-ratelimit-reset": str(math.ceil(time.time()) + wait),
        }
        message = ("API rate limit exceeded for installation. If you reach out to GitHub "
                   "Support for help, please include the request ID.")  # fmt: skip
        return fault.status or 403, _body(message, "rate-limits-for-the-rest-api"), headers
    if fault.kind == "secondary-rate-limit":
        message = ("You have exceeded a secondary rate limit. Please wait a few minutes "
                   "before you try again. If you reach out to GitHub Support for help, "
                   "please include the request ID.")  # fmt: skip
        headers = {**rate.headers(), "retry-after": str(wait)}
        return fault.status or 403, _body(message, "secondary-rate-limits"), headers
    status = fault.status or 500
    message = "Server Error" if status < 503 else "Service Unavailable"
    return status, _body(message, ""), rate.headers()


def _body(message: str, anchor: str) -> dict[str, Any]:
    url = f"{DOCS}/using-the-rest-api/rate-limits-for-the-rest-api"
    return {"message": message, "documentation_url": f"{url}#{anchor}" if anchor else DOCS}
