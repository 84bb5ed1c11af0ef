"""`branchline demo --example workers`: the same story with the example as three
Cloudflare Workers (bundled by wrangler, served by workerd, on Postgres through
node-postgres), tested by Node's test runner; afterwards nothing of it runs and its
directory is gone."""

from __future__ import annotations

import re
import secrets
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import workers_tools
from tests.conftest import leftover_processes, stop_leftovers
from tests.demo_process import DemoProcess


@pytest.fixture
def tmp() -> Iterator[Path]:
    """The demo's TMPDIR (0755: Postgres, as another user when run as root, enters it);
    whatever a failed test left in it is stopped and removed."""
    path = Path(tempfile.mkdtemp(prefix="demo-workers-"))
    path.chmod(0o755)
    yield path
    stop_leftovers(path)
    shutil.rmtree(path, ignore_errors=True)


def test_the_demo_with_the_workers_example_plays_through_and_leaves_nothing(tmp: Path) -> None:
    workers_tools.required()
    # --keep: afterwards production's web is used as a browser would, through the edge
    # (its calls to auth and api too), before SIGTERM ends it all.
    demo = DemoProcess(tmp, "--example", "workers", "--keep")
    try:
        demo.wait_for("waiting; Ctrl-C removes everything", timeout=600)
        out = demo.out
        for phase in ("1. a push", "2. a pull request", "3. a new commit", "4. the merge",
                      "5. a broken release"):  # fmt: skip
            assert f"\n{phase}" in out, out[-3000:]
        assert "deleted afterwards" in out
        # The preview's three Workers answer their commit through the edge, in its zone.
        for service in ("api", "auth", "web"):
            assert re.search(
                rf"{service}: http://{service}-preview-1\.workers\.localhost:\d+/ answers "
                r"commit [0-9a-f]{8}", out
            ), out[-3000:]  # fmt: skip
        assert "(migration 003 applied to pr-1)" in out
        # Broken: web answers 500 in production only; rolled back, with its incident.
        assert "incident issue #1: Production rollout of" in out and "web unhealthy" in out
        assert "SHOP_CURRENCY is not configured" in out
        assert "rolled back automatically; production still serves the previous release" in out
        edge = re.search(r"curl -H 'Host: web.workers.localhost' http://127.0.0.1:(\d+)/", out)
        assert edge is not None, out[-3000:]
        _shop_on_production(int(edge[1]))
        demo.process.send_signal(signal.SIGTERM)
        assert demo.ended(timeout=120) == 0, demo.out[-3000:]
    finally:
        demo.kill()
    out = demo.out
    assert "removed everything the demo started:" in out, out[-3000:]
    assert "Traceback" not in out
    assert leftover_processes(tmp) == []
    assert list(tmp.iterdir()) == []


def _shop_on_production(port: int) -> None:
    """Sign up on web, buy, see it: web reaches auth and api through the edge, each
    Worker reads and writes production's database."""
    email = f"buyer-{secrets.token_hex(4)}@example.invalid"
    headers = {"Host": "web.workers.localhost"}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers) as browser:
        signed = browser.post("/signup", data={"email": email, "password": "long enough"})
        assert signed.status_code == 303, signed.text
        page = browser.get("/").text  # the session cookie kept by the client
        assert f"Signed in as <b>{email}</b>" in page and "Fountain pen" in page, page
        pen = re.search(
            r'Fountain pen</td><td>\$35\.00</td><td><form method="post" '
            r'action="/buy"><input type="hidden" name="product_id" value="(\d+)"',
            page,
        )
        assert pen is not None, page
        bought = browser.post("/buy", data={"product_id": pen[1]})
        assert bought.status_code == 303, bought.text
        assert re.search(r"<li>#\d+ Fountain pen \$35\.00</li>", browser.get("/").text)
