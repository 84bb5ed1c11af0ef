"""The dashboard in a real browser (Debian's Chromium, driven by Playwright) against a
real `branchline serve`: log in with a token, see a running preview's working links,
watch a run's log lines arrive live, roll a service back with the button and see its
release change, log out. A screenshot of each step goes to test-artifacts/."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from branchline.postgres.cluster import free_port
from tests.codex_project import commit_on, git, make_project, stop_serve_and_services
from tests.conftest import REPO, eventually, run_cli

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = REPO / "test-artifacts" / "dashboard"
SLOW_TEST = """
[tests.ticks]
command = ["python", "-c",
           "import time\\nfor i in range(6):\\n    print('tick', i, flush=True); time.sleep(0.7)"]
"""


@pytest.fixture(autouse=True)
def chromium() -> None:
    """No browser: a skip that says why on a developer's machine, a failure under CI
    (`CI` set, as .ci/run and hosted CI services do), where a skip would pass unseen."""
    if CHROMIUM.exists():
        return
    why = (
        f"the dashboard's browser test needs Debian's Chromium at {CHROMIUM}: "
        "`apt-get install --no-install-recommends chromium` (.ci/run installs it)"
    )
    if os.environ.get("CI"):
        pytest.fail(f"{why}; under CI (CI={os.environ['CI']}) a missing browser fails")
    pytest.skip(why)


@pytest.fixture
def project(tmp_path: Path, state_dir: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    root = make_project(tmp_path / "codex", quick_tests=True)
    config = root / "branchline.toml"
    config.write_text(config.read_text() + SLOW_TEST)
    git(root, "commit", "-qam", "a test that takes a few seconds")
    env = {
        "BRANCHLINE_STATE_DIR": str(state_dir),
        "BRANCHLINE_API_PORT": str(free_port()),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    try:
        yield root, env
    finally:
        stop_serve_and_services(root, env)


def cli(project: tuple[Path, dict[str, str]], *args: str, stdin: str | None = None) -> Any:
    root, env = project
    done = run_cli("--json", *args, cwd=root, env=env, input=stdin)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout) if done.stdout.strip() else None


def test_dashboard_in_a_real_browser(project: tuple[Path, dict[str, str]]) -> None:
    from playwright.sync_api import sync_playwright

    root, env = project
    cli(project, "db", "init")
    for name in ("AUTH_SECRET", "PAYMENT_WEBHOOK_SECRET"):
        cli(project, "secret", "set", name, "--env", "production", stdin=f"{name}-browser-test\n")
    cli(project, "push", "main")  # testing, then production (serve starts here)
    commit_on(root, "feature", {"services/web/NOTE": "hi\n"}, "a note")
    cli(project, "pr", "open", "feature")  # testing, then the preview
    (root / "services" / "api" / "VERSION").write_text("2\n")
    git(root, "add", ".")
    git(root, "commit", "-qm", "api v2")
    cli(project, "push", "main")  # a second production release: something to roll back to
    token = cli(project, "token", "create", "--name", "browser", "--scope", "write")["token"]
    base = f"http://127.0.0.1:{env['BRANCHLINE_API_PORT']}/dashboard"
    SHOTS.mkdir(parents=True, exist_ok=True)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("dialog", lambda dialog: dialog.accept())  # the rollback confirmation

            page.goto(f"{base}/")
            assert page.url.endswith("/dashboard/login")
            page.fill("input[name=token]", token)
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/")
            page.screenshot(path=str(SHOTS / "1-environments.png"), full_page=True)
            assert page.locator("h2#preview-1").count() == 1
            # Health as checked while the page loaded: every preview service answers.
            health = page.locator("#preview-1 + p + table td.health").all_inner_texts()
            assert health == ["healthy"] * 3, health
            link = page.locator("#preview-1 ~ table a", has_text="web-preview-1").first
            href = link.get_attribute("href")
            assert href is not None and "web-preview-1.codex.localhost" in href
            link.click()  # the preview's web page, through the edge
            page.wait_for_load_state()
            assert "codex" in page.content()
            page.screenshot(path=str(SHOTS / "2-preview-web.png"))

            # A run whose log grows while we watch.
            commit_on(root, "feature", {"services/web/NOTE": "again\n"}, "again")
            cli(project, "pr", "sync", "1", "--no-wait")
            # Asked of the API (milliseconds), not the CLI (a process start each, seconds
            # on a busy machine: the run's few seconds of ticks could be over by then).
            api = f"http://127.0.0.1:{env['BRANCHLINE_API_PORT']}/api/runs"
            newest = eventually(lambda: _active_testing(api, token), timeout=30)
            page.goto(f"{base}/runs/{newest}")
            first = page.locator("#log").inner_text()
            page.wait_for_function(
                "document.getElementById('log').textContent.includes('tick 5')", timeout=30000
            )
            assert "tick 5" not in first  # it arrived after the page was loaded
            page.screenshot(path=str(SHOTS / "3-run-live-log.png"), full_page=True)

            page.goto(f"{base}/deployments")
            row = page.locator("tr", has=page.locator("td", has_text="production")).filter(
                has=page.locator("td", has_text=re.compile(r"^api$"))
            )
            before = row.locator("td.release").inner_text()
            row.locator("button[name=rollback]").click()
            page.wait_for_url(re.compile(r".*/dashboard/deployments\?notice=.*"))
            assert "rolled back to" in page.content()
            after = row.locator("td.release").inner_text()
            assert after != before
            page.screenshot(path=str(SHOTS / "4-rolled-back.png"), full_page=True)

            # The preview update that sync started is over before pr-1 is reset: the
            # reset is what is tested here, not a race with a migration of pr-1.
            eventually(lambda: _settled(project), timeout=60)
            page.goto(f"{base}/branches")
            branch = page.locator("li[data-branch=pr-1]")
            branch.locator("button[name=reset]").first.click()
            page.wait_for_url(re.compile(r".*/dashboard/branches\?notice=.*"))
            assert "pr-1 now holds production" in page.locator("p.notice").inner_text()
            page.screenshot(path=str(SHOTS / "5-branch-reset.png"), full_page=True)

            page.click("nav button[type=submit]")  # log out
            page.wait_for_url(f"{base}/login")
            page.goto(f"{base}/")
            assert page.url.endswith("/dashboard/login")
            page.screenshot(path=str(SHOTS / "6-logged-out.png"))

            # Revocation is immediate: `token scope` ends the write session at once (a
            # new one may only read), `token delete` ends that one too.
            page.fill("input[name=token]", token)
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/")
            assert cli(project, "token", "scope", "browser", "--to", "read")["scope"] == "read"
            page.goto(f"{base}/branches")
            assert page.url.endswith("/dashboard/login")
            page.fill("input[name=token]", token)
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/")
            page.goto(f"{base}/branches")
            assert page.url.endswith("/dashboard/branches")  # reading still works
            assert cli(project, "token", "delete", "browser")["deleted"] is True
            page.goto(f"{base}/deployments")
            assert page.url.endswith("/dashboard/login")
            page.screenshot(path=str(SHOTS / "7-revoked.png"))
        finally:
            browser.close()


def _active_testing(api: str, token: str) -> int | None:
    runs = httpx.get(api, headers={"Authorization": f"Bearer {token}"}, timeout=10).json()
    found = [r for r in runs if r["workflow"] == "testing" and r["status"] == "running"]
    return int(found[0]["id"]) if found else None


def _settled(project: tuple[Path, dict[str, str]]) -> bool | None:
    runs = cli(project, "runs", "list")
    return None if any(r["status"] in ("queued", "waiting", "running") for r in runs) else True
