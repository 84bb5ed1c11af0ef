"""Local DNS: the zone's records live in the store; `ZoneServer` (server.py)
answers for them on a loopback port, and `verify` asks it with dnspython.

Every change writes the intent log around it (`creating`/`ready`,
`deleting`/`deleted`, resource name `<TYPE>:<name>`), holds a per-name advisory
lock (so a CNAME and another record can never meet at one name, even from two
processes) and sends `NOTIFY branchline_dns, '<project>'` in the same transaction
as the row change, which is what makes a running server refresh its copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from typing import TYPE_CHECKING

import psycopg

from branchline import naming
from branchline.environment import Environment
from branchline.errors import UsageError
from branchline.providers.dns import (
    DnsRecord,
    VerifyResult,
    checked_record,
    record_content,
    record_name,
    record_type,
    same_content,
)
from branchline.store import Store, locks, resources
from branchline.store import dns as dns_rows
from branchline.store.queries import Conn

if TYPE_CHECKING:  # dnspython is imported by `verify`: reading records does not need it
    import dns.message
    import dns.name
    import dns.rdatatype
    import dns.rrset

PROVIDER = "local"
RESOURCE_KIND = "dns_record"

# verify's backoff between queries: 10 ms, doubling, at most 200 ms.
FIRST_DELAY = 0.01
MAX_DELAY = 0.2
QUERY_TIMEOUT = 1.0  # one query's wait for an answer (capped by the deadline)
MAX_CHAIN = 8  # CNAMEs followed in an answer


class LocalDnsProvider:
    """The records of one project's zone, kept in the store. Construction does no I/O."""

    name = PROVIDER

    def __init__(
        self,
        project: str,
        zone: str,
        store: Store,
        server_address: tuple[str, int] | None = None,
    ) -> None:
        self.project = project
        self.zone = naming.normalize_zone(zone)
        self.store = store
        self.server_address = server_address

    # -- the interface ----------------------------------------------------

    async def ensure_record(
        self,
        name: str,
        type: str,
        content: str,
        *,
        proxied: bool = False,
        environment: Environment | None = None,
    ) -> DnsRecord:
        kind, fqdn, value = checked_record(name, type, content, self.zone, proxied=proxied)
        label = environment.name if environment is not None else None
        resource = f"{kind}:{fqdn}"
        async with self._locked(fqdn) as conn:
            present = await dns_rows.for_name(conn, self.project, fqdn)
            _check_cname_exclusive(fqdn, kind, present)
            existing = next((row for row in present if row.type == kind), None)
            if (
                existing is not None
                and existing.content == value
                and existing.proxied == proxied
                and (label is None or existing.environment == label)
            ):
                # Idempotent: already as asked. Finish the intent log if a crash
                # interrupted an earlier call between the change and its outcome.
                logged = await resources.get(conn, self.project, RESOURCE_KIND, resource)
                if logged is None or logged.state != "ready":
                    await resources.record(
                        conn,
                        self.project,
                        RESOURCE_KIND,
                        resource,
                        "ready",
                        environment=existing.environment,
                    )
                return _to_record(existing)
            await resources.record(
                conn,
                self.project,
                RESOURCE_KIND,
                resource,
                "creating",
                environment=label,
                detail={"content": value, "proxied": proxied},
            )
            try:
                async with conn.transaction():
                    row = await dns_rows.upsert(
                        conn,
                        self.project,
                        fqdn,
                        kind,
                        value,
                        proxied=proxied,
                        environment=label,
                    )
                    await dns_rows.notify(conn, self.project)
            except BaseException:
                with contextlib.suppress(psycopg.Error):
                    await resources.record(conn, self.project, RESOURCE_KIND, resource, "failed")
                raise
            await resources.record(
                conn, self.project, RESOURCE_KIND, resource, "ready", environment=row.environment
            )
            return _to_record(row)

    async def delete_record(self, name: str, type: str | None = None) -> bool:
        kind = record_type(type) if type is not None else None
        fqdn = record_name(name, self.zone, type=kind or "TXT")
        async with self._locked(fqdn) as conn:
            present = [
                row
                for row in await dns_rows.for_name(conn, self.project, fqdn)
                if kind is None or row.type == kind
            ]
            if not present:
                await self._finish_deletes(conn, fqdn, kind)
                return False
            for row in present:
                await resources.record(
                    conn, self.project, RESOURCE_KIND, f"{row.type}:{fqdn}", "deleting"
                )
            async with conn.transaction():
                gone = await dns_rows.delete(conn, self.project, fqdn, kind)
                await dns_rows.notify(conn, self.project)
            for row in gone:
                await resources.record(
                    conn, self.project, RESOURCE_KIND, f"{row.type}:{fqdn}", "deleted"
                )
            return bool(gone)

    async def get_record(self, name: str, type: str) -> DnsRecord | None:
        kind = record_type(type)
        fqdn = record_name(name, self.zone, type=kind)
        async with self.store.connect() as conn:
            row = await dns_rows.get(conn, self.project, fqdn, kind)
        return _to_record(row) if row is not None else None

    async def list_records(self, environment: Environment | None = None) -> list[DnsRecord]:
        async with self.store.connect() as conn:
            if environment is None:
                rows = await dns_rows.list_all(conn, self.project)
            else:
                rows = await dns_rows.list_by_environment(conn, self.project, environment.name)
        return [_to_record(row) for row in rows]

    async def verify(
        self,
        name: str,
        *,
        type: str = "CNAME",
        expect: str | None = None,
        timeout: float = 10.0,
    ) -> VerifyResult:
        kind = record_type(type)
        fqdn = record_name(name, self.zone, type=kind)
        if expect is not None:
            expect = record_content(kind, expect, self.zone)
        else:
            stored = await self.get_record(fqdn, kind)
            expect = stored.content if stored is not None else None
        if self.server_address is None:
            raise UsageError(
                f"Cannot verify {fqdn!r}: no local DNS server address is known.",
                hint="Start the DNS server (`branchline edge`) and give its address.",
            )
        import dns.asyncquery
        import dns.exception
        import dns.message
        import dns.name
        import dns.rcode

        host, port = self.server_address
        query = dns.message.make_query(dns.name.from_text(fqdn + "."), kind)
        began = time.monotonic()
        deadline = began + max(0.0, timeout)
        delay = FIRST_DELAY
        attempts = 0
        answer: tuple[str, ...] = ()
        rcode: str | None = None
        error: str | None = None
        while True:
            attempts += 1
            remaining = deadline - time.monotonic()
            try:
                response, _ = await dns.asyncquery.udp_with_fallback(
                    query,
                    host,
                    timeout=max(0.05, min(QUERY_TIMEOUT, remaining)),
                    port=port,
                )
            except (dns.exception.DNSException, OSError) as exc:
                error = f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
            else:
                error = None
                rcode = dns.rcode.to_text(response.rcode())
                answer = _answer_values(response, fqdn, kind)
                if _matches(kind, answer, expect):
                    return VerifyResult(
                        fqdn,
                        kind,
                        True,
                        attempts,
                        time.monotonic() - began,
                        answer,
                        expect,
                        rcode,
                    )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return VerifyResult(
                    fqdn,
                    kind,
                    False,
                    attempts,
                    time.monotonic() - began,
                    answer,
                    expect,
                    rcode,
                    error,
                )
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, MAX_DELAY)

    async def aclose(self) -> None:
        return None  # every connection is the store's, opened and closed per call

    # -- helpers ------------------------------------------------------------

    async def _finish_deletes(self, conn: Conn, fqdn: str, kind: str | None) -> None:
        """The record is gone; if a crash left its intent at `deleting`, say `deleted`."""
        for entry in await resources.unfinished(conn, self.project, RESOURCE_KIND):
            entry_kind, _, entry_name = entry.name.partition(":")
            if (
                entry.state == "deleting"
                and entry_name == fqdn
                and (kind is None or entry_kind == kind)
            ):
                await resources.record(conn, self.project, RESOURCE_KIND, entry.name, "deleted")

    def _locked(self, fqdn: str) -> contextlib.AbstractAsyncContextManager[Conn]:
        """One change at a time per name, across processes (released if we die)."""
        return locks.held(self.store, f"branchline:dns:{self.project}:{fqdn}")


def _check_cname_exclusive(fqdn: str, kind: str, present: list[dns_rows.DnsRow]) -> None:
    """A name with a CNAME holds nothing else (RFC 1034 3.6.2), as Cloudflare enforces."""
    others = sorted({row.type for row in present if row.type != kind})
    if others and (kind == "CNAME" or "CNAME" in others):
        raise UsageError(
            f"{fqdn!r} already has a {' and '.join(others)} record; a CNAME cannot share "
            "its name with other records.",
            hint=f"Delete the existing record first (`branchline dns delete {fqdn} "
            f"--type {others[0]}`), or use the same record type.",
        )


def _answer_values(response: dns.message.Message, fqdn: str, kind: str) -> tuple[str, ...]:
    """The values of type `kind` for `fqdn` in the answer, following CNAMEs in it."""
    import dns.name
    import dns.rdatatype

    rdtype = dns.rdatatype.from_text(kind)
    current = dns.name.from_text(fqdn + ".")
    for _ in range(MAX_CHAIN + 1):
        found = _rrset(response, current, rdtype)
        if found is not None:
            return tuple(_value(kind, rdata) for rdata in found)
        cname = _rrset(response, current, dns.rdatatype.CNAME)
        if cname is None:
            return ()
        current = next(iter(cname)).target
    return ()


def _rrset(
    response: dns.message.Message, name: dns.name.Name, rdtype: dns.rdatatype.RdataType
) -> dns.rrset.RRset | None:
    for rrset in response.answer:
        if rrset.name == name and rrset.rdtype == rdtype:
            return rrset
    return None


def _value(kind: str, rdata: object) -> str:
    if kind == "TXT":
        strings: tuple[bytes, ...] = getattr(rdata, "strings", ())
        return b"".join(strings).decode("ascii", "replace")
    if kind == "CNAME":
        return str(getattr(rdata, "target", "")).removesuffix(".").lower()
    return str(ipaddress.ip_address(str(rdata)))


def _matches(kind: str, answer: tuple[str, ...], expect: str | None) -> bool:
    if expect is None:
        return bool(answer)
    return any(same_content(kind, value, expect) for value in answer)


def _to_record(row: dns_rows.DnsRow) -> DnsRecord:
    return DnsRecord(
        name=row.name,
        type=row.type,
        content=row.content,
        proxied=row.proxied,
        environment=row.environment,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )
