"""The real commands on a project whose zone is on Cloudflare (the fake one, with a
real DNS server answering its zone): `config check` reaches the zone, `dns ensure`,
`verify`, `list`, `gc` and `delete` work on it, and the token never shows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from branchline.fakes.cloudflare import FakeCloudflare
from tests.cloudflare_zone import FakeZoneServer
from tests.conftest import new_state_dir, remove_state_dir, run_cli

pytestmark = pytest.mark.integration

TOKEN = "cf-cli-test-token-0123456789abcdef"
ZONE = "shop.test"
CONFIG = """\
[project]
name = "shop"
zone = "{zone}"

[database]
migrate = "true"

[dns]
provider = "cloudflare"

[dns.cloudflare]
zone_id = "{zone_id}"
api_url = "{url}"
resolvers = ["{resolver}"]
verify_timeout = "10s"

[services.api]
path = "services/api"
run = "true"
"""


@pytest.fixture
def cloud(cluster_root: Path) -> Iterator[tuple[FakeCloudflare, FakeZoneServer]]:
    state = new_state_dir(cluster_root)
    fake = FakeCloudflare.start(state, token=TOKEN, zones=(ZONE,))
    try:
        with FakeZoneServer(fake, ZONE) as zone_server:
            yield fake, zone_server
        assert fake.calls()["invalid"] == []
    finally:
        fake.stop()
        remove_state_dir(state)


def test_dns_commands_on_a_cloudflare_zone(
    cloud: tuple[FakeCloudflare, FakeZoneServer], tmp_path: Path, state_dir: Path
) -> None:
    fake, zone_server = cloud
    host, port = zone_server.address
    (tmp_path / "services" / "api").mkdir(parents=True)
    (tmp_path / "branchline.toml").write_text(CONFIG.format(
        zone=ZONE, zone_id=fake.zones[ZONE], url=fake.url, resolver=f"{host}:{port}"))  # fmt: skip
    env = {"BRANCHLINE_STATE_DIR": str(state_dir), "CLOUDFLARE_API_TOKEN": TOKEN}

    def cli(*args: str) -> str:
        done = run_cli(*args, cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert TOKEN not in done.stdout + done.stderr
        return done.stdout

    checked = json.loads(cli("--json", "config", "check"))
    assert any(ZONE in said and "reachable" in said for said in checked["providers"])
    cli("dns", "ensure", "api-preview-8", "--proxied", "--env", "preview-8")
    verified = json.loads(cli("--json", "dns", "verify", "api-preview-8", "--expect", ZONE))
    assert verified["ok"] is True and verified["answer"] == [ZONE]
    listed = json.loads(cli("--json", "dns", "list"))
    assert [(r["name"], r["environment"]) for r in listed] == [
        (f"api-preview-8.{ZONE}", "preview-8")]  # fmt: skip
    # One of branchline's that its state never heard of (a crash), and one by hand.
    for name, comment in (("lost", "branchline:shop"), ("by-hand", "made by a person")):
        answer = httpx.post(
            f"{fake.url}/zones/{fake.zones[ZONE]}/dns_records",
            json={"name": f"{name}.{ZONE}", "type": "A", "content": "192.0.2.1", "ttl": 1,
                  "comment": comment},
            headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30,
        )  # fmt: skip
        assert answer.status_code == 200, answer.text
    collected = json.loads(cli("--json", "dns", "gc"))
    assert [(f["target"], f["done"]) for f in collected] == [(f"A lost.{ZONE}", True)]
    names = sorted(r["name"] for r in fake.state()["dns_records"])
    assert names == [f"api-preview-8.{ZONE}", f"by-hand.{ZONE}"]
    cli("dns", "delete", "api-preview-8")
    assert [r["name"] for r in fake.state()["dns_records"]] == [f"by-hand.{ZONE}"]
    refused = run_cli("dns", "list", cwd=tmp_path, env={**env, "CLOUDFLARE_API_TOKEN": "nope"})
    assert refused.returncode == 1 and "CLOUDFLARE_API_TOKEN" in refused.stderr
