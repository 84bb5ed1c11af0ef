"""What a preview costs on GitHub, measured on the fake GitHub: the API calls the
GitHub code host makes over one pull request's life as the pipelines post it (testing
status pending and success, the preview's deployment in progress, the sticky comment,
the deployment live, then at cleanup the deployment inactive and the comment edited),
and the wall time it takes against the raw floor: the same number of plain HTTP
requests to the same server, on one connection, measured in the same run.

Targets: at most 14 calls per preview, and at most 1.8x the raw floor's time (the
difference is githubkit's request building; connections are kept between calls).

    .venv/bin/python bench/github_preview.py [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from branchline.fakes.github import FakeGitHub
from branchline.providers.forge.github import GitHubForge
from branchline.providers.forge.github_api import Credentials, GitHubClient

TARGET_CALLS = 14
TARGET_RATIO = 1.8
TOKEN = "ghp_bench-token-0123456789abcdef"  # noqa: S105 - the fake's, of no account


async def one_preview(forge: GitHubForge, fake: FakeGitHub, n: int) -> tuple[int, float]:
    """Calls and seconds for one pull request's life, as the pipelines post it."""
    sha = os.urandom(20).hex()
    number = fake.add_pull(head=f"feature-{n}", sha=sha)
    environment = f"preview-{number}"
    calls = forge.client.count.calls
    began = time.monotonic()
    await forge.set_status(sha, "branchline/testing", "pending", None, "testing")
    await forge.set_status(sha, "branchline/testing", "success", None, "all jobs passed")
    await forge.deployment_status(environment, sha=sha, ref="feature", state="in_progress")
    await forge.upsert_comment(number, "preview", "### Preview of #1 is live\n")
    await forge.deployment_status(environment, sha=sha, ref="feature", state="success",
                                  url="http://web-preview.codex.localhost/")  # fmt: skip
    await forge.deployment_status(environment, sha="", ref="", state="inactive")
    await forge.upsert_comment(number, "preview", "### Preview removed\n")
    return forge.client.count.calls - calls, time.monotonic() - began


def raw_floor(fake: FakeGitHub, calls: int) -> float:
    """`calls` plain GETs of a pull request on one kept-alive connection."""
    number = fake.add_pull(head="raw", sha="0" * 40)
    url = f"{fake.url}/repos/{fake.repository}/pulls/{number}"
    with httpx.Client(headers={"authorization": f"token {TOKEN}"}) as client:
        client.get(url).raise_for_status()  # the connection, before the clock
        began = time.monotonic()
        for _ in range(calls):
            client.get(url).raise_for_status()
        return time.monotonic() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    rounds = parser.parse_args().rounds
    work = Path(tempfile.mkdtemp(prefix="bench-github-"))
    fake = FakeGitHub.start(work / "fake", repository="acme/codex", token=TOKEN)
    try:
        client = GitHubClient(repository=fake.repository, credentials=Credentials(token=TOKEN),
                              api_url=fake.url, write_interval=0.0)  # fmt: skip
        forge = GitHubForge(client)
        asyncio.run(one_preview(forge, fake, 0))  # warm: imports, the document's parse
        measured, floors = [], []
        for n in range(rounds):  # interleaved: both see the same machine
            calls, took = asyncio.run(one_preview(forge, fake, n + 1))
            measured.append((calls, took))
            floors.append(raw_floor(fake, calls))
        assert fake.calls()["invalid"] == [], fake.calls()["invalid"]
    finally:
        fake.stop()
        shutil.rmtree(work, ignore_errors=True)
    calls = max(c for c, _ in measured)
    took = statistics.median(t for _, t in measured)
    floor = statistics.median(floors)
    ratio = took / floor
    load = os.getloadavg()[0]
    for n, ((c, t), f) in enumerate(zip(measured, floors, strict=True), 1):
        print(f"round {n}: {c} calls in {t * 1000:.0f} ms; raw floor {f * 1000:.0f} ms")
    ok = calls <= TARGET_CALLS and ratio <= TARGET_RATIO
    print(f"summary: calls_per_preview={calls} preview_ms={took * 1000:.0f} "
          f"raw_ms={floor * 1000:.0f} ratio={ratio:.2f} load={load:.2f} "
          f"target_calls={TARGET_CALLS} target_ratio={TARGET_RATIO} ok={ok}")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
