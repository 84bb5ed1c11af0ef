"""The part of Cloudflare's API the DNS provider uses (one zone's records, the zone
itself). How a call is made, retried and explained is `providers.cloudflare_client`'s;
an unknown zone names `[dns.cloudflare] zone_id`.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from cloudflare import AsyncCloudflare

from branchline.providers.cloudflare_client import (
    DEFAULT_API_URL,
    TOKEN_VARIABLE,
    CloudflareApiClient,
    CloudflareError,
    Wording,
)

__all__ = [
    "DEFAULT_API_URL",
    "TOKEN_VARIABLE",
    "CfRecord",
    "CloudflareDnsClient",
    "CloudflareError",
]

PAGE = 100  # records per page of a listing (Cloudflare's default)
NOT_FOUND_RECORD = 81044  # "Record does not exist."
TOKEN_HINT = (
    f'Set {TOKEN_VARIABLE} (or `[dns.cloudflare] api_token = "${{SOME_VARIABLE}}"`) to an '
    "API token with the permission Zone → DNS → Edit on this zone."
)
WORDING = Wording(token_hint=TOKEN_HINT, table="[dns.cloudflare]")


@dataclass(frozen=True)
class CfRecord:
    """One DNS record as Cloudflare keeps it (the fields branchline reads)."""

    id: str
    name: str
    type: str
    content: str
    proxied: bool
    comment: str | None
    created_on: datetime
    modified_on: datetime

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> CfRecord:
        return cls(
            id=str(data["id"]),
            name=str(data["name"]).lower().removesuffix("."),
            type=str(data["type"]).upper(),
            content=str(data["content"]),
            proxied=bool(data.get("proxied", False)),
            comment=str(data["comment"]) if data.get("comment") is not None else None,
            created_on=_time(data.get("created_on")),
            modified_on=_time(data.get("modified_on")),
        )


class CloudflareDnsClient(CloudflareApiClient):
    """One zone's DNS records. Construction does no I/O."""

    wording = WORDING

    def __init__(
        self,
        *,
        zone_id: str,
        api_token: str | None,
        base_url: str = DEFAULT_API_URL,
        timeout: float = 30.0,
        deadline: float = 120.0,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(
            api_token=api_token, base_url=base_url, timeout=timeout, deadline=deadline,
            http_client=http_client,
        )  # fmt: skip
        self.zone_id = zone_id

    # -- the zone -----------------------------------------------------------------

    async def zone_named(self, name: str, account_id: str | None = None) -> str | None:
        """The id of the zone called `name` that the token reaches (in `account_id`'s
        account when given), or None."""
        query: dict[str, Any] = {"name": name, "per_page": 50}
        if account_id:
            query["account"] = {"id": account_id}
        body = await self._call("GET /zones", lambda cf: cf.zones.with_raw_response.list(**query))
        for zone in body.get("result") or []:
            if str(zone.get("name", "")).lower() == name:
                return str(zone["id"])
        return None

    # -- records ------------------------------------------------------------------

    async def list_records(self, **filters: Any) -> list[CfRecord]:
        """The zone's records that pass Cloudflare's `filters` (`name`, `type`,
        `comment={"startswith": ...}`), every page."""
        found: list[CfRecord] = []
        page = 1
        while True:
            query = {"zone_id": self.zone_id, "page": page, "per_page": PAGE, **filters}
            body = await self._call(
                "GET /zones/{zone_id}/dns_records", functools.partial(_list_page, query=query)
            )
            items = body.get("result") or []
            found.extend(CfRecord.parse(item) for item in items)
            info = body.get("result_info") or {}
            pages = int(info.get("total_pages") or 1)
            if page >= pages or len(items) < PAGE:
                return found
            page += 1

    async def create_record(
        self, *, name: str, type: str, content: str, proxied: bool, comment: str
    ) -> CfRecord:
        body = await self._call(
            "POST /zones/{zone_id}/dns_records",
            lambda cf: _records(cf).create(
                zone_id=self.zone_id, name=name, type=type, content=content,
                proxied=proxied, ttl=1, comment=comment,
            ),
        )  # fmt: skip
        return CfRecord.parse(body["result"])

    async def update_record(
        self, record_id: str, *, name: str, type: str, content: str, proxied: bool, comment: str
    ) -> CfRecord:
        """Overwrite the record (PUT: what is not given takes its default)."""
        body = await self._call(
            "PUT /zones/{zone_id}/dns_records/{id}",
            lambda cf: _records(cf).update(
                record_id, zone_id=self.zone_id, name=name, type=type,
                content=content, proxied=proxied, ttl=1, comment=comment,
            ),
        )  # fmt: skip
        return CfRecord.parse(body["result"])

    async def delete_record(self, record_id: str) -> bool:
        """False when the record was already gone."""
        try:
            await self._call(
                "DELETE /zones/{zone_id}/dns_records/{id}",
                lambda cf: cf.dns.records.with_raw_response.delete(record_id, zone_id=self.zone_id),
            )
        except CloudflareError as exc:
            if exc.status == 404 and exc.cf_code == NOT_FOUND_RECORD:
                return False
            raise
        return True


def _list_page(cf: AsyncCloudflare, *, query: dict[str, Any]) -> Awaitable[Any]:
    return _records(cf).list(**query)  # type: ignore[no-any-return]


def _records(cf: AsyncCloudflare) -> Any:
    """The SDK's records with raw responses, untyped: its create and update are one
    overload per record type (a `Literal` each), and the type here is a checked str."""
    return cf.dns.records.with_raw_response


def _time(value: object) -> datetime:
    if not isinstance(value, str) or not value:
        return datetime.fromtimestamp(0, UTC)
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
