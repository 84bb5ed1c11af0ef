"""Opt-in: the Cloudflare DNS provider on a real zone, and the Workers client on a real
account (see the second test). Needs CLOUDFLARE_API_TOKEN (Zone
→ DNS → Edit on the zone), CLOUDFLARE_ACCOUNT_ID and BRANCHLINE_CLOUDFLARE_TEST_ZONE
(the name of a throw-away zone of that account). It makes a preview's record (a
proxied CNAME to the apex) and a TXT record under a random label, sees them resolve
through public resolvers (BRANCHLINE_CLOUDFLARE_RESOLVERS, comma-separated, default
1.1.1.1), updates one in place, and deletes both; a record it could not delete is
marked `branchline:branchline-smoke` for `branchline dns gc` to find."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from branchline.environment import Environment
from branchline.providers.dns.cloudflare import CloudflareDnsProvider, Resolver
from branchline.providers.dns.cloudflare_api import DEFAULT_API_URL, CloudflareDnsClient
from branchline.store import Store, locate_state
from tests.conftest import new_state_dir

pytestmark = pytest.mark.integration
NEEDED = ("CLOUDFLARE_API_TOKEN", "CLOUDFLARE_ACCOUNT_ID", "BRANCHLINE_CLOUDFLARE_TEST_ZONE")


@pytest.mark.skipif(
    not all(os.environ.get(v) for v in NEEDED),
    reason="needs a real Cloudflare zone: set CLOUDFLARE_API_TOKEN, CLOUDFLARE_ACCOUNT_ID and "
    "BRANCHLINE_CLOUDFLARE_TEST_ZONE (a throw-away zone's name)",
)
def test_records_on_a_real_cloudflare_zone(cluster_root: Path) -> None:
    zone = os.environ["BRANCHLINE_CLOUDFLARE_TEST_ZONE"]
    token = os.environ["CLOUDFLARE_API_TOKEN"]
    api_url = os.environ.get("CLOUDFLARE_API_URL", DEFAULT_API_URL)
    resolvers = os.environ.get("BRANCHLINE_CLOUDFLARE_RESOLVERS", "1.1.1.1").split(",")
    state = new_state_dir(cluster_root)
    store = Store(locate_state(state, {"BRANCHLINE_STATE_DIR": str(state)}))
    label = f"smoke-{os.urandom(3).hex()}"
    preview = Environment.preview(8)

    async def scenario() -> None:
        await store.start()
        finder = CloudflareDnsClient(zone_id="", api_token=token, base_url=api_url)
        try:
            zone_id = await finder.zone_named(zone, os.environ["CLOUDFLARE_ACCOUNT_ID"])
        finally:
            await finder.aclose()
        assert zone_id, f"the token reaches no zone {zone!r} in that account"
        client = CloudflareDnsClient(zone_id=zone_id, api_token=token, base_url=api_url)
        dns = CloudflareDnsProvider(
            "branchline-smoke", zone, store, client,
            resolvers=[Resolver.parse(r) for r in resolvers], verify_timeout=180.0,
        )  # fmt: skip
        try:
            host = await dns.ensure_record(label, "CNAME", "@", proxied=True, environment=preview)
            assert await dns.ensure_record(label, "CNAME", "@", proxied=True) == host
            note = await dns.ensure_record(f"_{label}", "TXT", "branchline smoke one")
            found = await dns.verify(host.name)
            assert found.ok, found.error
            moved = await dns.ensure_record(f"_{label}", "TXT", "branchline smoke two")
            assert moved.created_at == note.created_at
            seen = await dns.verify(f"_{label}", type="TXT")
            assert seen.ok and seen.answer == ("branchline smoke two",), seen.error
            assert {r.name for r in await dns.list_records(preview)} == {host.name}
        finally:
            await dns.delete_record(label)
            await dns.delete_record(f"_{label}")
            assert not [r for r in await dns.list_records() if label in r.name]
            await dns.aclose()

    try:
        asyncio.run(scenario())
    finally:
        store.stop()


@pytest.mark.skipif(
    not all(os.environ.get(v) for v in NEEDED),
    reason="needs a real Cloudflare account and zone: set CLOUDFLARE_API_TOKEN (also with "
    "Workers Scripts and Workers Routes edit), CLOUDFLARE_ACCOUNT_ID and "
    "BRANCHLINE_CLOUDFLARE_TEST_ZONE",
)
def test_a_worker_version_deployment_route_and_rollback_on_real_cloudflare() -> None:
    """The Workers client on a real account: a throw-away script's first upload, a
    second version deployed, a route on the test zone, back to the first version,
    then the route and the script deleted (named `branchline-smoke-<random>`: a script
    left behind by a failure is easy to find)."""
    from branchline.providers.compute.cloudflare_api import Binding, CloudflareWorkersClient
    from branchline.providers.compute.workerd import WorkerBundle, WorkerModule

    zone = os.environ["BRANCHLINE_CLOUDFLARE_TEST_ZONE"]
    token = os.environ["CLOUDFLARE_API_TOKEN"]
    account = os.environ["CLOUDFLARE_ACCOUNT_ID"]
    api_url = os.environ.get("CLOUDFLARE_API_URL", DEFAULT_API_URL)
    script = f"branchline-smoke-{os.urandom(3).hex()}"

    def bundle(n: int) -> WorkerBundle:
        code = f"export default {{ fetch() {{ return new Response('v{n}'); }} }};\n".encode()
        return WorkerBundle("index.js", {"index.js": WorkerModule("esModule", code)},
                            "2026-11-01")  # fmt: skip

    async def scenario() -> None:
        finder = CloudflareDnsClient(zone_id="", api_token=token, base_url=api_url)
        try:
            zone_id = await finder.zone_named(zone, account)
        finally:
            await finder.aclose()
        assert zone_id, f"the token reaches no zone {zone!r} in that account"
        client = CloudflareWorkersClient(account_id=account, zone_id=zone_id, api_token=token,
                                         base_url=api_url)  # fmt: skip
        secret = [Binding("SMOKE_SECRET", os.urandom(8).hex(), secret=True)]
        try:
            first = await client.upload(script, bundle(1), secret, deploy=True)
            second = await client.upload(script, bundle(2), secret, deploy=False)
            await client.deploy(script, second, message="branchline smoke")
            route = await client.ensure_route(f"{script}.{zone}/*", script)
            assert (await client.deployments(script))[0] == second
            await client.deploy(script, first, message="branchline smoke: back")
            assert (await client.deployments(script))[0] == first
            assert await client.delete_route(route.id)
        finally:
            await client.delete_script(script)
            await client.aclose()

    asyncio.run(scenario())
