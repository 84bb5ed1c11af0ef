"""The local DNS provider and its authoritative server, on real Postgres and real
sockets: records in the store, answers to real UDP and TCP queries (dnspython),
refresh on NOTIFY, verify without fixed sleeps, hostile input, clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import psycopg
import pytest

from branchline.edge.dns_server import ZoneServer
from branchline.environment import Environment
from branchline.errors import UsageError
from branchline.postgres import Cluster
from branchline.providers.dns import DnsProvider, DnsRecord
from branchline.providers.dns.local import LocalDnsProvider
from branchline.store import Store, locate_state, resources
from tests.conftest import eventually
from tests.integration.conftest import store_in

pytestmark = pytest.mark.integration
T = TypeVar("T")
E = Environment.parse
ZONE = "codex.test"
PREVIEW = ["api-preview-8", "auth-preview-8", "codex-preview-8"]


@pytest.fixture(scope="module")
def shared_store(pg_cluster: Cluster) -> Store:
    """One state database for the module (each test uses its own project name)."""
    return store_in(pg_cluster, "bl_dns")


class Env:
    """A project's provider and its running zone server."""

    def __init__(self, store: Store, server: ZoneServer) -> None:
        self.store = store
        self.server = server
        self.project = server.project
        self.dns = LocalDnsProvider(self.project, ZONE, store, server.address)

    def query(
        self, name: str, rdtype: str = "A", *, tcp: bool = False, timeout: float = 2.0
    ) -> dns.message.Message:
        request = dns.message.make_query(name, rdtype)
        send = dns.query.tcp if tcp else dns.query.udp
        return send(request, "127.0.0.1", timeout=timeout, port=self.server.port)

    def sql(self, query: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with psycopg.connect(self.store.url, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []


@contextlib.contextmanager
def _server(store: Store, **kw: Any) -> Iterator[ZoneServer]:
    server = ZoneServer(f"p{os.urandom(4).hex()}", ZONE, store, **kw)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def env(shared_store: Store) -> Iterator[Env]:
    # No periodic refresh to speak of: what shows up in answers came by NOTIFY.
    with _server(shared_store, refresh_interval=3600) as server:
        yield Env(shared_store, server)


def run(work: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(work)


def rrsets(response: dns.message.Message) -> list[tuple[str, str, list[str]]]:
    return [
        (str(r.name), dns.rdatatype.to_text(r.rdtype), sorted(str(x) for x in r))
        for r in response.answer
    ]


def rcode(response: dns.message.Message) -> str:
    return dns.rcode.to_text(response.rcode())


# -- the interface and idempotence ------------------------------------------------


def test_provider_satisfies_the_interface(env: Env) -> None:
    assert isinstance(env.dns, DnsProvider)


def test_construction_does_no_io() -> None:
    store = Store(locate_state(Path("/nonexistent"), {"BRANCHLINE_DATABASE_URL": "postgresql://x"}))
    LocalDnsProvider("p", ZONE, store)
    ZoneServer("p", ZONE, store)


def test_ensure_is_idempotent_and_updates_in_place(env: Env) -> None:
    first = run(env.dns.ensure_record("web", "A", "192.0.2.10", environment=E("production")))
    again = run(env.dns.ensure_record("web.codex.test.", "a", "192.0.2.10"))
    assert again == first  # nothing changed: not even updated_at
    assert first.name == "web.codex.test" and first.environment == "production"
    count = "SELECT count(*) FROM branchline.dns_records WHERE project = %s"
    assert env.sql(count, (env.project,)) == [(1,)]

    changed = run(env.dns.ensure_record("web", "A", "192.0.2.11"))
    assert env.sql(count, (env.project,)) == [(1,)]
    assert changed.content == "192.0.2.11" and changed.created_at == first.created_at
    assert changed.updated_at > first.updated_at
    assert changed.environment == "production"  # None keeps the recorded environment
    proxied = run(env.dns.ensure_record("web", "A", "192.0.2.11", proxied=True))
    assert proxied.proxied and proxied.updated_at > changed.updated_at

    async def intent() -> resources.Resource | None:
        async with env.store.connect() as conn:
            return await resources.get(conn, env.project, "dns_record", "A:web.codex.test")

    logged = run(intent())
    assert logged is not None and logged.state == "ready"
    assert logged.environment == "production"
    assert logged.detail == {"content": "192.0.2.11", "proxied": True}


def test_interrupted_intents_are_finished(env: Env) -> None:
    run(env.dns.ensure_record("half", "A", "192.0.2.3"))
    intent = "UPDATE branchline.resources SET state = %s WHERE project = %s AND name = %s"
    env.sql(intent, ("creating", env.project, f"A:half.{ZONE}"))  # as if killed before "ready"
    run(env.dns.ensure_record("half", "A", "192.0.2.3"))
    state = "SELECT state FROM branchline.resources WHERE project = %s AND name = %s"
    assert env.sql(state, (env.project, f"A:half.{ZONE}")) == [("ready",)]
    run(env.dns.delete_record("half"))
    env.sql(intent, ("deleting", env.project, f"A:half.{ZONE}"))  # as if killed after the delete
    assert run(env.dns.delete_record("half")) is False
    assert env.sql(state, (env.project, f"A:half.{ZONE}")) == [("deleted",)]


def test_concurrent_ensures_make_one_record(env: Env) -> None:
    async def many() -> list[DnsRecord]:
        return await asyncio.gather(
            *(env.dns.ensure_record("same", "CNAME", "@", proxied=True) for _ in range(8))
        )

    records = run(many())
    assert {r.content for r in records} == {ZONE}
    assert len(run(env.dns.list_records())) == 1


# -- answers from the server ------------------------------------------------------


def test_preview_cnames_point_at_the_apex_and_resolve(env: Env) -> None:
    for label in PREVIEW:
        record = run(
            env.dns.ensure_record(label, "CNAME", ZONE, proxied=True, environment=E("preview-8"))
        )
        assert record.proxied and record.content == ZONE and record.type == "CNAME"
    for label in PREVIEW:
        result = run(env.dns.verify(label, timeout=5.0))
        assert result.ok, result
        assert result.answer == (ZONE,)

    for tcp in (False, True):
        reply = env.query(f"api-preview-8.{ZONE}", "A", tcp=tcp)
        assert rcode(reply) == "NOERROR"
        assert reply.flags & dns.flags.AA and not reply.flags & dns.flags.RA
        assert rrsets(reply) == [
            (f"api-preview-8.{ZONE}.", "CNAME", [f"{ZONE}."]),
            (f"{ZONE}.", "A", ["127.0.0.1"]),
        ]
    a = run(env.dns.verify("codex-preview-8", type="A", expect="127.0.0.1", timeout=5.0))
    assert a.ok and a.answer == ("127.0.0.1",)


def test_apex_soa_ns_and_default_a(env: Env) -> None:
    soa = env.query(ZONE, "SOA", tcp=True)
    (name, kind, [value]) = rrsets(soa)[0]
    assert (name, kind) == (f"{ZONE}.", "SOA")
    assert value.startswith(f"ns1.{ZONE}. hostmaster.{ZONE}. ")
    serial = int(value.split()[2])
    assert rrsets(env.query(ZONE, "NS")) == [(f"{ZONE}.", "NS", [f"ns1.{ZONE}."])]
    assert rrsets(env.query(ZONE)) == [(f"{ZONE}.", "A", ["127.0.0.1"])]

    run(env.dns.ensure_record("@", "A", "192.0.2.1"))
    assert run(env.dns.verify("@", type="A", timeout=5.0)).ok
    assert rrsets(env.query(ZONE)) == [(f"{ZONE}.", "A", ["192.0.2.1"])]
    later = int(rrsets(env.query(ZONE, "SOA"))[0][2][0].split()[2])
    assert later > serial


def test_txt_aaaa_and_long_txt_over_tcp(env: Env) -> None:
    run(env.dns.ensure_record("_acme-challenge", "TXT", "token-123"))
    run(env.dns.ensure_record("v6", "AAAA", "2001:DB8::10"))
    long_text = "v=" + "x" * 2000
    run(env.dns.ensure_record("big", "TXT", long_text))
    assert run(env.dns.verify("_acme-challenge", type="TXT", timeout=5.0)).ok
    assert run(env.dns.verify("v6", type="AAAA", expect="2001:db8:0::10", timeout=5.0)).ok
    assert run(env.dns.verify("big", type="TXT", timeout=5.0)).ok  # UDP truncates, TCP follows

    assert rrsets(env.query(f"_acme-challenge.{ZONE}", "TXT")) == [
        (f"_acme-challenge.{ZONE}.", "TXT", ['"token-123"'])
    ]
    assert rrsets(env.query(f"v6.{ZONE}", "AAAA", tcp=True)) == [
        (f"v6.{ZONE}.", "AAAA", ["2001:db8::10"])
    ]
    over_udp = env.query(f"big.{ZONE}", "TXT")
    assert over_udp.flags & dns.flags.TC and not over_udp.answer
    over_tcp = env.query(f"big.{ZONE}", "TXT", tcp=True)
    (rdata,) = over_tcp.answer[0]
    assert b"".join(rdata.strings).decode() == long_text
    # A name with only a TXT record: no A (NODATA), not NXDOMAIN.
    nodata = env.query(f"big.{ZONE}", "A")
    assert rcode(nodata) == "NOERROR" and not nodata.answer
    assert dns.rdatatype.to_text(nodata.authority[0].rdtype) == "SOA"


def test_nxdomain_after_delete(env: Env) -> None:
    run(env.dns.ensure_record("gone", "CNAME", "@", environment=E("preview-9")))
    assert run(env.dns.verify("gone", timeout=5.0)).ok
    assert run(env.dns.delete_record("gone"))

    def nxdomain() -> dns.message.Message | None:
        reply = env.query(f"gone.{ZONE}", "CNAME")
        return reply if rcode(reply) == "NXDOMAIN" else None

    reply = eventually(nxdomain)
    assert reply.flags & dns.flags.AA and not reply.answer
    assert dns.rdatatype.to_text(reply.authority[0].rdtype) == "SOA"
    assert rcode(env.query(f"gone.{ZONE}", "A", tcp=True)) == "NXDOMAIN"
    assert run(env.dns.delete_record("gone")) is False
    assert run(env.dns.delete_record("gone", "TXT")) is False
    assert run(env.dns.list_records()) == []
    states = env.sql(
        "SELECT name, state FROM branchline.resources WHERE project = %s", (env.project,)
    )
    assert states == [("CNAME:gone.codex.test", "deleted")]


def test_delete_by_type_keeps_other_types(env: Env) -> None:
    run(env.dns.ensure_record("both", "A", "192.0.2.5"))
    run(env.dns.ensure_record("both", "TXT", "hello"))
    assert run(env.dns.delete_record("both", "TXT"))
    assert [(r.name, r.type) for r in run(env.dns.list_records())] == [("both.codex.test", "A")]
    assert run(env.dns.delete_record("both.codex.test"))
    assert run(env.dns.list_records()) == []


def test_list_records_filters_by_environment(env: Env) -> None:
    for label in PREVIEW:
        run(env.dns.ensure_record(label, "CNAME", ZONE, proxied=True, environment=E("preview-8")))
    run(env.dns.ensure_record("api-preview-9", "CNAME", ZONE, environment=E("preview-9")))
    run(env.dns.ensure_record("api", "CNAME", ZONE, environment=E("production")))
    run(env.dns.ensure_record("@", "TXT", "shared"))
    preview = run(env.dns.list_records(E("preview-8")))
    assert [r.name for r in preview] == [f"{label}.{ZONE}" for label in sorted(PREVIEW)]
    assert all(r.environment == "preview-8" and r.proxied for r in preview)
    assert [r.name for r in run(env.dns.list_records(E("preview-9")))] == [f"api-preview-9.{ZONE}"]
    assert len(run(env.dns.list_records())) == 6
    assert run(env.dns.list_records(E("preview-10"))) == []
    with pytest.raises(UsageError):
        run(env.dns.list_records(E("preview-8; DROP TABLE x")))


# -- outside the zone, hostile input ------------------------------------------------


@pytest.mark.parametrize("name", ["api.example.org", "evilcodex.test", "codex.test.evil.com"])
def test_names_outside_the_zone_are_refused(env: Env, name: str) -> None:
    for tcp in (False, True):
        reply = env.query(name, "A", tcp=tcp)
        assert rcode(reply) == "REFUSED" and not reply.answer
        assert not reply.flags & dns.flags.AA
    with pytest.raises(UsageError, match="outside the zone") as info:
        run(env.dns.ensure_record(name, "A", "192.0.2.1"))
    assert ZONE in info.value.hint


HOSTILE_NAMES = [
    "$(rm -rf /)",
    "a;b",
    "`reboot`",
    "a b",
    "x" * 300,
    "ünïcode",
    "🙂.codex.test",
    "a\nb",
    "../../etc",
    "*",
    "",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_are_rejected_and_nothing_is_written(env: Env, name: str) -> None:
    for kind, content in [("CNAME", ZONE), ("A", "192.0.2.1"), ("TXT", "x")]:
        with pytest.raises(UsageError) as info:
            run(env.dns.ensure_record(name, kind, content))
        assert info.value.hint
    with pytest.raises(UsageError):
        run(env.dns.delete_record(name))
    with pytest.raises(UsageError):
        run(env.dns.verify(name, timeout=0.1))
    assert run(env.dns.list_records()) == []
    assert env.sql(
        "SELECT count(*) FROM branchline.resources WHERE project = %s", (env.project,)
    ) == [(0,)]


@pytest.mark.parametrize(
    ("kind", "content"),
    [
        ("A", "1.2.3.4; rm -rf /"),
        ("A", "$(id)"),
        ("AAAA", "fe80::1%eth0"),
        ("CNAME", "$(id).example.com"),
        ("CNAME", "192.0.2.1"),
        ("TXT", "a\nb"),
        ("TXT", "x" * 2049),
        ("MX", "10 mail.example.com"),
        ("A;B", "192.0.2.1"),
    ],
)
def test_hostile_contents_and_types_are_rejected(env: Env, kind: str, content: str) -> None:
    with pytest.raises(UsageError):
        run(env.dns.ensure_record("ok", kind, content))
    assert run(env.dns.list_records()) == []


def test_record_rules(env: Env) -> None:
    with pytest.raises(UsageError, match="apex"):
        run(env.dns.ensure_record("@", "CNAME", "web.example.com"))
    with pytest.raises(UsageError, match="itself"):
        run(env.dns.ensure_record("self", "CNAME", f"self.{ZONE}"))
    with pytest.raises(UsageError, match="proxied"):
        run(env.dns.ensure_record("t", "TXT", "x", proxied=True))
    with pytest.raises(UsageError, match="environment"):
        run(env.dns.ensure_record("e", "A", "192.0.2.1", environment=E("staging")))
    run(env.dns.ensure_record("host", "A", "192.0.2.1"))
    with pytest.raises(UsageError, match="CNAME cannot share") as info:
        run(env.dns.ensure_record("host", "CNAME", ZONE))
    assert "Delete the existing record" in info.value.hint
    run(env.dns.ensure_record("alias", "CNAME", ZONE))
    with pytest.raises(UsageError, match="CNAME cannot share"):
        run(env.dns.ensure_record("alias", "TXT", "x"))
    assert [(r.name, r.type) for r in run(env.dns.list_records())] == [
        (f"alias.{ZONE}", "CNAME"),
        (f"host.{ZONE}", "A"),
    ]


def test_hostile_queries_do_not_break_the_server(env: Env) -> None:
    for name in [r"\$\(rm\ -rf\ /\).codex.test", "a;b.codex.test", r"\255\254.codex.test"]:
        for tcp in (False, True):
            assert rcode(env.query(name, "A", tcp=tcp)) in ("NXDOMAIN", "REFUSED", "FORMERR")
    # Garbage datagrams and a half-sent TCP query: ignored, the server still answers.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.sendto(b"\x00garbage", ("127.0.0.1", env.server.port))
    with socket.create_connection(("127.0.0.1", env.server.port)) as tcp_sock:
        tcp_sock.sendall(b"\x00\x40abc")
    assert rcode(env.query(ZONE, "SOA")) == "NOERROR"


def test_responses_are_never_answered(env: Env) -> None:
    """A packet with QR set (an answer, or a forged one with a victim's source address)
    gets nothing back, over UDP and TCP, whether it parses or not: two servers can
    never be set replying to each other."""
    query = dns.message.make_query(f"host.{ZONE}", "A")
    answer = dns.message.make_response(query)  # QR set, a real parsable response
    broken = bytearray(b"\x12\x34\x80\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff\xfe")
    as_query = bytearray(answer.to_wire())
    as_query[2] &= 0x7F  # the same bytes with QR clear: a query, answered
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(0.5)
        udp.connect(("127.0.0.1", env.server.port))
        for packet in (answer.to_wire(), bytes(broken), b"\x80" * 11):
            udp.send(packet)
            with pytest.raises(TimeoutError):
                udp.recv(4096)
        udp.send(bytes(as_query))  # the control: the server did hear the others
        reply = dns.message.from_wire(udp.recv(4096))
        assert reply.id == query.id and reply.flags & dns.flags.QR
    with socket.create_connection(("127.0.0.1", env.server.port), timeout=2) as tcp_sock:
        wire = answer.to_wire()
        tcp_sock.sendall(len(wire).to_bytes(2, "big") + wire)
        assert tcp_sock.recv(4096) == b""  # closed without a word
    assert rcode(env.query(ZONE, "SOA")) == "NOERROR"


# -- verify --------------------------------------------------------------------------


def test_verify_right_after_ensure_without_fixed_sleeps(env: Env) -> None:
    refreshes = env.server.refreshes
    started = time.monotonic()
    run(env.dns.ensure_record("fresh", "CNAME", ZONE, proxied=True, environment=E("preview-8")))
    result = run(env.dns.verify("fresh", timeout=5.0))
    assert result.ok, result
    assert result.attempts >= 1 and result.elapsed < 5.0
    assert time.monotonic() - started < 2.0
    assert result.rcode == "NOERROR" and result.expect == ZONE
    assert env.server.refreshes > refreshes  # the NOTIFY made the server reload
    changed = run(env.dns.ensure_record("fresh", "CNAME", "web.example.com"))
    assert changed.content == "web.example.com"
    assert run(env.dns.verify("fresh", timeout=5.0)).answer == ("web.example.com",)


def test_verify_times_out_when_the_answer_never_matches(env: Env) -> None:
    run(env.dns.ensure_record("stuck", "CNAME", ZONE))
    result = run(env.dns.verify("stuck", expect="elsewhere.example.com", timeout=0.5))
    assert not result.ok
    assert 0.5 <= result.elapsed < 1.5
    assert result.attempts > 2  # it kept asking, with backoff
    assert result.expect == "elsewhere.example.com"
    missing = run(env.dns.verify("never-created", timeout=0.3))
    assert not missing.ok and missing.rcode == "NXDOMAIN" and missing.answer == ()


def test_verify_reports_a_server_that_is_not_there(shared_store: Store) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    provider = LocalDnsProvider(f"p{os.urandom(4).hex()}", ZONE, shared_store, ("127.0.0.1", dead))
    result = run(provider.verify("api", type="A", timeout=0.3))
    assert not result.ok and result.error is not None and result.rcode is None
    with pytest.raises(UsageError, match="no local DNS server"):
        run(LocalDnsProvider("p", ZONE, shared_store).verify("api"))


# -- refresh and lifecycle -------------------------------------------------------------


def test_periodic_refresh_catches_changes_without_notify(shared_store: Store) -> None:
    with _server(shared_store, refresh_interval=0.1) as server:
        env = Env(shared_store, server)
        env.sql(
            "INSERT INTO branchline.dns_records (project, name, type, content) "
            "VALUES (%s, %s, 'A', '192.0.2.77')",
            (env.project, f"quiet.{ZONE}"),
        )
        found = eventually(lambda: rrsets(env.query(f"quiet.{ZONE}")) or None)
        assert found == [(f"quiet.{ZONE}.", "A", ["192.0.2.77"])]


def test_server_survives_losing_its_database_connection(env: Env) -> None:
    run(env.dns.ensure_record("before", "A", "192.0.2.1"))
    assert run(env.dns.verify("before", type="A", timeout=5.0)).ok
    listening = (
        "SELECT pid FROM pg_stat_activity "
        "WHERE application_name = 'branchline-dns' AND datname = current_database()"
    )
    old = {row[0] for row in env.sql(listening)}
    assert len(old) == 1  # the listen connection
    env.sql("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (list(old),))
    assert rrsets(env.query(f"before.{ZONE}")) == [(f"before.{ZONE}.", "A", ["192.0.2.1"])]

    def reconnected() -> bool | None:
        return True if {row[0] for row in env.sql(listening)} - old else None

    eventually(reconnected, timeout=10.0)
    run(env.dns.ensure_record("after", "A", "192.0.2.2"))
    assert run(env.dns.verify("after", type="A", timeout=10.0)).ok


def test_server_stops_cleanly(shared_store: Store) -> None:
    before = threading.active_count()
    server = ZoneServer(f"p{os.urandom(4).hex()}", ZONE, shared_store, refresh_interval=3600)
    try:
        with server:
            assert server.start() is server  # idempotent
            port = server.port
            assert threading.active_count() >= before + 2
            env = Env(shared_store, server)
            assert rcode(env.query(ZONE, "SOA")) == "NOERROR"
            assert rcode(env.query(ZONE, "SOA", tcp=True)) == "NOERROR"
            idle = socket.create_connection(("127.0.0.1", port))  # sends nothing
            try:
                began = time.monotonic()
                server.stop()
                assert time.monotonic() - began < 2.0  # the idle client did not hold it up
            finally:
                idle.close()
        server.stop()  # idempotent
        with server:  # and it starts again
            assert rcode(Env(shared_store, server).query(ZONE, "SOA", tcp=True)) == "NOERROR"
            port = server.port
    finally:
        server.stop()
    assert threading.active_count() == before, threading.enumerate()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", port))  # the UDP port is free again
    listeners = _bare_env(shared_store).sql(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE application_name = 'branchline-dns' AND datname = current_database()"
    )
    assert listeners == [(0,)]  # the listen connection is closed


def _bare_env(store: Store) -> Env:
    env = Env.__new__(Env)
    env.store = store
    return env


def test_two_servers_never_share_a_port(shared_store: Store) -> None:
    with _server(shared_store) as first:
        taken = ZoneServer("other", ZONE, shared_store, port=first.port)
        with pytest.raises(OSError):
            taken.start()
        assert not taken.running
        assert rcode(Env(shared_store, first).query(ZONE, "SOA")) == "NOERROR"
