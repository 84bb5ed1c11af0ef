"""Cloudflare DNS: the zone's records through Cloudflare's API (`cloudflare_api`),
verified by asking resolvers with dnspython.

Ownership: every record branchline makes carries the comment
`branchline:<project>` (then a space and its environment, when it has one). Only
such records are listed, updated or deleted; a record at the same name and type
that lacks it belongs to someone else and is refused, never touched.

The store mirrors what branchline made (`dns_records` rows holding Cloudflare's
record id) and writes the intent log around every change (`creating`/`ready`,
`deleting`/`deleted`, resource `<TYPE>:<name>`), under a per-name advisory lock,
as the local provider does. `reconcile` removes records of ours that no row
explains (a crash between Cloudflare's answer and the row) and rows whose record
is gone; records of others are never touched.

Calls per record: `ensure_record` lists the name (1) and creates or updates it
when needed (+1); `delete_record` lists the name and deletes ours (1 + n).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from branchline import naming
from branchline.config.providers import resolver_address
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
from branchline.providers.dns.cloudflare_api import CfRecord, CloudflareDnsClient, CloudflareError

# An answer is read (CNAMEs followed) and matched as the local provider does.
from branchline.providers.dns.local import _answer_values, _matches
from branchline.providers.reconciling import Finding
from branchline.store import Store, locks, resources
from branchline.store import dns as dns_rows
from branchline.store.queries import Conn

if TYPE_CHECKING:
    import dns.message

PROVIDER = "cloudflare"
RESOURCE_KIND = "dns_record"
OWNER = "branchline:"  # a record's comment starts with this, then the project
FIRST_DELAY = 0.05  # verify's backoff between rounds of queries, doubling
MAX_DELAY = 2.0
QUERY_TIMEOUT = 2.0  # one query's wait for an answer (capped by the deadline)
DEFAULT_VERIFY_TIMEOUT = 60.0


@dataclass(frozen=True)
class Resolver:
    """A DNS server verify asks (recursive, or the zone's own)."""

    host: str
    port: int = 53

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 53 else f"{host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Resolver:
        """`1.1.1.1`, `127.0.0.1:5353`, `2606:4700::1111` or `[::1]:5353`."""
        host, port = resolver_address(text)
        return cls(host, port)


class CloudflareDnsProvider:
    """The records branchline keeps in one Cloudflare zone. Construction does no I/O."""

    name = PROVIDER

    def __init__(
        self,
        project: str,
        zone: str,
        store: Store,
        client: CloudflareDnsClient,
        *,
        resolvers: Sequence[Resolver] = (),
        verify_timeout: float = DEFAULT_VERIFY_TIMEOUT,
    ) -> None:
        self.project = project
        self.zone = naming.normalize_zone(zone)
        self.store = store
        self.client = client
        self.resolvers = tuple(resolvers)  # empty: the system's
        self.verify_timeout = verify_timeout
        self._owner = f"{OWNER}{project}"

    async def aclose(self) -> None:
        await self.client.aclose()

    # -- ownership ------------------------------------------------------------------

    def _comment(self, environment: str | None) -> str:
        return self._owner if environment is None else f"{self._owner} {environment}"

    def _ours(self, record: CfRecord) -> bool:
        comment = record.comment or ""
        return comment == self._owner or comment.startswith(self._owner + " ")

    def _environment(self, record: CfRecord) -> str | None:
        rest = (record.comment or "").removeprefix(self._owner).strip()
        return rest or None

    def _to_record(self, record: CfRecord) -> DnsRecord:
        return DnsRecord(
            name=record.name, type=record.type, content=_content(record), proxied=record.proxied,
            environment=self._environment(record), created_at=record.created_on,
            updated_at=record.modified_on,
        )  # fmt: skip

    # -- the interface ------------------------------------------------------------------

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
            present = await self.client.list_records(name={"exact": fqdn})
            _check_cname_exclusive(fqdn, kind, present)
            same_type = [r for r in present if r.type == kind]
            mine = next((r for r in same_type if self._ours(r)), None)
            foreign = [r for r in same_type if not self._ours(r)]
            if mine is None and foreign:
                raise UsageError(
                    f"{fqdn!r} already has a {kind} record in the Cloudflare zone that "
                    "branchline did not make (its comment does not say "
                    f"{self._owner!r}); it is left as it is.",
                    hint=f"Delete or rename that record in Cloudflare if branchline should own "
                    f"{fqdn}, or give this service another sub-domain.",
                )
            keep = label if label is not None else (self._environment(mine) if mine else None)
            if (
                mine is not None
                and same_content(kind, _content(mine), value)
                and mine.proxied == proxied
                and self._environment(mine) == keep
            ):
                # Idempotent: as asked already. Mirror it and finish the intent log
                # if a crash interrupted an earlier call after Cloudflare answered.
                await self._settle(conn, mine, resource)
                return self._to_record(mine)
            await resources.record(
                conn, self.project, RESOURCE_KIND, resource, "creating", environment=keep,
                detail={"content": value, "proxied": proxied, "provider": PROVIDER},
            )  # fmt: skip
            try:
                if mine is None:
                    made = await self.client.create_record(
                        name=fqdn, type=kind, content=value, proxied=proxied,
                        comment=self._comment(keep),
                    )  # fmt: skip
                else:
                    made = await self.client.update_record(
                        mine.id, name=fqdn, type=kind, content=value, proxied=proxied,
                        comment=self._comment(keep),
                    )  # fmt: skip
            except BaseException:
                with contextlib.suppress(Exception):
                    await resources.record(conn, self.project, RESOURCE_KIND, resource, "failed")
                raise
            await self._settle(conn, made, resource)
            return self._to_record(made)

    async def delete_record(self, name: str, type: str | None = None) -> bool:
        kind = record_type(type) if type is not None else None
        fqdn = record_name(name, self.zone, type=kind or "TXT")
        async with self._locked(fqdn) as conn:
            present = [
                r for r in await self.client.list_records(name={"exact": fqdn})
                if self._ours(r) and (kind is None or r.type == kind)
            ]  # fmt: skip
            gone = False
            for record in present:
                resource = f"{record.type}:{fqdn}"
                await resources.record(conn, self.project, RESOURCE_KIND, resource, "deleting")
                gone = await self.client.delete_record(record.id) or gone
                await self._forget(conn, fqdn, record.type, resource)
            if not present:  # gone already: finish what a crash left at `deleting`
                for row in await dns_rows.for_name(conn, self.project, fqdn):
                    if kind is None or row.type == kind:
                        await self._forget(conn, fqdn, row.type, f"{row.type}:{fqdn}")
            return gone

    async def get_record(self, name: str, type: str) -> DnsRecord | None:
        kind = record_type(type)
        fqdn = record_name(name, self.zone, type=kind)
        found = await self.client.list_records(name={"exact": fqdn}, type=kind)
        mine = next((r for r in found if self._ours(r) and r.type == kind), None)
        return self._to_record(mine) if mine is not None else None

    async def list_records(self, environment: Environment | None = None) -> list[DnsRecord]:
        records = [self._to_record(r) for r in await self._all_ours()]
        if environment is not None:
            records = [r for r in records if r.environment == environment.name]
        return sorted(records, key=lambda r: (r.name, r.type))

    async def verify(
        self,
        name: str,
        *,
        type: str = "CNAME",
        expect: str | None = None,
        timeout: float | None = None,
    ) -> VerifyResult:
        """Ask every resolver until each answers `expect` (default: the recorded
        content). A proxied record may answer with Cloudflare's own addresses instead
        of its content: for one, any address answered counts as resolving."""
        kind = record_type(type)
        fqdn = record_name(name, self.zone, type=kind)
        proxied = False
        if expect is not None:
            expect = record_content(kind, expect, self.zone)
        else:
            stored = await self.get_record(fqdn, kind)
            expect = stored.content if stored is not None else None
            proxied = stored is not None and stored.proxied
        servers = self.resolvers or await _system_resolvers()
        wait = self.verify_timeout if timeout is None else timeout
        return await poll(fqdn, kind, expect, servers, timeout=wait, proxied=proxied)

    # -- reconcile ---------------------------------------------------------------------

    async def reconcile(self, *, dry_run: bool = False) -> list[Finding]:
        """Remove records of ours that no row explains (a crash after Cloudflare made
        them), forget rows whose record is gone, finish the intent log. A record
        without branchline's comment for this project is never looked at twice."""
        found: list[Finding] = []
        ours = await self._all_ours()
        by_id = {r.id: r for r in ours}
        async with self.store.connect() as conn:
            rows = await dns_rows.list_all(conn, self.project)
        known = {row.provider_id for row in rows if row.provider_id}
        for record in ours:
            if record.id in known:
                continue
            why = "a Cloudflare record of branchline's that no record explains"
            finding = Finding("dns", f"{record.type} {record.name}", "delete", why)
            if not dry_run:
                async with self._try_locked(record.name) as conn:
                    if conn is None:
                        continue  # a change of that name is under way
                    row = await dns_rows.get(conn, self.project, record.name, record.type)
                    if row is not None and row.provider_id == record.id:
                        continue  # a change made it ours since the rows were read
                    await self.client.delete_record(record.id)
                    resource = f"{record.type}:{record.name}"
                    await resources.record(conn, self.project, RESOURCE_KIND, resource, "deleted")
                    finding.done = True
            found.append(finding)
        for row in rows:
            if not row.provider_id or row.provider_id in by_id:
                continue  # a row without an id is not one this provider mirrored
            finding = Finding("dns", f"{row.type} {row.name}", "forget",
                              "its record is no longer in the Cloudflare zone")  # fmt: skip
            if not dry_run:
                async with self._try_locked(row.name) as conn:
                    if conn is None:
                        continue
                    now = await dns_rows.get(conn, self.project, row.name, row.type)
                    if now is None or now.provider_id != row.provider_id:
                        continue  # changed since it was read: not this finding's
                    await self._forget(conn, row.name, row.type, f"{row.type}:{row.name}")
                    finding.done = True
            found.append(finding)
        if not dry_run:  # the intent log: what a crash left at `creating` or `deleting`
            async with self.store.connect() as conn:
                unfinished = await resources.unfinished(conn, self.project, RESOURCE_KIND)
            for entry in unfinished:
                entry_kind, _, entry_name = entry.name.partition(":")
                async with self._try_locked(entry_name) as conn:
                    if conn is None:
                        continue  # under way right now: its own call finishes it
                    row = await dns_rows.get(conn, self.project, entry_name, entry_kind)
                    state = "ready" if row is not None else "deleted"
                    await resources.record(conn, self.project, RESOURCE_KIND, entry.name, state)
        return found

    # -- helpers ---------------------------------------------------------------------

    async def _all_ours(self) -> list[CfRecord]:
        # Cloudflare's comment filters ignore case: the exact test is ours.
        found = await self.client.list_records(comment={"startswith": self._owner})
        return [r for r in found if self._ours(r)]

    async def _settle(self, conn: Conn, record: CfRecord, resource: str) -> None:
        """The store mirrors `record` and the intent log says `ready`."""
        environment = self._environment(record)
        row = await dns_rows.get(conn, self.project, record.name, record.type)
        if row is None or (row.provider_id, row.content, row.proxied, row.environment) != (
            record.id,
            _content(record),
            record.proxied,
            environment,
        ):
            async with conn.transaction():
                await dns_rows.upsert(
                    conn, self.project, record.name, record.type, _content(record),
                    proxied=record.proxied, environment=environment, provider_id=record.id,
                )  # fmt: skip
                await dns_rows.notify(conn, self.project)
        logged = await resources.get(conn, self.project, RESOURCE_KIND, resource)
        if logged is None or logged.state != "ready":
            await resources.record(
                conn, self.project, RESOURCE_KIND, resource, "ready", environment=environment
            )

    async def _forget(self, conn: Conn, fqdn: str, kind: str, resource: str) -> None:
        async with conn.transaction():
            await dns_rows.delete(conn, self.project, fqdn, kind)
            await dns_rows.notify(conn, self.project)
        await resources.record(conn, self.project, RESOURCE_KIND, resource, "deleted")

    def _locked(self, fqdn: str) -> contextlib.AbstractAsyncContextManager[Conn]:
        """One change at a time per name, across processes (Cloudflare would take two
        A records at one name: two concurrent creates must not both happen)."""
        return locks.held(self.store, f"branchline:dns:{self.project}:{fqdn}")

    def _try_locked(self, fqdn: str) -> contextlib.AbstractAsyncContextManager[Conn | None]:
        return locks.if_free(self.store, f"branchline:dns:{self.project}:{fqdn}")


def _content(record: CfRecord) -> str:
    """The content as branchline writes it (CNAME targets lower-case, no final dot;
    TXT as sent: Cloudflare may keep it quoted)."""
    if record.type == "CNAME":
        return record.content.lower().removesuffix(".")
    if (
        record.type == "TXT"
        and len(record.content) > 1
        and record.content[0] == '"' == record.content[-1]
    ):
        return record.content[1:-1]
    return record.content


def _check_cname_exclusive(fqdn: str, kind: str, present: list[CfRecord]) -> None:
    """A name with a CNAME holds nothing else (RFC 1034 3.6.2), as Cloudflare enforces:
    said before asking it, whoever's the other record is."""
    others = sorted({r.type for r in present if r.type != kind})
    if others and (kind == "CNAME" or "CNAME" in others):
        raise UsageError(
            f"{fqdn!r} already has a {' and '.join(others)} record; a CNAME cannot share "
            "its name with other records.",
            hint=f"Delete the existing record first (`branchline dns delete {fqdn} "
            f"--type {others[0]}`), or use the same record type.",
        )


# -- verify ---------------------------------------------------------------------------


async def _system_resolvers() -> list[Resolver]:
    """The system's resolvers (/etc/resolv.conf), read in a thread."""
    import dns.resolver

    def read() -> list[Resolver]:
        try:
            configured = dns.resolver.Resolver(configure=True)
        except dns.resolver.NoResolverConfiguration:
            return []
        return [Resolver(str(ns)) for ns in configured.nameservers]

    found = await asyncio.to_thread(read)
    if not found:
        raise UsageError(
            "this machine has no DNS resolver configured to verify Cloudflare records with",
            hint='Set `[dns.cloudflare] resolvers = ["1.1.1.1"]` in branchline.toml.',
        )
    return found


@dataclass
class _Seen:
    answer: tuple[str, ...] = ()
    rcode: str | None = None
    error: str | None = None  # the last query's, when it got no answer
    ok: bool = False

    def describe(self, server: Resolver) -> str:
        """The last answer, and the error of a later query that got none."""
        said = ", ".join(self.answer) if self.answer else "no answer"
        answered = f"{self.rcode} ({said})" if self.rcode is not None else None
        if self.error is None:
            return f"{server}: {answered or 'not asked'}"
        return f"{server}: {answered}, then {self.error}" if answered else f"{server}: {self.error}"


async def poll(
    fqdn: str,
    kind: str,
    expect: str | None,
    servers: Sequence[Resolver],
    *,
    timeout: float,
    proxied: bool = False,
) -> VerifyResult:
    """Query each of `servers` (real DNS packets, recursion desired) until every one
    answers `expect` (any answer when None), or `timeout` seconds pass; the result's
    `error` says what each server answered last when they did not all agree."""
    began = time.monotonic()
    deadline = began + max(0.0, timeout)
    seen = {server: _Seen() for server in servers}
    delay = FIRST_DELAY
    attempts = 0
    while True:
        attempts += 1
        pending = [s for s, state in seen.items() if not state.ok]
        await asyncio.gather(*(
            _ask(server, seen[server], fqdn, kind, expect, deadline, proxied)
            for server in pending
        ))  # fmt: skip
        first = seen[servers[0]] if servers else _Seen()
        if all(state.ok for state in seen.values()):
            answer = next((s.answer for s in seen.values() if s.answer), ())
            return VerifyResult(fqdn, kind, True, attempts, time.monotonic() - began, answer,
                                expect, first.rcode)  # fmt: skip
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            failing = next(s for s in seen.values() if not s.ok)
            said = "; ".join(state.describe(s) for s, state in seen.items() if not state.ok)
            return VerifyResult(
                fqdn, kind, False, attempts, time.monotonic() - began, failing.answer, expect,
                failing.rcode, f"{fqdn} {kind} not as expected ({expect or 'any answer'}): {said}",
            )  # fmt: skip
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 2, MAX_DELAY)


async def _ask(
    server: Resolver, state: _Seen, fqdn: str, kind: str, expect: str | None, deadline: float,
    proxied: bool,
) -> None:  # fmt: skip
    import dns.asyncquery
    import dns.exception
    import dns.message
    import dns.rcode

    async def ask(rdtype: str) -> dns.message.Message:
        query = dns.message.make_query(fqdn + ".", rdtype)  # RD set: a resolver recurses
        wait = max(0.05, min(QUERY_TIMEOUT, deadline - time.monotonic()))
        response, _ = await dns.asyncquery.udp_with_fallback(
            query, server.host, timeout=wait, port=server.port
        )
        return response

    try:
        response = await ask(kind)
        state.error = None
        state.rcode = dns.rcode.to_text(response.rcode())
        state.answer = _answer_values(response, fqdn, kind)
        state.ok = _matches(kind, state.answer, expect)
        if not state.ok and proxied and kind != "TXT":
            # Cloudflare answers a proxied name with its edge's addresses.
            addresses = _answer_values(await ask("A"), fqdn, "A")
            if addresses:
                state.answer, state.ok = addresses, True
    except (dns.exception.DNSException, OSError) as exc:
        state.error = f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__


async def verify(client: CloudflareDnsClient, zone: str) -> str:
    """Whether the settings can work: the token reaches the zone's DNS records, and
    the zone id is `[project] zone`'s. Says what it found; raises what is wrong."""
    zone = naming.normalize_zone(zone)
    await client.list_records(per_page=1)  # the token, the zone id, DNS read
    try:
        named = await client.zone_named(zone)
    except CloudflareError as exc:
        if exc.status not in (401, 403):
            raise
        # A token with DNS Edit alone may not read zones: the records were reached.
        return (
            f"Cloudflare zone {client.zone_id}'s DNS records are reachable with the token "
            f"(it may not read zones, so the zone's name was not compared with {zone!r})"
        )
    if named != client.zone_id:
        raise UsageError(
            f"the Cloudflare zone {client.zone_id} is not {zone!r} "
            f"({'its id is ' + named if named else 'no zone of that name is reachable'})",
            hint=f"Set `[dns.cloudflare] zone_id` to the id of {zone} (its Overview page in the "
            "dashboard), or `[project] zone` to the zone's name.",
        )
    return f"Cloudflare zone {zone} ({client.zone_id}) is reachable with the token"
