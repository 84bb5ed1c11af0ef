"""A small authoritative DNS server for the project's zone, on a loopback port.

Built on dnslib (`DNSServer` for the UDP and TCP sockets, `BaseResolver` for the
answers). It answers from an in-memory snapshot of the zone's rows, never from the
database per query: a listener thread holds a dedicated connection that LISTENs on
`branchline_dns` and reloads the snapshot when a notification names this project
(the provider sends one in the same transaction as every change), and at least
every `refresh_interval` seconds as a safety net for a missed notification.

Answers are authoritative (AA set, RA clear): the records of the requested type,
CNAMEs followed within the zone (`A api-preview-8.<zone>` answers the CNAME and the
apex's A), a synthesised SOA and NS at the apex, NXDOMAIN (with the SOA in the
authority section) for names of the zone that hold nothing, NODATA (NOERROR, SOA in
authority) for names that hold other types, and REFUSED for names outside the zone.
A packet that is itself a response (QR set) is dropped unanswered: no reflection loop.

Two threads run while the server is up (one serves both sockets, one listens); TCP
connections get a short-lived thread each. `stop` wakes both through a pipe, joins
every thread and closes every socket and the listen connection.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import select
import selectors
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import psycopg
from dnslib import (
    AAAA,
    CLASS,
    CNAME,
    EDNS0,
    NS,
    OPCODE,
    QTYPE,
    RCODE,
    RR,
    SOA,
    TXT,
    A,
    DNSError,
    DNSHeader,
    DNSRecord,
)
from dnslib.server import BaseResolver, DNSHandler, DNSServer

from branchline import naming
from branchline.errors import StoreError
from branchline.masking import mask_url
from branchline.store import Store
from branchline.store import dns as dns_rows

log = logging.getLogger(__name__)

TTL = 30  # seconds; short, as everything local changes often
NEGATIVE_TTL = 5  # the SOA minimum: how long resolvers may cache "no such name"
SOA_TIMES = (3600, 600, 86400)  # refresh, retry, expire (secondaries: there are none)
# Locally every host name points at branchline's edge proxy on loopback: the apex
# answers A 127.0.0.1 unless the zone stores an A record of its own for it.
DEFAULT_APEX_A = "127.0.0.1"
MAX_CHAIN = 8  # CNAMEs followed within the zone before giving up
TCP_IDLE_TIMEOUT = 5.0  # a TCP client that sends nothing is dropped after this
EDNS_PAYLOAD = 1232  # the UDP size we announce and honour (DNS flag day 2020)
MAX_RECONNECT_DELAY = 5.0
QCLASS_ANY = 255  # class ANY (dnslib names it "*")
_TYPES = {"A": QTYPE.A, "AAAA": QTYPE.AAAA, "CNAME": QTYPE.CNAME, "TXT": QTYPE.TXT}


# -- the snapshot ---------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """The zone as answered: prebuilt resource records per name and type.

    Replaced as a whole on refresh (one attribute assignment), so the serving
    thread always sees a consistent zone without a lock."""

    zone: str
    serial: int
    records: Mapping[str, Mapping[int, tuple[RR, ...]]]
    names: frozenset[str]  # every name that exists, empty non-terminals included
    fingerprint: tuple[tuple[str, str, str], ...] = field(repr=False)

    @property
    def soa(self) -> RR:
        return self.records[self.zone][QTYPE.SOA][0]


def build_snapshot(
    zone: str,
    rows: Iterable[dns_rows.DnsRow],
    *,
    ns_address: str = DEFAULT_APEX_A,
    previous: Snapshot | None = None,
) -> Snapshot:
    """The snapshot of `zone` from its rows (rows outside the zone are ignored); the
    SOA serial moves forward whenever the records differ from `previous`."""
    zone = naming.normalize_zone(zone)
    stored = sorted(
        (row.name, row.type, row.content)
        for row in rows
        if naming.in_zone(row.name, zone) and row.type in _TYPES
    )
    fingerprint = tuple(stored)
    if previous is None:
        serial = int(time.time()) & 0xFFFFFFFF
    elif previous.fingerprint == fingerprint:
        serial = previous.serial
    else:
        serial = max(previous.serial + 1, int(time.time())) & 0xFFFFFFFF

    records: dict[str, dict[int, list[RR]]] = {}

    def add(name: str, rtype: int, rdata: Any) -> None:
        rr = RR(name + ".", rtype, CLASS.IN, TTL, rdata)
        records.setdefault(name, {}).setdefault(rtype, []).append(rr)

    for name, kind, content in stored:
        add(name, _TYPES[kind], _rdata(kind, content))

    ns_host = f"ns1.{zone}"
    apex = records.setdefault(zone, {})
    if QTYPE.A not in apex:
        add(zone, QTYPE.A, A(DEFAULT_APEX_A))
    if ns_host not in records:
        add(ns_host, QTYPE.A, A(ns_address))
    soa = SOA(f"{ns_host}.", f"hostmaster.{zone}.", (serial, *SOA_TIMES, NEGATIVE_TTL))
    records[zone][QTYPE.SOA] = [RR(zone + ".", QTYPE.SOA, CLASS.IN, NEGATIVE_TTL, soa)]
    records[zone][QTYPE.NS] = [RR(zone + ".", QTYPE.NS, CLASS.IN, TTL, NS(f"{ns_host}."))]

    names = {zone}
    for name in records:
        labels = name[: -len(zone)].rstrip(".").split(".") if name != zone else []
        for i in range(len(labels)):
            names.add(".".join([*labels[i:], zone]))
    frozen = {name: {t: tuple(rrs) for t, rrs in types.items()} for name, types in records.items()}
    return Snapshot(zone, serial, frozen, frozenset(names), fingerprint)


def _rdata(kind: str, content: str) -> Any:
    if kind == "A":
        return A(content)
    if kind == "AAAA":
        return AAAA(content)
    if kind == "CNAME":
        return CNAME(content + ".")
    raw = content.encode("ascii")
    # One TXT record, split into character-strings of at most 255 bytes.
    return TXT([raw[i : i + 255] for i in range(0, len(raw), 255)] or [b""])


# -- answering ------------------------------------------------------------------


def _qname(record: DNSRecord) -> str | None:
    """The question's name, lower-case without the trailing dot; None when it cannot
    be one of ours (non-ASCII bytes, a dot inside a label)."""
    labels: list[str] = []
    for raw in record.q.qname.label:
        data = bytes(raw)
        if b"." in data or not data.isascii():
            return None
        labels.append(data.decode("ascii").lower())
    return ".".join(labels)


class ZoneResolver(BaseResolver):  # type: ignore[misc]
    """Answers from the server's current snapshot (see the module docstring)."""

    def __init__(self, server: ZoneServer) -> None:
        self._server = server

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        try:
            reply = self._answer(request)
        except Exception:
            log.exception("DNS answer failed")
            reply = request.reply(ra=0, aa=0)
            reply.header.rcode = RCODE.SERVFAIL
        if getattr(handler, "protocol", "udp") == "udp":
            reply = _fit_udp(request, reply)
        return reply

    def _answer(self, request: DNSRecord) -> DNSRecord:
        reply = request.reply(ra=0, aa=1)
        if _edns(request) is not None:
            reply.add_ar(EDNS0(udp_len=EDNS_PAYLOAD))
        if request.header.opcode != OPCODE.QUERY:
            reply.header.aa = 0
            reply.header.rcode = RCODE.NOTIMP
            return reply
        if len(request.questions) != 1:
            reply.header.aa = 0
            reply.header.rcode = RCODE.FORMERR
            return reply
        snapshot = self._server.snapshot
        qname = _qname(request)
        if (
            snapshot is None
            or qname is None
            or request.q.qclass not in (CLASS.IN, QCLASS_ANY)
            or not naming.in_zone(qname, snapshot.zone)
        ):
            reply.header.aa = 0
            reply.header.rcode = RCODE.REFUSED
            return reply
        qtype = request.q.qtype
        name = qname
        seen = {name}
        for _ in range(MAX_CHAIN + 1):
            here = snapshot.records.get(name, {})
            if qtype == QTYPE.ANY and here:
                for rrs in here.values():
                    reply.add_answer(*rrs)
                return reply
            if qtype in here:
                reply.add_answer(*here[qtype])
                return reply
            cname = here.get(QTYPE.CNAME)
            if cname:
                reply.add_answer(*cname)
                target = str(cname[0].rdata.label).removesuffix(".").lower()
                if not naming.in_zone(target, snapshot.zone) or target in seen:
                    return reply  # the rest of the chain is someone else's (or a loop)
                seen.add(target)
                name = target
                continue
            if name not in snapshot.names:
                reply.header.rcode = RCODE.NXDOMAIN
            reply.add_auth(snapshot.soa)  # NXDOMAIN or NODATA: say how long to cache it
            return reply
        return reply  # a chain longer than MAX_CHAIN: what was followed so far


def _edns(request: DNSRecord) -> RR | None:
    return next((rr for rr in request.ar if rr.rtype == QTYPE.OPT), None)


def _fit_udp(request: DNSRecord, reply: DNSRecord) -> DNSRecord:
    """Over UDP an answer larger than the client accepts is sent empty with TC set,
    so that the client asks again over TCP."""
    opt = _edns(request)
    limit = 512 if opt is None else max(512, min(int(opt.rclass), EDNS_PAYLOAD))
    if len(reply.pack()) <= limit:
        return reply
    truncated = request.reply(ra=0, aa=1)
    truncated.header.tc = 1
    truncated.header.rcode = reply.header.rcode
    return truncated


# -- sockets ----------------------------------------------------------------------


class _QuietLogger:
    """dnslib's logger interface, sent to `logging` at debug level (errors only)."""

    def log_recv(self, handler: Any, data: bytes) -> None: ...
    def log_send(self, handler: Any, data: bytes) -> None: ...
    def log_request(self, handler: Any, request: DNSRecord) -> None: ...
    def log_reply(self, handler: Any, reply: DNSRecord) -> None: ...
    def log_truncated(self, handler: Any, reply: DNSRecord) -> None: ...
    def log_data(self, dnsobj: DNSRecord) -> None: ...

    def log_error(self, handler: Any, error: BaseException) -> None:
        log.debug("invalid DNS request from %s: %s", handler.client_address, error)


class _Handler(DNSHandler):  # type: ignore[misc]
    def setup(self) -> None:
        if isinstance(self.request, socket.socket):  # TCP: never wait forever on a client
            self.request.settimeout(TCP_IDLE_TIMEOUT)
            self.server.track(self.request)

    def finish(self) -> None:
        if isinstance(self.request, socket.socket):
            self.server.untrack(self.request)

    def get_reply(self, data: bytes) -> bytes:
        # A response (QR set) is never answered, parsable or not: answering answers
        # lets a forged source address set two servers replying to each other forever.
        # dnslib's handler drops a packet whose reply raises DNSError.
        if len(data) < 12 or data[2] & 0x80:
            raise DNSError("not a query (QR set, or shorter than a header): ignored")
        try:
            return bytes(super().get_reply(data))
        except DNSError:
            # dnslib cannot parse it (a label that is not UTF-8, say): FORMERR, so the
            # client does not wait for a timeout.
            (query_id,) = struct.unpack("!H", data[:2])
            header = DNSHeader(id=query_id, qr=1, rcode=RCODE.FORMERR)
            return bytes(DNSRecord(header).pack())


class _UdpServer(socketserver.UDPServer):
    """Requests are answered inline: a lookup in memory is faster than a thread.
    No SO_REUSEADDR: on Linux it would let two UDP servers share one port."""

    allow_reuse_address = False
    timeout = 0  # handle_request: handle what is ready, never wait

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("DNS request from %s failed", client_address, exc_info=True)


class _TcpServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """One thread per connection; `server_close` cuts open connections short and
    joins their threads (they are not daemon threads)."""

    allow_reuse_address = True
    daemon_threads = False
    block_on_close = True
    timeout = 0

    def __init__(self, server_address: Any, handler: Any) -> None:
        self._active: set[socket.socket] = set()
        self._active_lock = threading.Lock()
        self._closing = False
        super().__init__(server_address, handler)

    def track(self, conn: socket.socket) -> None:
        with self._active_lock:
            self._active.add(conn)
            if self._closing:
                _cut(conn)

    def untrack(self, conn: socket.socket) -> None:
        with self._active_lock:
            self._active.discard(conn)

    def server_close(self) -> None:
        with self._active_lock:
            self._closing = True
            for conn in self._active:
                _cut(conn)  # an idle client must not hold stop() up
        super().server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("DNS request from %s failed", client_address, exc_info=True)


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def _cut(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)


def _with_family(base: type[socketserver.BaseServer], host: str) -> Any:
    if ":" not in host:
        return base
    return type(base.__name__ + "6", (base,), {"address_family": socket.AF_INET6})


# -- the server -------------------------------------------------------------------


class ZoneServer:
    """Serves `zone` authoritatively on `host` (UDP and TCP, the same port; port 0
    picks a free one, see `.port` after `start`). Construction does no I/O."""

    def __init__(
        self,
        project: str,
        zone: str,
        store: Store,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        refresh_interval: float = 5.0,
    ) -> None:
        self.project = project
        self.zone = naming.normalize_zone(zone)
        self.store = store
        self.host = host
        self.requested_port = port
        self.refresh_interval = refresh_interval
        self.snapshot: Snapshot | None = None
        self.refreshes = 0  # how many times the snapshot was loaded
        self._lock = threading.Lock()
        self._udp: DNSServer | None = None
        self._tcp: DNSServer | None = None
        self._threads: list[threading.Thread] = []
        self._wake: tuple[int, int] | None = None
        self._listen_conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._last_refresh = 0.0

    # -- lifecycle ------------------------------------------------------------

    @property
    def running(self) -> bool:
        return bool(self._threads)

    @property
    def port(self) -> int:
        if self._udp is None:
            raise RuntimeError("the DNS server is not started")
        return int(self._udp.server.server_address[1])

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def start(self) -> ZoneServer:
        """Load the zone, bind both sockets and start serving. Idempotent."""
        with self._lock:
            if self._threads:
                return self
            conn = self._connect(listen=True)
            try:
                self._load(conn)
                self._bind()
            except BaseException:
                conn.close()
                self._close_sockets()
                raise
            self._listen_conn = conn
            self._wake = os.pipe()
            self._threads = [
                threading.Thread(
                    target=self._serve, name=f"branchline-dns-serve-{self.port}", daemon=True
                ),
                threading.Thread(
                    target=self._listen, name=f"branchline-dns-listen-{self.port}", daemon=True
                ),
            ]
            for thread in self._threads:
                thread.start()
            return self

    def stop(self) -> None:
        """Stop serving: join every thread, close the sockets and the listen
        connection. Idempotent."""
        with self._lock:
            if self._wake is not None:
                with contextlib.suppress(OSError):
                    os.write(self._wake[1], b"x")  # wakes both threads; never read
            for thread in self._threads:
                thread.join()
            self._threads = []
            self._close_sockets()  # the TCP server joins its connection threads
            if self._listen_conn is not None:
                with contextlib.suppress(psycopg.Error):
                    self._listen_conn.close()
                self._listen_conn = None
            if self._wake is not None:
                for fd in self._wake:
                    with contextlib.suppress(OSError):
                        os.close(fd)
                self._wake = None

    def __enter__(self) -> ZoneServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _bind(self) -> None:
        """UDP first (port 0: the kernel picks), then TCP on the same port; when the
        picked port is taken for TCP, try another."""
        udp_class = _with_family(_UdpServer, self.host)
        tcp_class = _with_family(_TcpServer, self.host)
        resolver = ZoneResolver(self)
        logger = _QuietLogger()
        attempts = 20 if self.requested_port == 0 else 1
        for attempt in range(attempts):
            udp = DNSServer(
                resolver,
                address=self.host,
                port=self.requested_port,
                logger=logger,
                handler=_Handler,
                server=udp_class,
            )
            port = udp.server.server_address[1]
            try:
                tcp = DNSServer(
                    resolver,
                    address=self.host,
                    port=port,
                    tcp=True,
                    logger=logger,
                    handler=_Handler,
                    server=tcp_class,
                )
            except OSError:
                udp.server.server_close()
                if attempt == attempts - 1:
                    raise
                continue
            self._udp, self._tcp = udp, tcp
            return

    def _close_sockets(self) -> None:
        for server in (self._tcp, self._udp):
            if server is not None:
                server.server.server_close()
        self._tcp = None
        # _udp is kept so that .port still answers after stop; its socket is closed.

    # -- serving ----------------------------------------------------------------

    def _serve(self) -> None:
        assert self._wake is not None and self._udp is not None and self._tcp is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._wake[0], selectors.EVENT_READ, None)
            for server in (self._udp.server, self._tcp.server):
                selector.register(server.socket, selectors.EVENT_READ, server)
            while True:
                for key, _ in selector.select():
                    if key.data is None:
                        return
                    try:
                        key.data.handle_request()
                    except Exception:  # one bad request never stops the server
                        log.exception("DNS server: request failed")

    # -- the snapshot -------------------------------------------------------------

    def refresh(self) -> Snapshot:
        """Reload the snapshot now, on a connection of its own (the listener thread
        does this by itself; this is for callers that cannot wait)."""
        with self._connect() as conn:
            return self._load(conn)

    def _connect(self, *, listen: bool = False) -> psycopg.Connection[tuple[object, ...]]:
        """A connection to the state database; with `listen`, LISTENing before the
        first read, so that no change between the read and the LISTEN slips by."""
        url = self.store.url
        try:
            conn = psycopg.connect(
                url, autocommit=True, application_name="branchline-dns", connect_timeout=10
            )
        except psycopg.OperationalError as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise StoreError(
                f"the DNS server cannot reach the state database at {mask_url(url)}: {first}"
            ) from exc
        if listen:
            try:
                conn.execute(f"LISTEN {dns_rows.CHANNEL}")
            except BaseException:
                conn.close()
                raise
        return conn

    def _load(self, conn: psycopg.Connection[tuple[object, ...]]) -> Snapshot:
        rows = dns_rows.list_all_sync(conn, self.project)
        ns_address = self.host if _is_ipv4(self.host) else DEFAULT_APEX_A
        snapshot = build_snapshot(self.zone, rows, ns_address=ns_address, previous=self.snapshot)
        self.snapshot = snapshot
        self.refreshes += 1
        self._last_refresh = time.monotonic()
        return snapshot

    def _listen(self) -> None:
        """Reload on NOTIFY for this project, and every `refresh_interval` seconds;
        reconnect (serving the last snapshot meanwhile) when the connection drops."""
        assert self._wake is not None
        wake = self._wake[0]
        conn = self._listen_conn
        delay = 0.1
        while True:
            try:
                if conn is None or conn.closed:
                    conn = self._connect(listen=True)
                    self._listen_conn = conn
                    self._load(conn)
                    delay = 0.1
                if self._wait_for_change(conn, wake):
                    return
                self._load(conn)
            except (psycopg.Error, StoreError) as exc:
                log.warning("DNS server: lost the state database (%s); retrying", exc)
                if conn is not None:
                    with contextlib.suppress(psycopg.Error):
                        conn.close()
                conn = None
                if select.select([wake], [], [], delay)[0]:
                    return
                delay = min(delay * 2, MAX_RECONNECT_DELAY)

    def _wait_for_change(self, conn: psycopg.Connection[tuple[object, ...]], wake: int) -> bool:
        """Block until the zone should be reloaded (False) or the server stops (True)."""
        while True:
            # Notifications already received (also while a reload ran) come first.
            if any(
                n.channel == dns_rows.CHANNEL and n.payload == self.project
                for n in conn.notifies(timeout=0)
            ):
                return False
            left = self._last_refresh + self.refresh_interval - time.monotonic()
            if left <= 0:
                return False
            ready = select.select([conn.fileno(), wake], [], [], left)[0]
            if wake in ready:
                return True
