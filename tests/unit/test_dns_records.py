"""DNS record validation and the zone server's answers, without sockets or a
database: names, types and contents (hostile input included), the snapshot, and
the resolver's replies to parsed queries."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from dnslib import EDNS0, QTYPE, RCODE, DNSRecord
from hypothesis import given
from hypothesis import strategies as st

from branchline.edge.dns_server import (
    DEFAULT_APEX_A,
    MAX_CHAIN,
    Snapshot,
    ZoneResolver,
    build_snapshot,
)
from branchline.errors import UsageError
from branchline.providers.dns import (
    MAX_TXT,
    record_content,
    record_name,
    record_type,
    same_content,
)
from branchline.store.dns import DnsRow

ZONE = "codex.test"
# Written out independently of the module: what a safe record name looks like.
SAFE_NAME = re.compile(r"(?:_?[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*codex\.test")

HOSTILE_NAMES = [
    "$(rm -rf /)",
    "a;b",
    "`id`",
    "a b",
    "a\nb",
    "a\x00b",
    "x" * 300,
    "ünïcode",
    "🙂",
    "../etc/passwd",
    "a..b",
    "-a",
    "a-",
    "*",
    "*.codex.test",
    "",
    " ",
    "a|b.codex.test",
    "'; DROP TABLE x;--",
    f"{'a' * 64}.codex.test",
    ".".join(["abcdefghij"] * 25) + ".codex.test",  # 275 characters
]


# -- names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("api-preview-8", "api-preview-8.codex.test"),
        ("API-Preview-8", "api-preview-8.codex.test"),
        ("api-preview-8.codex.test", "api-preview-8.codex.test"),
        ("api-preview-8.codex.test.", "api-preview-8.codex.test"),
        ("deep.api.codex.test", "deep.api.codex.test"),
        ("@", "codex.test"),
        ("codex.test", "codex.test"),
        ("CODEX.TEST.", "codex.test"),
        ("xn--bcher-kva.codex.test", "xn--bcher-kva.codex.test"),
        ("a" * 63, "a" * 63 + ".codex.test"),
    ],
)
def test_record_names_inside_the_zone(name: str, expected: str) -> None:
    assert record_name(name, ZONE) == expected


@pytest.mark.parametrize(
    "name", ["api.example.org", "codex.test.evil.com", "evilcodex.test", "test.", "api."]
)
def test_names_outside_the_zone_are_refused_with_a_hint(name: str) -> None:
    with pytest.raises(UsageError, match="outside the zone") as info:
        record_name(name, ZONE)
    assert "codex.test" in info.value.hint


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_are_rejected(name: str) -> None:
    for kind in (None, "A", "CNAME", "TXT"):
        with pytest.raises(UsageError) as info:
            record_name(name, ZONE, type=kind)
        assert info.value.hint
        assert "\n" not in info.value.message and "\x00" not in info.value.message


def test_service_labels_only_for_txt() -> None:
    assert record_name("_acme-challenge", ZONE, type="TXT") == "_acme-challenge.codex.test"
    for kind in ("A", "AAAA", "CNAME", None):
        with pytest.raises(UsageError):
            record_name("_acme-challenge", ZONE, type=kind)
    with pytest.raises(UsageError):
        record_name("a_b", ZONE, type="TXT")


@given(st.text(max_size=300))
def test_any_text_is_a_safe_name_or_rejected(text: str) -> None:
    for kind in ("A", "TXT"):
        try:
            name = record_name(text, ZONE, type=kind)
        except UsageError:
            continue
        assert SAFE_NAME.fullmatch(name), name
        assert len(name) <= 253
        assert all(len(label) <= 63 for label in name.split("."))


def test_a_bad_zone_is_refused() -> None:
    with pytest.raises(UsageError, match="Invalid DNS zone"):
        record_name("api", "not a zone")


# -- types and contents -------------------------------------------------------------


@pytest.mark.parametrize(("given_type", "expected"), [("a", "A"), ("Cname", "CNAME")])
def test_types_are_canonical(given_type: str, expected: str) -> None:
    assert record_type(given_type) == expected


@pytest.mark.parametrize("kind", ["MX", "NS", "SOA", "ANY", "A;B", "", "\uff41", "PTR"])
def test_other_types_are_rejected(kind: str) -> None:
    with pytest.raises(UsageError, match="Unsupported DNS record type"):
        record_type(kind)


@pytest.mark.parametrize(
    ("kind", "content", "expected"),
    [
        ("A", "192.0.2.10", "192.0.2.10"),
        ("AAAA", "2001:DB8:0:0::10", "2001:db8::10"),
        ("AAAA", "::1", "::1"),
        ("CNAME", "codex.test", "codex.test"),
        ("CNAME", "@", "codex.test"),
        ("CNAME", "Web.Example.COM.", "web.example.com"),
        ("TXT", "v=spf1 -all", "v=spf1 -all"),
        ("TXT", "x" * MAX_TXT, "x" * MAX_TXT),
    ],
)
def test_contents_are_canonical(kind: str, content: str, expected: str) -> None:
    assert record_content(kind, content, ZONE) == expected


@pytest.mark.parametrize(
    ("kind", "content"),
    [
        ("A", "1.2.3.4; rm -rf /"),
        ("A", "$(id)"),
        ("A", "999.1.1.1"),
        ("A", "01.2.3.4"),
        ("A", "::1"),
        ("A", ""),
        ("AAAA", "192.0.2.1"),
        ("AAAA", "fe80::1%eth0"),
        ("AAAA", "2001:db8::g"),
        ("CNAME", "$(id).example.com"),
        ("CNAME", "1.2.3.4"),
        ("CNAME", "a b.example.com"),
        ("CNAME", "ünï.example.com"),
        ("CNAME", ""),
        ("CNAME", "x" * 64 + ".example.com"),
        ("CNAME", "_dmarc.example.com"),
        ("TXT", ""),
        ("TXT", "a\nb"),
        ("TXT", "a\x00b"),
        ("TXT", "ünïcode"),
        ("TXT", "x" * (MAX_TXT + 1)),
    ],
)
def test_bad_contents_are_rejected(kind: str, content: str) -> None:
    with pytest.raises(UsageError) as info:
        record_content(kind, content, ZONE)
    assert info.value.hint


def test_same_content_compares_meaning() -> None:
    assert same_content("AAAA", "2001:db8::10", "2001:DB8:0::10")
    assert same_content("CNAME", "Codex.Test.", "codex.test")
    assert not same_content("A", "192.0.2.1", "192.0.2.2")
    assert not same_content("A", "192.0.2.1", "garbage")
    assert not same_content("TXT", "a", "A")


# -- the snapshot and the resolver ----------------------------------------------------


def _row(name: str, kind: str, content: str) -> DnsRow:
    now = datetime.now(UTC)
    return DnsRow(name, kind, content, False, None, None, now, now)


def _resolver(rows: list[DnsRow]) -> tuple[ZoneResolver, Snapshot]:
    snapshot = build_snapshot(ZONE, rows)
    return ZoneResolver(SimpleNamespace(snapshot=snapshot)), snapshot  # type: ignore[arg-type]


def _ask(
    resolver: ZoneResolver, name: str, qtype: str = "A", protocol: str = "tcp", **kw: Any
) -> DNSRecord:
    question = DNSRecord.question(name, qtype, **kw)
    return resolver.resolve(DNSRecord.parse(question.pack()), SimpleNamespace(protocol=protocol))


def _answers(reply: DNSRecord) -> list[tuple[str, str, str]]:
    return [(str(rr.rname), QTYPE[rr.rtype], str(rr.rdata)) for rr in reply.rr]


PREVIEW = [
    _row("api-preview-8.codex.test", "CNAME", "codex.test"),
    _row("txt.deep.codex.test", "TXT", "hello"),
    _row("ext.codex.test", "CNAME", "web.example.com"),
    _row("loop-a.codex.test", "CNAME", "loop-b.codex.test"),
    _row("loop-b.codex.test", "CNAME", "loop-a.codex.test"),
    _row("dangling.codex.test", "CNAME", "nothing.codex.test"),
    _row("other.zone.example", "A", "192.0.2.99"),  # another zone's row: ignored
]


def test_cname_is_followed_to_the_apex_default_a() -> None:
    resolver, _ = _resolver(PREVIEW)
    reply = _ask(resolver, "API-preview-8.codex.test")
    assert reply.header.aa == 1 and reply.header.ra == 0
    assert reply.header.rcode == RCODE.NOERROR
    assert _answers(reply) == [
        ("api-preview-8.codex.test.", "CNAME", "codex.test."),
        ("codex.test.", "A", DEFAULT_APEX_A),
    ]


def test_apex_has_soa_ns_and_a_stored_a_replaces_the_default() -> None:
    resolver, snapshot = _resolver(PREVIEW)
    soa = _ask(resolver, "codex.test", "SOA")
    assert _answers(soa)[0][:2] == ("codex.test.", "SOA")
    assert str(soa.rr[0].rdata.mname) == "ns1.codex.test."
    assert str(soa.rr[0].rdata.rname) == "hostmaster.codex.test."
    assert _answers(_ask(resolver, "codex.test", "NS")) == [
        ("codex.test.", "NS", "ns1.codex.test.")
    ]
    assert _answers(_ask(resolver, "ns1.codex.test")) == [("ns1.codex.test.", "A", "127.0.0.1")]
    moved = build_snapshot(ZONE, [*PREVIEW, _row("codex.test", "A", "10.0.0.5")], previous=snapshot)
    assert moved.serial > snapshot.serial
    reply = _ask(ZoneResolver(SimpleNamespace(snapshot=moved)), "codex.test")  # type: ignore[arg-type]
    assert _answers(reply) == [("codex.test.", "A", "10.0.0.5")]
    same = build_snapshot(ZONE, list(reversed(PREVIEW)), previous=snapshot)
    assert same.serial == snapshot.serial


def test_missing_names_nxdomain_and_other_types_nodata() -> None:
    resolver, _ = _resolver(PREVIEW)
    missing = _ask(resolver, "nope.codex.test")
    assert missing.header.rcode == RCODE.NXDOMAIN and missing.header.aa == 1
    assert not missing.rr and QTYPE[missing.auth[0].rtype] == "SOA"
    for name, qtype in [
        ("txt.deep.codex.test", "A"),
        ("deep.codex.test", "A"),  # an empty non-terminal exists
        ("api-preview-8.codex.test", "TXT"),  # CNAME -> apex, which has no TXT
    ]:
        reply = _ask(resolver, name, qtype)
        assert reply.header.rcode == RCODE.NOERROR, name
        assert QTYPE[reply.auth[0].rtype] == "SOA", name
    assert _answers(_ask(resolver, "txt.deep.codex.test", "TXT")) == [
        ("txt.deep.codex.test.", "TXT", '"hello"')
    ]


def test_chains_stop_at_the_zone_edge_loops_and_dangling_targets() -> None:
    resolver, _ = _resolver(PREVIEW)
    assert _answers(_ask(resolver, "ext.codex.test")) == [
        ("ext.codex.test.", "CNAME", "web.example.com.")
    ]
    loop = _ask(resolver, "loop-a.codex.test")
    assert loop.header.rcode == RCODE.NOERROR and len(loop.rr) == 2
    dangling = _ask(resolver, "dangling.codex.test")
    assert dangling.header.rcode == RCODE.NXDOMAIN and len(dangling.rr) == 1
    chain = [_row(f"c{i}.codex.test", "CNAME", f"c{i + 1}.codex.test") for i in range(20)]
    long_chain = _ask(_resolver(chain)[0], "c0.codex.test")
    assert len(long_chain.rr) == MAX_CHAIN + 1


def test_outside_the_zone_and_odd_queries_are_refused() -> None:
    resolver, _ = _resolver(PREVIEW)
    for name in ["example.org", "other.zone.example", "evilcodex.test", "test"]:
        reply = _ask(resolver, name)
        assert reply.header.rcode == RCODE.REFUSED and reply.header.aa == 0, name
        assert not reply.rr
    chaos = _ask(resolver, "codex.test", "TXT", qclass="CH")
    assert chaos.header.rcode == RCODE.REFUSED
    hostile = DNSRecord.question("x.codex.test")
    hostile.q.qname.label = (b"\xff\xfe", b"codex", b"test")
    reply = resolver.resolve(hostile, SimpleNamespace(protocol="udp"))
    assert reply.header.rcode == RCODE.REFUSED


def test_any_returns_everything_at_the_name() -> None:
    resolver, _ = _resolver(PREVIEW)
    kinds = {QTYPE[rr.rtype] for rr in _ask(resolver, "codex.test", "ANY").rr}
    assert kinds == {"A", "SOA", "NS"}


def test_large_udp_answers_are_truncated_unless_edns_allows_them() -> None:
    resolver, _ = _resolver([_row("big.codex.test", "TXT", "x" * MAX_TXT)])
    over_tcp = _ask(resolver, "big.codex.test", "TXT", protocol="tcp")
    assert b"".join(over_tcp.rr[0].rdata.data).decode() == "x" * MAX_TXT
    assert all(len(part) <= 255 for part in over_tcp.rr[0].rdata.data)
    over_udp = _ask(resolver, "big.codex.test", "TXT", protocol="udp")
    assert over_udp.header.tc == 1 and not over_udp.rr
    small = _resolver([_row("small.codex.test", "TXT", "x" * 600)])[0]
    plain = _ask(small, "small.codex.test", "TXT", protocol="udp")
    assert plain.header.tc == 1
    question = DNSRecord.question("small.codex.test", "TXT")
    question.add_ar(EDNS0(udp_len=1232))
    with_edns = small.resolve(question, SimpleNamespace(protocol="udp"))
    assert with_edns.header.tc == 0 and len(with_edns.rr) == 1


def test_a_resolver_error_is_servfail_not_a_crash() -> None:
    class Broken:
        @property
        def snapshot(self) -> Snapshot:
            raise RuntimeError("boom")

    reply = _ask(ZoneResolver(Broken()), "codex.test")  # type: ignore[arg-type]
    assert reply.header.rcode == RCODE.SERVFAIL
