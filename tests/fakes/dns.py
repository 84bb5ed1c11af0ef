"""An in-memory DnsProvider: the same validation as every provider, a zone kept
as a dict, and `verify` answering from it (as the local DNS server would)."""

from __future__ import annotations

from datetime import UTC, datetime

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


class MemoryDns:
    def __init__(self, zone: str) -> None:
        self.zone = zone
        self.records: dict[tuple[str, str], DnsRecord] = {}
        self.unresolvable: set[str] = set()  # names verify never sees (a slow resolver)

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
        others = {t for (n, t) in self.records if n == fqdn and t != kind}
        if others and (kind == "CNAME" or "CNAME" in others):
            raise UsageError(f"{fqdn} has other records: a CNAME must stand alone")
        existing = self.records.get((fqdn, kind))
        label = environment.name if environment is not None else None
        now = datetime.now(UTC)
        record = DnsRecord(
            fqdn, kind, value, proxied,
            label if label is not None else (existing.environment if existing else None),
            existing.created_at if existing else now, now,
        )  # fmt: skip
        if existing is not None and existing.content == value and existing.proxied == proxied \
                and (label is None or existing.environment == label):  # fmt: skip
            return existing
        self.records[(fqdn, kind)] = record
        return record

    async def delete_record(self, name: str, type: str | None = None) -> bool:
        kind = record_type(type) if type is not None else None
        # Without a type every record at the name goes, a TXT at `_acme-challenge` too.
        fqdn = record_name(name, self.zone, type=kind or "TXT")
        kinds = [kind] if kind else [t for (n, t) in self.records if n == fqdn]
        removed = [self.records.pop((fqdn, kind), None) for kind in kinds]
        return any(r is not None for r in removed)

    async def get_record(self, name: str, type: str) -> DnsRecord | None:
        kind = record_type(type)
        return self.records.get((record_name(name, self.zone, type=kind), kind))

    async def list_records(self, environment: Environment | None = None) -> list[DnsRecord]:
        return sorted(
            (r for r in self.records.values()
             if environment is None or r.environment == environment.name),
            key=lambda r: (r.name, r.type),
        )  # fmt: skip

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
        record = self.records.get((fqdn, kind))
        if expect is not None:
            expect = record_content(kind, expect, self.zone)  # validated, as the local one does
        wanted = expect if expect is not None else (record.content if record else None)
        answer = (record.content,) if record and fqdn not in self.unresolvable else ()
        ok = bool(answer) and (wanted is None or same_content(kind, answer[0], wanted))
        return VerifyResult(fqdn, kind, ok, 1, 0.0, answer, wanted,
                            "NOERROR" if answer else "NXDOMAIN")  # fmt: skip

    async def aclose(self) -> None:
        return None
