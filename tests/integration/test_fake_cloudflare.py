"""The fake Cloudflare API, driven through the official `cloudflare` SDK where it makes
the call and raw httpx elsewhere: every request and every answer held to Cloudflare's
documents (none may be invalid but the deliberate ones), Cloudflare's envelope and
error codes (not found, bad token, duplicate DNS records, rate limits on demand),
secrets never shown, each deployed version answering over HTTP (a rollback changes
what answers), and a stop that leaves nothing running. Versions run on the
echo-for-tests stand-in here; tests/integration/test_fake_cloudflare_workerd.py runs
them in workerd."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudflare
import httpx
import pytest
from cloudflare import AsyncCloudflare, Cloudflare

from branchline.fakes.cloudflare import FakeCloudflare
from branchline.fakes.cloudflare.app import build_app
from branchline.fakes.cloudflare.runners import EchoRunnerForTests
from branchline.fakes.running import kill_group
from tests.conftest import leftover_processes, new_state_dir, remove_state_dir

pytestmark = pytest.mark.integration

TOKEN = "cf-fake-token-0123456789abcdef"
ZONE = "example.com"
SECRET = "s3cret-value-that-must-never-show"
# These tests tell versions apart by their text: the stand-in that answers with it
# (test_fake_cloudflare_workerd runs real Workers).
ECHO = "echo-for-tests"
# (method, path) of the requests the tests send against the documents on purpose.
DELIBERATE: list[tuple[str, str]] = []


@pytest.fixture(scope="module")
def fake(cluster_root: Path) -> Iterator[FakeCloudflare]:
    state = new_state_dir(cluster_root)
    cf = FakeCloudflare.start(state, token=TOKEN, zones=(ZONE, "other.test"), runner=ECHO)
    try:
        yield cf
        # The SDK's requests and the fake's answers: all as Cloudflare's documents say.
        invalid = [x for x in cf.calls()["invalid"]
                   if (x["method"], x["path"]) not in DELIBERATE]  # fmt: skip
        assert invalid == []
    finally:
        cf.stop()
        remove_state_dir(state)


def sdk(fake: FakeCloudflare, token: str = TOKEN, *, retries: int = 0) -> Cloudflare:
    return Cloudflare(api_token=token, base_url=fake.url, max_retries=retries)


def raw(fake: FakeCloudflare, token: str | None = TOKEN) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=fake.url, headers=headers, timeout=30)


def module(text: str) -> tuple[str, bytes, str]:
    return ("worker.js", text.encode(), "application/javascript+module")


def upload(fake: FakeCloudflare, name: str, text: str, **metadata: Any) -> Any:
    meta = {"main_module": "worker.js", "compatibility_date": "2024-08-06", **metadata}
    return sdk(fake).workers.scripts.update(
        name,
        account_id=fake.account_id,
        metadata=meta,
        files=[module(text)],
    )


def new_version(fake: FakeCloudflare, name: str, text: str, **metadata: Any) -> dict[str, Any]:
    """A version uploaded with the SDK's request; its result read as JSON (the SDK's
    5.9 model of a version's bindings does not build under pydantic 2.14)."""
    meta = {"main_module": "worker.js", "compatibility_date": "2024-08-06", **metadata}
    answer = sdk(fake).workers.scripts.versions.with_raw_response.create(
        name,
        account_id=fake.account_id,
        metadata=meta,
        files=[module(text)],
    )
    body: dict[str, Any] = json.loads(answer.http_response.text)
    assert body["success"] is True and body["errors"] == []
    return dict(body["result"])


def answer_of(fake: FakeCloudflare, name: str) -> httpx.Response:
    """What the deployed script answers (a health check's GET)."""
    return httpx.get(fake.script_url(name) + "/health", timeout=10)


def envelope_error(response: httpx.Response) -> tuple[int, int]:
    body = response.json()
    assert body["success"] is False and body["result"] is None and body["messages"] == []
    assert body["errors"] and set(body["errors"][0]) >= {"code", "message"}
    return response.status_code, body["errors"][0]["code"]


def test_an_upload_deploys_and_the_deployed_version_answers(fake: FakeCloudflare) -> None:
    made = upload(
        fake, "web", "export default { v: 'web-1' }",
        bindings=[{"type": "plain_text", "name": "MODE", "text": "preview"},
                  {"type": "secret_text", "name": "API_KEY", "text": SECRET}],
        compatibility_flags=["nodejs_compat"],
    )  # fmt: skip
    assert made.id == "web" and made.etag
    answer = answer_of(fake, "web")
    assert answer.status_code == 200
    assert answer.text == "export default { v: 'web-1' }"
    scripts = sdk(fake).workers.scripts.list(account_id=fake.account_id)
    assert "web" in [s.id for s in scripts]
    # The module is kept as uploaded, byte for byte; the secret by name only.
    kept = fake.state()["scripts"]["web"]
    (version,) = kept["versions"]
    assert (
        version["modules"]["worker.js"]["sha256"]
        == hashlib.sha256(b"export default { v: 'web-1' }").hexdigest()
    )
    assert version["compatibility_flags"] == ["nodejs_compat"]
    assert {"type": "secret_text", "name": "API_KEY"} in version["bindings"]
    assert {"type": "plain_text", "name": "MODE", "text": "preview"} in version["bindings"]
    assert kept["secrets"] == ["API_KEY"]
    assert kept["deployed_version"] == version["id"] == fake.running_version("web")
    with raw(fake) as client:
        detail = client.get(f"/accounts/{fake.account_id}/workers/scripts/web/versions/"
                            f"{version['id']}").json()["result"]  # fmt: skip
        download = client.get(f"/accounts/{fake.account_id}/workers/scripts/web",
                              headers={"Accept": "application/javascript"})  # fmt: skip
    assert {"type": "secret_text", "name": "API_KEY"} in detail["resources"]["bindings"]
    assert SECRET not in json.dumps(detail)
    assert detail["resources"]["script_runtime"]["compatibility_flags"] == ["nodejs_compat"]
    assert download.text == sdk(fake).workers.scripts.get("web", account_id=fake.account_id)
    assert download.text == "export default { v: 'web-1' }"


def test_versions_deployments_and_a_rollback_change_what_answers(fake: FakeCloudflare) -> None:
    first = upload(fake, "api", "api v1")
    assert first.id == "api"
    one = fake.running_version("api")
    two = new_version(fake, "api", "api v2", annotations={"workers/message": "second"})
    assert two["number"] == 2 and two["annotations"] == {"workers/message": "second"}
    # A version alone changes nothing that answers.
    assert answer_of(fake, "api").text == "api v1"
    cf = sdk(fake)
    listed = cf.workers.scripts.versions.list("api", account_id=fake.account_id)
    assert [v.id for v in listed] == [two["id"], one]
    deployed = cf.workers.scripts.deployments.create(
        "api", account_id=fake.account_id, strategy="percentage",
        versions=[{"version_id": two["id"], "percentage": 100}],
    )  # fmt: skip
    assert deployed.versions[0].version_id == two["id"]
    assert answer_of(fake, "api").text == "api v2"
    assert answer_of(fake, "api").headers["cf-fake-version"] == two["id"]
    # Rollback: the earlier version deployed again answers again.
    cf.workers.scripts.deployments.create(
        "api", account_id=fake.account_id, strategy="percentage",
        versions=[{"version_id": one, "percentage": 100}],
    )  # fmt: skip
    assert answer_of(fake, "api").text == "api v1"
    # The SDK (5.9) pages deployments by `result.items`; the document (and the fake)
    # answer `result.deployments`: read from the SDK's raw answer.
    history = cf.workers.scripts.deployments.with_raw_response.list(
        "api", account_id=fake.account_id
    )
    newest = json.loads(history.http_response.text)["result"]["deployments"]
    assert [d["versions"][0]["version_id"] for d in newest] == [one, two["id"], one]
    with raw(fake) as client:
        missing = client.get(f"/accounts/{fake.account_id}/workers/scripts/api/versions/"
                             "00000000-0000-0000-0000-000000000000")  # fmt: skip
        split = client.post(
            f"/accounts/{fake.account_id}/workers/scripts/api/deployments",
            json={"strategy": "percentage", "versions": [
                {"version_id": one, "percentage": 50}, {"version_id": two["id"], "percentage": 50}
            ]},
        )  # fmt: skip
    assert envelope_error(missing) == (404, 10007)
    assert envelope_error(split) == (400, 10021)
    assert "one version at 100%" in split.json()["errors"][0]["message"]


def test_secrets_are_kept_redeployed_and_never_shown(fake: FakeCloudflare) -> None:
    upload(fake, "auth", "auth v1")
    cf = sdk(fake)
    put = cf.workers.scripts.secrets.update(
        "auth", account_id=fake.account_id, name="SESSION_KEY", text=SECRET, type="secret_text"
    )
    assert (put.name, put.type) == ("SESSION_KEY", "secret_text")
    names = [s.name for s in cf.workers.scripts.secrets.list("auth", account_id=fake.account_id)]
    assert names == ["SESSION_KEY"]
    got = cf.workers.scripts.secrets.get("SESSION_KEY", account_id=fake.account_id,
                                         script_name="auth")  # fmt: skip
    assert got.name == "SESSION_KEY"
    # A secret change is a new version, deployed at once (the script runs).
    kept = fake.state()["scripts"]["auth"]
    assert len(kept["versions"]) == 2 and kept["deployed_version"] == kept["versions"][1]["id"]
    assert fake.running_version("auth") == kept["versions"][1]["id"]
    cf.workers.scripts.secrets.delete("SESSION_KEY", account_id=fake.account_id,
                                      script_name="auth")  # fmt: skip
    assert list(cf.workers.scripts.secrets.list("auth", account_id=fake.account_id)) == []
    with pytest.raises(cloudflare.NotFoundError):
        cf.workers.scripts.secrets.get("SESSION_KEY", account_id=fake.account_id,
                                       script_name="auth")  # fmt: skip
    # No answer, no state and no log line holds a secret's value.
    assert SECRET not in json.dumps(fake.state())
    assert SECRET not in fake.log_file.read_text()


def test_a_deleted_script_stops_answering(fake: FakeCloudflare) -> None:
    upload(fake, "gone", "soon gone")
    url = fake.script_url("gone")
    assert httpx.get(url, timeout=10).text == "soon gone"
    cf = sdk(fake)
    cf.workers.scripts.delete("gone", account_id=fake.account_id)
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=10)
    with pytest.raises(cloudflare.NotFoundError) as missing:
        cf.workers.scripts.get("gone", account_id=fake.account_id)
    assert missing.value.status_code == 404
    assert missing.value.body["errors"][0]["code"] == 10007


def test_dns_records_filters_updates_and_duplicates(fake: FakeCloudflare) -> None:
    zone = fake.zones[ZONE]
    cf = sdk(fake)
    cname = cf.dns.records.create(zone_id=zone, name="api-preview-8.example.com", type="CNAME",
                                  content="api-preview-8.branchline-fake.workers.dev",
                                  proxied=True, ttl=1)  # fmt: skip
    address = cf.dns.records.create(zone_id=zone, name="web-preview-8", type="A",
                                    content="192.0.2.8", ttl=300, comment="preview 8")  # fmt: skip
    assert cname.id and cname.proxied is True
    assert address.name == "web-preview-8.example.com"  # a bare label lives in the zone
    by_name = cf.dns.records.list(zone_id=zone, name={"exact": "api-preview-8.example.com"})
    assert [r.id for r in by_name] == [cname.id]
    by_type = cf.dns.records.list(zone_id=zone, type="A", name="web-preview-8.example.com")
    assert [r.id for r in by_type] == [address.id]
    assert list(cf.dns.records.list(zone_id=zone, type="TXT")) == []
    assert cf.dns.records.get(address.id, zone_id=zone).comment == "preview 8"
    edited = cf.dns.records.edit(address.id, zone_id=zone, name="web-preview-8.example.com",
                                 type="A", content="192.0.2.9", ttl=120)  # fmt: skip
    assert (edited.content, edited.ttl, edited.comment) == ("192.0.2.9", 120, "preview 8")
    overwritten = cf.dns.records.update(address.id, zone_id=zone, name="web-preview-8",
                                        type="A", content="192.0.2.10", ttl=1)  # fmt: skip
    assert (overwritten.content, overwritten.comment) == ("192.0.2.10", None)
    with raw(fake) as client:
        # A PATCH of one field (what PATCH is for).
        patched = client.patch(f"/zones/{zone}/dns_records/{address.id}", json={"ttl": 600})
        assert patched.status_code == 200, patched.text
        assert patched.json()["result"]["ttl"] == 600
    # Cloudflare's refusals: the same record twice; a CNAME beside an A.
    with pytest.raises(cloudflare.BadRequestError) as twice:
        cf.dns.records.create(zone_id=zone, name="web-preview-8.example.com", type="A",
                              content="192.0.2.10", ttl=1)  # fmt: skip
    assert twice.value.body["errors"][0]["code"] == 81057
    with pytest.raises(cloudflare.BadRequestError) as beside:
        cf.dns.records.create(zone_id=zone, name="web-preview-8.example.com", type="CNAME",
                              content="elsewhere.example.net", ttl=1)  # fmt: skip
    assert beside.value.body["errors"][0]["code"] == 81053
    cf.dns.records.delete(cname.id, zone_id=zone)
    with pytest.raises(cloudflare.NotFoundError) as gone:
        cf.dns.records.get(cname.id, zone_id=zone)
    assert gone.value.body["errors"][0]["code"] == 81044
    with pytest.raises(cloudflare.NotFoundError):
        cf.dns.records.list(zone_id="0" * 32)
    zones = cf.zones.list(name=ZONE)
    assert [(z.id, z.name) for z in zones] == [(zone, ZONE)]


def test_custom_domains_routes_and_the_subdomain(fake: FakeCloudflare) -> None:
    upload(fake, "edge", "edge v1")
    cf = sdk(fake)
    account, zone = fake.account_id, fake.zones[ZONE]
    assert cf.workers.subdomains.get(account_id=account).subdomain == "branchline-fake"
    assert cf.workers.subdomains.update(account_id=account, subdomain="acme").subdomain == "acme"
    domain = cf.workers.domains.update(account_id=account, hostname="edge.example.com",
                                       service="edge", zone_id=zone)  # fmt: skip
    assert (domain.hostname, domain.service, domain.zone_name) == (
        "edge.example.com", "edge", ZONE)  # fmt: skip
    assert domain.id is not None
    listed = cf.workers.domains.list(account_id=account, hostname="edge.example.com")
    assert [d.id for d in listed] == [domain.id]
    assert cf.workers.domains.get(domain.id, account_id=account).service == "edge"
    cf.workers.domains.delete(domain.id, account_id=account)
    with pytest.raises(cloudflare.NotFoundError):
        cf.workers.domains.get(domain.id, account_id=account)
    route = cf.workers.routes.create(zone_id=zone, pattern="edge.example.com/*", script="edge")
    assert [r.id for r in cf.workers.routes.list(zone_id=zone)] == [route.id]
    moved = cf.workers.routes.update(route.id, zone_id=zone, pattern="edge.example.com/v2/*",
                                     script="edge")  # fmt: skip
    assert moved.pattern == "edge.example.com/v2/*"
    assert cf.workers.routes.get(route.id, zone_id=zone).script == "edge"
    assert cf.workers.routes.delete(route.id, zone_id=zone).id == route.id
    assert list(cf.workers.routes.list(zone_id=zone)) == []


def test_bad_tokens_unknown_paths_and_other_accounts(fake: FakeCloudflare) -> None:
    with pytest.raises(cloudflare.PermissionDeniedError) as refused:
        sdk(fake, "not-the-token").workers.scripts.list(account_id=fake.account_id)
    assert refused.value.body["errors"][0]["code"] == 10000
    with raw(fake, token=None) as client:
        anonymous = client.get(f"/zones/{fake.zones[ZONE]}/dns_records")
        assert envelope_error(anonymous) == (400, 9106)
    with raw(fake) as client:
        assert envelope_error(client.get("/nowhere")) == (404, 7000)
        assert envelope_error(client.post("/zones", json={})) == (405, 7001)
        other = client.get(f"/accounts/{'f' * 32}/workers/scripts")
        assert envelope_error(other) == (403, 10000)
    # The token is never in the fake's log.
    assert TOKEN not in fake.log_file.read_text()


def test_rate_limits_on_demand(fake: FakeCloudflare) -> None:
    fake.inject("rate-limit", times=1, path="/zones", retry_after=7)
    with pytest.raises(cloudflare.RateLimitError) as limited:
        sdk(fake).zones.list()
    assert limited.value.response.headers["retry-after"] == "7"
    assert limited.value.body["errors"][0]["code"] == 971
    # The SDK waits out a short Retry-After and gets the answer.
    fake.inject("rate-limit", times=1, path="/zones", retry_after=0)
    assert [z.name for z in sdk(fake, retries=2).zones.list(name=ZONE)] == [ZONE]
    fake.inject("error", times=1, method="GET", path="/zones", status=503)
    with pytest.raises(cloudflare.InternalServerError):
        sdk(fake).zones.list()
    assert fake.calls()["faults_served"] >= 3


def test_invalid_requests_get_the_envelope_and_are_counted(fake: FakeCloudflare) -> None:
    before = len(fake.calls()["invalid"])
    zone = fake.zones[ZONE]
    with raw(fake) as client:
        path = f"/zones/{zone}/dns_records"
        DELIBERATE.append(("POST", path))
        not_an_address = client.post(path, json={"type": "A", "name": "x", "content": "nope"})
        assert envelope_error(not_an_address) == (400, 1004)
        secrets = f"/accounts/{fake.account_id}/workers/scripts/web/secrets"
        DELIBERATE.append(("PUT", secrets))
        # A secret of a type the document does not know: refused, its value not repeated.
        bad_secret = client.put(secrets, json={"name": "X", "text": SECRET, "type": "plain"})
        assert envelope_error(bad_secret) == (400, 10021)
        assert SECRET not in bad_secret.text
        # An upload the document refuses (usage_model), a secret in its metadata.
        versions = f"/accounts/{fake.account_id}/workers/scripts/web/versions"
        DELIBERATE.append(("POST", versions))
        metadata = {
            "main_module": "worker.js",
            "usage_model": "bogus",
            "bindings": [{"type": "secret_text", "name": "K", "text": SECRET}],
        }
        bad_upload = client.post(versions, files=[
            ("metadata", (None, json.dumps(metadata), "application/json")),
            ("files", ("worker.js", b"x", "application/javascript+module")),
        ])  # fmt: skip
        assert envelope_error(bad_upload) == (400, 10021)
        assert SECRET not in bad_upload.text
        badly_named = f"/accounts/{fake.account_id}/workers/scripts/Not_Lower"
        DELIBERATE.append(("DELETE", badly_named))
        assert envelope_error(client.delete(badly_named)) == (400, 10021)
    invalid = fake.calls()["invalid"][before:]
    assert [(x["kind"], x["method"], x["status"]) for x in invalid] == [
        ("request", "POST", 400), ("request", "PUT", 400), ("request", "POST", 400),
        ("request", "DELETE", 400),
    ]  # fmt: skip
    assert "nope" in invalid[0]["errors"]
    assert SECRET not in json.dumps(invalid) and SECRET not in fake.log_file.read_text()
    assert not [r for r in fake.state()["dns_records"] if r["name"].startswith("x.")]


def test_in_process_app_serves_the_async_sdk(tmp_path: Path) -> None:
    runner = EchoRunnerForTests(tmp_path)
    app = build_app(token=TOKEN, runner=runner, zones=(ZONE,))

    async def work() -> str:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
            cf = AsyncCloudflare(api_token=TOKEN, base_url="http://fake-cloudflare.test/client/v4",
                                 http_client=http, max_retries=0)  # fmt: skip
            account = app.world.account_id
            await cf.workers.scripts.update(
                "inproc", account_id=account, files=[module("in process")],
                metadata={"main_module": "worker.js", "compatibility_date": "2024-08-06"},
            )  # fmt: skip
            return await cf.workers.scripts.get("inproc", account_id=account)

    try:
        assert asyncio.run(work()) == "in process"
        assert httpx.get(app.running["inproc"].url, timeout=10).text == "in process"
    finally:
        app.close()
    assert app.calls()["invalid"] == []
    assert runner.processes == {}


def test_stop_leaves_nothing_running(cluster_root: Path) -> None:
    state = new_state_dir(cluster_root)
    cf = FakeCloudflare.start(state, token=TOKEN, runner=ECHO)
    try:
        upload(cf, "one", "one")
        upload(cf, "two", "two")
        # The fake and the two versions it runs.
        assert len(leftover_processes(state)) == 3
        assert cf.stop() == 0
        assert leftover_processes(state) == []
    finally:
        cf.stop()
        remove_state_dir(state)


def test_a_fake_killed_with_its_group_takes_its_workers_along(cluster_root: Path) -> None:
    state = new_state_dir(cluster_root)
    cf = FakeCloudflare.start(state, token=TOKEN, runner=ECHO)
    try:
        upload(cf, "one", "one")
        assert len(leftover_processes(state)) == 2
        kill_group(cf.process)  # what `stop` does to a fake that hangs
        assert leftover_processes(state) == []
    finally:
        cf.stop()
        remove_state_dir(state)
