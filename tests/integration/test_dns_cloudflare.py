"""The Cloudflare DNS provider against the fake Cloudflare (every exchange held to
Cloudflare's documents) and a real DNS server answering the fake's zone: what the
contract does not say. Idempotence in API calls, a record of someone else's refused
and left alone, rate limits waited out within a deadline, a GET's 5xx asked again,
refusals that name the setting to fix, reconcile removing only branchline's orphans,
verify polling real DNS until a record appears, and the config's way in (the
registry, `config check`)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from branchline.config import Config, load_config_text
from branchline.environment import Environment
from branchline.errors import UsageError
from branchline.fakes.cloudflare import FakeCloudflare
from branchline.providers import registry
from branchline.providers.dns import DnsProvider
from branchline.providers.dns.cloudflare import CloudflareDnsProvider, Resolver
from branchline.providers.dns.cloudflare_api import CloudflareDnsClient, CloudflareError
from branchline.providers.reconciling import Reconcilable
from branchline.store import Store, resources
from branchline.store import dns as dns_rows
from tests.cloudflare_zone import FakeZoneServer
from tests.conftest import new_state_dir, remove_state_dir

pytestmark = pytest.mark.integration

T = TypeVar("T")
TOKEN = "cf-dns-test-token-0123456789abcdef"
ZONE = "preview.test"
PREVIEW_8 = Environment.preview(8)
_serial = iter(range(1, 10_000))


@pytest.fixture(scope="module")
def fake(cluster_root: Path) -> Iterator[FakeCloudflare]:
    state = new_state_dir(cluster_root)
    cf = FakeCloudflare.start(state, token=TOKEN, zones=(ZONE,))
    try:
        yield cf
        assert cf.calls()["invalid"] == []  # the provider's calls, as the documents say
    finally:
        cf.stop()
        remove_state_dir(state)


@pytest.fixture(scope="module")
def zone_server(fake: FakeCloudflare) -> Iterator[FakeZoneServer]:
    with FakeZoneServer(fake, ZONE) as server:
        yield server


@pytest.fixture
def provider(
    fake: FakeCloudflare, zone_server: FakeZoneServer, shared_store: Store
) -> Iterator[CloudflareDnsProvider]:
    """A project of its own; the zone emptied after the test, whoever made what."""
    made = make_provider(fake, zone_server, shared_store)
    try:
        yield made
    finally:
        run(made, empty(made.client))


def make_provider(
    fake: FakeCloudflare, zone_server: FakeZoneServer, store: Store, *, project: str | None = None,
    token: str = TOKEN, zone_id: str | None = None, deadline: float = 30.0,
) -> CloudflareDnsProvider:  # fmt: skip
    client = CloudflareDnsClient(
        zone_id=zone_id or fake.zones[ZONE], api_token=token, base_url=fake.url,
        deadline=deadline,
    )  # fmt: skip
    return CloudflareDnsProvider(
        project or f"cf-dns-{next(_serial)}-{os.urandom(2).hex()}", ZONE, store, client,
        resolvers=[Resolver(*zone_server.address)], verify_timeout=5.0,
    )  # fmt: skip


def run(provider: CloudflareDnsProvider, work: Coroutine[Any, Any, T]) -> T:
    async def main() -> T:
        try:
            return await work
        finally:
            await provider.aclose()

    return asyncio.run(main())


async def empty(client: CloudflareDnsClient) -> None:
    for record in await client.list_records():
        await client.delete_record(record.id)


def foreign(fake: FakeCloudflare, name: str, kind: str, content: str, comment: str | None) -> str:
    """A record someone else made in the zone (by hand, or another tool): its id."""
    body: dict[str, Any] = {"name": name, "type": kind, "content": content, "ttl": 1}
    if comment is not None:
        body["comment"] = comment
    answer = httpx.post(
        f"{fake.url}/zones/{fake.zones[ZONE]}/dns_records", json=body,
        headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30,
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    return str(answer.json()["result"]["id"])


def in_zone(fake: FakeCloudflare) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in fake.state()["dns_records"] if r["zone_name"] == ZONE}


def test_the_registry_builds_it_and_it_has_the_capabilities(
    fake: FakeCloudflare, shared_store: Store, tmp_path: Path
) -> None:
    built = registry.dns_provider(cloudflare_config(tmp_path, fake), shared_store)
    assert isinstance(built, CloudflareDnsProvider) and isinstance(built, DnsProvider)
    assert isinstance(built, Reconcilable)
    assert built.resolvers == (Resolver("127.0.0.1", 5353),)


def test_a_preview_s_records_cost_nine_calls_and_six_once_made(
    fake: FakeCloudflare, provider: CloudflareDnsProvider
) -> None:
    """What the preview pipeline does (ensure every host, then verify each), then
    what cleanup does (list the environment's records, delete each), counted."""
    hosts = [f"{service}-preview-8.{ZONE}" for service in ("web", "auth", "api")]
    listing, making = "GET /zones/{zone_id}/dns_records", "POST /zones/{zone_id}/dns_records"

    async def preview() -> None:
        for host in hosts:
            await provider.ensure_record(host, "CNAME", "@", proxied=True, environment=PREVIEW_8)
        for host in hosts:
            assert (await provider.verify(host, type="CNAME")).ok

    fake.reset_counters()
    run(provider, preview())
    assert fake.calls()["by_route"] == {listing: 6, making: 3}  # 9 calls for a preview
    fake.reset_counters()
    run(provider, preview())  # the same again: looked at, not written
    assert fake.calls()["by_route"] == {listing: 6}
    records = {r["name"]: r for r in in_zone(fake).values()}
    assert sorted(records) == sorted(hosts)
    assert {r["comment"] for r in records.values()} == {f"branchline:{provider.project} preview-8"}
    # The store mirrors them, with Cloudflare's ids.
    rows = run(provider, _rows(provider))
    assert {(r.name, r.provider_id) for r in rows} == {(n, r["id"]) for n, r in records.items()}

    async def cleanup() -> list[bool]:
        found = await provider.list_records(PREVIEW_8)
        return [await provider.delete_record(r.name, r.type) for r in found]

    fake.reset_counters()
    assert run(provider, cleanup()) == [True, True, True]
    assert fake.calls()["by_route"] == {
        listing: 4, "DELETE /zones/{zone_id}/dns_records/{dns_record_id}": 3,
    }  # fmt: skip
    assert in_zone(fake) == {} and run(provider, _rows(provider)) == []


def test_a_changed_record_is_updated_not_duplicated(
    fake: FakeCloudflare, provider: CloudflareDnsProvider
) -> None:
    first = run(provider, provider.ensure_record("api", "A", "192.0.2.1", environment=PREVIEW_8))
    moved = run(provider, provider.ensure_record("api", "A", "192.0.2.2"))
    assert (moved.content, moved.environment, moved.created_at) == (
        "192.0.2.2", "preview-8", first.created_at)  # fmt: skip
    assert [r["content"] for r in in_zone(fake).values()] == ["192.0.2.2"]


def test_a_record_branchline_did_not_make_is_refused_and_left_alone(
    fake: FakeCloudflare, provider: CloudflareDnsProvider
) -> None:
    hand_made = foreign(fake, f"api-preview-8.{ZONE}", "CNAME", "elsewhere.example.net", None)
    other_project = foreign(fake, f"web.{ZONE}", "A", "192.0.2.9", "branchline:someone-else")
    before = in_zone(fake)
    with pytest.raises(UsageError, match="did not make") as refused:
        run(provider, provider.ensure_record("api-preview-8", "CNAME", "@", proxied=True))
    assert "api-preview-8.preview.test" in refused.value.message
    with pytest.raises(UsageError, match="did not make"):
        run(provider, provider.ensure_record("web", "A", "192.0.2.10"))
    assert run(provider, provider.delete_record("api-preview-8")) is False
    assert run(provider, provider.delete_record("web", "A")) is False
    assert run(provider, provider.get_record("web", "A")) is None
    assert run(provider, provider.list_records()) == []
    assert run(provider, provider.reconcile()) == []
    assert in_zone(fake) == before and set(before) == {hand_made, other_project}


def test_reconcile_removes_only_branchline_s_orphans(
    fake: FakeCloudflare, zone_server: FakeZoneServer, provider: CloudflareDnsProvider,
    shared_store: Store,
) -> None:  # fmt: skip
    kept = run(provider, provider.ensure_record("kept", "A", "192.0.2.1", environment=PREVIEW_8))
    # A crash after Cloudflare made a record and before the store heard of it: the
    # intent log says `creating`.
    run(provider, _intent(provider, f"A:orphan.{ZONE}", "creating"))
    orphan = foreign(fake, f"orphan.{ZONE}", "A", "192.0.2.2", f"branchline:{provider.project}")
    # Someone else's, and another project's of branchline: never touched.
    theirs = foreign(fake, f"theirs.{ZONE}", "A", "192.0.2.3", "managed by hand")
    neighbour = make_provider(fake, zone_server, shared_store)
    run(neighbour, neighbour.ensure_record("next-door", "A", "192.0.2.4"))
    # A row whose record someone deleted in the dashboard.
    gone = run(provider, provider.ensure_record("gone", "TXT", "bye"))
    (gone_id,) = [i for i, r in in_zone(fake).items() if r["name"] == gone.name]
    run(provider, provider.client.delete_record(gone_id))

    planned = run(provider, provider.reconcile(dry_run=True))
    assert sorted((f.target, f.action, f.done) for f in planned) == [
        (f"A orphan.{ZONE}", "delete", False), (f"TXT gone.{ZONE}", "forget", False),
    ]  # fmt: skip
    assert orphan in in_zone(fake)
    done = run(provider, provider.reconcile())
    assert sorted((f.target, f.action, f.done) for f in done) == [
        (f"A orphan.{ZONE}", "delete", True), (f"TXT gone.{ZONE}", "forget", True),
    ]  # fmt: skip
    names = sorted(r["name"] for r in in_zone(fake).values())
    assert names == [f"kept.{ZONE}", f"next-door.{ZONE}", f"theirs.{ZONE}"]
    assert theirs in in_zone(fake)
    assert [r.name for r in run(provider, _rows(provider))] == [kept.name]
    assert run(provider, _intent(provider, f"A:orphan.{ZONE}")) == "deleted"
    assert run(provider, _intent(provider, f"A:kept.{ZONE}")) == "ready"
    assert run(provider, provider.reconcile()) == []  # nothing left to do


def test_rate_limits_are_waited_out_within_the_deadline(
    fake: FakeCloudflare, provider: CloudflareDnsProvider
) -> None:
    fake.inject("rate-limit", times=2, method="POST", path="/zones/{zone_id}/dns_records",
                retry_after=0.3)  # fmt: skip
    began = time.monotonic()
    made = run(provider, provider.ensure_record("limited", "A", "192.0.2.5"))
    assert made.content == "192.0.2.5" and time.monotonic() - began >= 0.6
    assert provider.client.count.retries == 2
    assert len(in_zone(fake)) == 1  # waited, not sent twice
    # A wait longer than the call's deadline fails at once, saying so.
    impatient = CloudflareDnsClient(zone_id=fake.zones[ZONE], api_token=TOKEN, base_url=fake.url,
                                    deadline=1.0)  # fmt: skip
    fake.inject("rate-limit", times=1, method="GET", path="/zones/{zone_id}/dns_records",
                retry_after=60)  # fmt: skip
    began = time.monotonic()
    with pytest.raises(CloudflareError, match="rate limit") as limited:
        asyncio.run(_closing(impatient, impatient.list_records()))
    assert time.monotonic() - began < 5 and "deadline" in limited.value.message


def test_a_get_s_server_error_is_asked_again_a_write_s_is_not(
    fake: FakeCloudflare, provider: CloudflareDnsProvider
) -> None:
    fake.inject("error", times=2, method="GET", path="/zones/{zone_id}/dns_records", status=503)
    assert run(provider, provider.list_records()) == []
    assert provider.client.count.retries == 2
    fake.inject("error", times=1, method="POST", path="/zones/{zone_id}/dns_records", status=500)
    with pytest.raises(CloudflareError, match="500"):
        run(provider, provider.ensure_record("once", "A", "192.0.2.6"))
    assert in_zone(fake) == {}
    assert run(provider, provider.ensure_record("once", "A", "192.0.2.6")).content == "192.0.2.6"


def test_refusals_name_the_setting_to_fix(
    fake: FakeCloudflare, zone_server: FakeZoneServer, shared_store: Store
) -> None:
    wrong = "wrong-token-that-must-not-show"
    refused = make_provider(fake, zone_server, shared_store, token=wrong)
    with pytest.raises(CloudflareError) as bad_token:
        run(refused, refused.list_records())
    assert "CLOUDFLARE_API_TOKEN" in bad_token.value.hint and "DNS" in bad_token.value.hint
    assert wrong not in f"{bad_token.value.message} {bad_token.value.hint}"
    nowhere = make_provider(fake, zone_server, shared_store, zone_id="0" * 32)
    with pytest.raises(CloudflareError) as bad_zone:
        run(nowhere, nowhere.ensure_record("api", "A", "192.0.2.7"))
    assert "[dns.cloudflare] zone_id" in bad_zone.value.hint
    tokenless = make_provider(fake, zone_server, shared_store, token="")
    with pytest.raises(CloudflareError, match="no Cloudflare API token") as missing:
        run(tokenless, tokenless.list_records())
    assert "CLOUDFLARE_API_TOKEN" in missing.value.hint


def test_verify_polls_real_dns_until_the_record_appears(
    fake: FakeCloudflare, zone_server: FakeZoneServer, provider: CloudflareDnsProvider
) -> None:
    async def appear_later() -> tuple[float, Any]:
        async def make() -> None:
            await asyncio.sleep(0.3)  # the record is made while verify polls
            await provider.ensure_record("late", "A", "192.0.2.8")

        began = time.monotonic()
        made = asyncio.create_task(make())
        result = await provider.verify("late", type="A", expect="192.0.2.8", timeout=30.0)
        await made
        return time.monotonic() - began, result

    asked = zone_server.queries
    elapsed, result = run(provider, appear_later())
    assert result.ok and result.answer == ("192.0.2.8",) and result.attempts > 1
    assert 0.3 <= elapsed < 10.0  # as soon as it is there (a loaded machine is slow)
    assert zone_server.queries - asked >= result.attempts  # real queries, one per attempt
    missing = run(provider, provider.verify("never-made", type="A", timeout=2.0))
    assert not missing.ok and missing.rcode == "NXDOMAIN"
    assert missing.error is not None and "never-made.preview.test" in missing.error
    assert f"127.0.0.1:{zone_server.address[1]}: NXDOMAIN" in missing.error


def test_config_check_reaches_the_zone(
    fake: FakeCloudflare, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", TOKEN)  # the default place of the token
    said = asyncio.run(registry.verify_dns(cloudflare_config(tmp_path, fake)))
    assert said is not None and ZONE in said and "reachable" in said
    other = fake.add_zone("other-zone.test")
    with pytest.raises(UsageError, match=r"is not 'preview\.test'"):
        asyncio.run(registry.verify_dns(cloudflare_config(tmp_path, fake, zone_id=other)))
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", "nope")
    with pytest.raises(CloudflareError) as bad:
        asyncio.run(registry.verify_dns(cloudflare_config(tmp_path, fake)))
    assert "CLOUDFLARE_API_TOKEN" in bad.value.hint
    # `api_token` in the file wins over the variable.
    named = cloudflare_config(tmp_path, fake, token="${MY_CF_TOKEN}", env={"MY_CF_TOKEN": TOKEN})
    assert "reachable" in str(asyncio.run(registry.verify_dns(named)))


# -- helpers ---------------------------------------------------------------------------


async def _rows(provider: CloudflareDnsProvider) -> list[dns_rows.DnsRow]:
    async with provider.store.connect() as conn:
        return await dns_rows.list_all(conn, provider.project)


async def _intent(provider: CloudflareDnsProvider, name: str, state: str | None = None) -> str:
    """The intent log's state of resource `name` (after writing `state`, if given)."""
    async with provider.store.connect() as conn:
        if state is not None:
            await resources.record(conn, provider.project, "dns_record", name, state)
        entry = await resources.get(conn, provider.project, "dns_record", name)
    assert entry is not None
    return entry.state


async def _closing(client: CloudflareDnsClient, work: Coroutine[Any, Any, T]) -> T:
    try:
        return await work
    finally:
        await client.aclose()


def cloudflare_config(
    tmp_path: Path, fake: FakeCloudflare, *, zone_id: str | None = None,
    token: str | None = None, env: dict[str, str] | None = None,
) -> Config:  # fmt: skip
    (tmp_path / "services" / "api").mkdir(parents=True, exist_ok=True)
    text = f"""\
[project]
name = "cfdns"
zone = "{ZONE}"

[database]
migrate = "true"

[dns]
provider = "cloudflare"

[dns.cloudflare]
zone_id = "{zone_id or fake.zones[ZONE]}"
api_url = "{fake.url}"
resolvers = ["127.0.0.1:5353"]
{f'api_token = "{token}"' if token else ""}

[services.api]
path = "services/api"
run = "true"
"""
    return load_config_text(text, tmp_path / "branchline.toml", env or {})
