"""A real DNS server (UDP and TCP on a loopback port) that answers for a fake
Cloudflare's zone from the fake's own records, read at each query: what Cloudflare's
nameservers would answer, so that a provider's `verify` sends real DNS packets to
something that only knows what the fake API was told.

It reuses the local DNS server's answering (`build_snapshot`, `ZoneResolver`:
authoritative answers, CNAMEs followed in the zone, NXDOMAIN with the SOA) and
answers every record as it is kept (proxying is not simulated: a proxied record
answers its own content, as a DNS-only one would).
"""

from __future__ import annotations

from datetime import UTC, datetime
from types import TracebackType
from typing import cast

from dnslib.server import DNSServer

from branchline.edge.dns_server import (
    Snapshot,
    ZoneResolver,
    ZoneServer,
    _Handler,
    _QuietLogger,
    _TcpServer,
    _UdpServer,
    build_snapshot,
)
from branchline.fakes.cloudflare import FakeCloudflare
from branchline.store.dns import DnsRow


class FakeZoneServer:
    """Serves `zone` of `fake` on 127.0.0.1 (`.address` after `start`)."""

    def __init__(self, fake: FakeCloudflare, zone: str) -> None:
        self.fake = fake
        self.zone = zone
        self.queries = 0
        self._previous: Snapshot | None = None
        self._servers: list[DNSServer] = []

    @property
    def snapshot(self) -> Snapshot:
        """The zone as the fake keeps it now (read by ZoneResolver for every query,
        in the server's thread)."""
        self.queries += 1
        epoch = datetime.fromtimestamp(0, UTC)
        rows = [
            DnsRow(str(r["name"]), str(r["type"]), str(r["content"]), bool(r["proxied"]),
                   None, str(r["id"]), epoch, epoch)
            for r in self.fake.state()["dns_records"]
            if r["zone_name"] == self.zone
        ]  # fmt: skip
        self._previous = build_snapshot(self.zone, rows, previous=self._previous)
        return self._previous

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", int(self._servers[0].server.server_address[1]))

    def start(self) -> FakeZoneServer:
        # ZoneResolver reads only its server's `.snapshot`, which this gives.
        resolver, logger = ZoneResolver(cast(ZoneServer, self)), _QuietLogger()
        for attempt in range(20):  # the port the kernel gave UDP may be TCP's elsewhere
            udp = DNSServer(resolver, address="127.0.0.1", port=0, logger=logger,
                            handler=_Handler, server=_UdpServer)  # fmt: skip
            port = int(udp.server.server_address[1])
            try:
                tcp = DNSServer(resolver, address="127.0.0.1", port=port, tcp=True,
                                logger=logger, handler=_Handler, server=_TcpServer)  # fmt: skip
            except OSError:
                udp.server.server_close()
                if attempt == 19:
                    raise
                continue
            break
        self._servers = [udp, tcp]
        for server in self._servers:
            server.start_thread()
        return self

    def stop(self) -> None:
        for server in self._servers:
            if server.isAlive():
                server.stop()  # returns once serve_forever has
                server.thread.join()
            server.server.server_close()

    def __enter__(self) -> FakeZoneServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        self.stop()
