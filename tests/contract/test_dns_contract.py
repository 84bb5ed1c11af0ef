"""The DnsProvider contract, for the in-memory fake and the local provider (records
in the store, answered by a real DNS server): ensure creates or updates in place,
records are listed by environment, a CNAME stands alone, names are validated,
delete is True once, and verify sees what is recorded."""

from __future__ import annotations

import pytest

from branchline.environment import Environment
from branchline.errors import UsageError
from branchline.providers.dns import DnsProvider
from tests.contract.conftest import ZONE, DnsContract

PREVIEW_8 = Environment.preview(8)


def listed(dns: DnsContract, environment: Environment | None = None) -> list[tuple[str, str]]:
    """(name, type) of the records, sorted here: the order is no part of the contract."""
    return sorted((r.name, r.type) for r in dns.run(dns.provider.list_records(environment)))


def test_the_provider_satisfies_the_protocol(dns: DnsContract) -> None:
    assert isinstance(dns.provider, DnsProvider)


def test_ensure_creates_then_is_idempotent(dns: DnsContract) -> None:
    provider, run = dns.provider, dns.run
    production = Environment.production()
    first = run(provider.ensure_record("web", "A", "192.0.2.10", environment=production))
    assert (first.name, first.type, first.content) == (f"web.{ZONE}", "A", "192.0.2.10")
    assert first.environment == "production" and first.proxied is False
    # The same record named another way (full name, trailing dot, lower-case type).
    again = run(provider.ensure_record(f"web.{ZONE}.", "a", "192.0.2.10"))
    assert again == first  # nothing changed, not even updated_at
    assert run(provider.get_record("web", "A")) == first
    assert run(provider.list_records()) == [first]
    assert run(provider.get_record("web", "TXT")) is None


def test_a_changed_record_is_updated_in_place(dns: DnsContract) -> None:
    provider, run = dns.provider, dns.run
    first = run(provider.ensure_record("api", "A", "192.0.2.10", environment=PREVIEW_8))
    changed = run(provider.ensure_record("api", "A", "192.0.2.11"))
    assert changed.content == "192.0.2.11"
    assert changed.created_at == first.created_at and changed.updated_at >= first.updated_at
    assert changed.environment == "preview-8"  # None keeps the recorded environment
    proxied = run(provider.ensure_record("api", "A", "192.0.2.11", proxied=True))
    assert proxied.proxied and proxied.created_at == first.created_at
    assert run(provider.list_records()) == [proxied]
    retargeted = run(provider.ensure_record("alias", "CNAME", ZONE))
    moved = run(provider.ensure_record("alias", "CNAME", "web.example.com"))
    assert moved.content == "web.example.com" and moved.created_at == retargeted.created_at
    assert listed(dns) == [(f"alias.{ZONE}", "CNAME"), (f"api.{ZONE}", "A")]


def test_records_are_listed_by_environment(dns: DnsContract) -> None:
    provider, run = dns.provider, dns.run
    for label in ["web-preview-8", "api-preview-8"]:
        run(provider.ensure_record(label, "CNAME", ZONE, proxied=True, environment=PREVIEW_8))
    run(provider.ensure_record("api-preview-9", "CNAME", ZONE, environment=Environment.preview(9)))
    run(provider.ensure_record("api", "CNAME", ZONE, environment=Environment.production()))
    run(provider.ensure_record("@", "TXT", "shared"))
    assert listed(dns, PREVIEW_8) == [(f"api-preview-8.{ZONE}", "CNAME"),
                                      (f"web-preview-8.{ZONE}", "CNAME")]  # fmt: skip
    assert all(r.environment == "preview-8" and r.proxied
               for r in run(provider.list_records(PREVIEW_8)))  # fmt: skip
    assert listed(dns, Environment.preview(9)) == [(f"api-preview-9.{ZONE}", "CNAME")]
    assert listed(dns, Environment.preview(10)) == []
    cnames = ["api", "api-preview-8", "api-preview-9", "web-preview-8"]
    assert listed(dns) == sorted([(ZONE, "TXT"), *((f"{n}.{ZONE}", "CNAME") for n in cnames)])


def test_a_cname_cannot_share_its_name(dns: DnsContract) -> None:
    provider, run = dns.provider, dns.run
    run(provider.ensure_record("host", "A", "192.0.2.1"))
    with pytest.raises(UsageError, match="CNAME"):
        run(provider.ensure_record("host", "CNAME", ZONE))
    run(provider.ensure_record("alias", "CNAME", ZONE))
    with pytest.raises(UsageError, match="CNAME"):
        run(provider.ensure_record("alias", "TXT", "x"))
    with pytest.raises(UsageError, match="CNAME"):
        run(provider.ensure_record("alias", "A", "192.0.2.2"))
    assert listed(dns) == [(f"alias.{ZONE}", "CNAME"), (f"host.{ZONE}", "A")]


@pytest.mark.parametrize(
    "name",
    ["api.example.org", f"evil{ZONE}", f"{ZONE}.evil.com", "$(id)", "a;b", "a b", "x" * 300,
     "ünïcode", "../../etc", "*", "", "-api", "_acme"],
)  # fmt: skip
def test_invalid_names_are_refused_and_nothing_is_written(dns: DnsContract, name: str) -> None:
    provider, run = dns.provider, dns.run
    for kind, content in [("A", "192.0.2.1"), ("CNAME", ZONE)]:
        with pytest.raises(UsageError):
            run(provider.ensure_record(name, kind, content))
    with pytest.raises(UsageError):
        run(provider.get_record(name, "A"))
    with pytest.raises(UsageError):
        run(provider.delete_record(name, "A"))
    assert listed(dns) == []


@pytest.mark.parametrize(
    ("kind", "content"),
    [("A", "1.2.3.4; rm -rf /"), ("AAAA", "192.0.2.1"), ("CNAME", "192.0.2.1"), ("TXT", "a\nb"),
     ("MX", "10 mail.example.com")],
)  # fmt: skip
def test_invalid_types_and_contents_are_refused(dns: DnsContract, kind: str, content: str) -> None:
    with pytest.raises(UsageError):
        dns.run(dns.provider.ensure_record("ok", kind, content))
    assert listed(dns) == []


def test_delete_is_true_once_then_false(dns: DnsContract) -> None:
    provider, run = dns.provider, dns.run
    run(provider.ensure_record("gone", "CNAME", ZONE, environment=PREVIEW_8))
    assert run(provider.delete_record("gone")) is True
    assert run(provider.get_record("gone", "CNAME")) is None
    assert run(provider.delete_record("gone")) is False
    assert run(provider.delete_record("gone", "CNAME")) is False
    assert run(provider.delete_record("never-made", "A")) is False
    assert listed(dns) == []


def test_delete_by_type_keeps_the_other_types(dns: DnsContract) -> None:
    provider, run = dns.provider, dns.run
    run(provider.ensure_record("both", "A", "192.0.2.5"))
    run(provider.ensure_record("both", "TXT", "hello"))
    assert run(provider.delete_record("both", "TXT")) is True
    assert listed(dns) == [(f"both.{ZONE}", "A")]
    assert run(provider.delete_record(f"both.{ZONE}")) is True  # every type left
    assert listed(dns) == []


def test_a_txt_record_at_a_service_label_is_deleted_by_name(dns: DnsContract) -> None:
    provider, run = dns.provider, dns.run
    run(provider.ensure_record("_acme-challenge", "TXT", "token-1"))
    assert listed(dns) == [(f"_acme-challenge.{ZONE}", "TXT")]
    assert run(provider.delete_record("_acme-challenge")) is True
    assert run(provider.delete_record("_acme-challenge")) is False
    assert listed(dns) == []


def test_verify_sees_an_ensured_record_and_not_a_missing_one(dns: DnsContract) -> None:
    provider, run = dns.provider, dns.run
    run(provider.ensure_record("api-preview-8", "CNAME", ZONE, proxied=True,
                               environment=PREVIEW_8))  # fmt: skip
    found = run(provider.verify("api-preview-8", timeout=5.0))
    assert found.ok and found.answer == (ZONE,) and found.expect == ZONE
    assert found.name == f"api-preview-8.{ZONE}" and found.type == "CNAME"
    run(provider.ensure_record("v4", "A", "192.0.2.7"))
    assert run(provider.verify("v4", type="A", expect="192.0.2.7", timeout=5.0)).ok
    missing = run(provider.verify("never-made", timeout=0.3))
    assert not missing.ok and missing.answer == ()
    elsewhere = run(provider.verify("v4", type="A", expect="192.0.2.8", timeout=0.3))
    assert not elsewhere.ok and elsewhere.answer == ("192.0.2.7",)
    with pytest.raises(UsageError):
        run(provider.verify("v4", type="A", expect="not an address", timeout=0.3))
    with pytest.raises(UsageError):
        run(provider.verify("$(id)", timeout=0.3))
