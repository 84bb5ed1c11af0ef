"""The part of Cloudflare's API the Workers compute provider uses: one account's
scripts (versions, deployments, secrets) and one zone's Workers routes. How a call is
made, retried and explained is `providers.cloudflare_client`'s.

A version upload is multipart: the metadata (main module, bindings, compatibility
date and flags) and the modules, each with the content type of its kind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cloudflare
import httpx

from branchline.providers.cloudflare_client import (
    DEFAULT_API_URL,
    TOKEN_VARIABLE,
    CloudflareApiClient,
    CloudflareError,
    Wording,
)
from branchline.providers.compute.workerd import WorkerBundle

NO_SUCH_SCRIPT = 10007  # "This Worker does not exist on your account."
NO_SUCH_ROUTE = 10013
# A module's kind as the content type of its part in an upload.
CONTENT_TYPES: Mapping[str, str] = {
    "esModule": "application/javascript+module",
    "commonJsModule": "application/javascript",
    "text": "text/plain",
    "data": "application/octet-stream",
    "wasm": "application/wasm",
    "json": "application/json",
}
TOKEN_HINT = (
    f'Set {TOKEN_VARIABLE} (or `[compute.cloudflare] api_token = "${{SOME_VARIABLE}}"`) to '
    "an API token with the permissions Account → Workers Scripts → Edit and Zone → Workers "
    "Routes → Edit."
)
WORDING = Wording(token_hint=TOKEN_HINT, table="[compute.cloudflare]")


@dataclass(frozen=True)
class Binding:
    """A text binding of a version: a plain-text variable or a secret."""

    name: str
    text: str
    secret: bool = False

    def as_metadata(self) -> dict[str, str]:
        kind = "secret_text" if self.secret else "plain_text"
        return {"type": kind, "name": self.name, "text": self.text}

    def __repr__(self) -> str:
        return f"Binding({self.name!r}, secret={self.secret})"


@dataclass(frozen=True)
class CfRoute:
    id: str
    pattern: str
    script: str


class CloudflareWorkersClient(CloudflareApiClient):
    """One account's Workers scripts and one zone's routes. Construction does no I/O."""

    wording = WORDING

    def __init__(
        self,
        *,
        account_id: str,
        zone_id: str | None,
        api_token: str | None,
        base_url: str = DEFAULT_API_URL,
        timeout: float = 60.0,
        deadline: float = 120.0,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(
            api_token=api_token, base_url=base_url, timeout=timeout, deadline=deadline,
            http_client=http_client,
        )  # fmt: skip
        self.account_id = account_id
        self.zone_id = zone_id

    # -- scripts ------------------------------------------------------------------

    async def list_scripts(self) -> list[str]:
        body = await self._call(
            "GET /accounts/{account_id}/workers/scripts",
            lambda cf: cf.workers.scripts.with_raw_response.list(account_id=self.account_id),
        )
        return [str(item["id"]) for item in body.get("result") or []]

    async def upload(
        self, script: str, bundle: WorkerBundle, bindings: Sequence[Binding], *, deploy: bool
    ) -> str:
        """A new version of `script` (its id). With `deploy`, the upload that makes the
        script (or replaces what it serves) at once; else a version only, which a
        deployment sends traffic to. A version-only upload of a script that does not
        exist yet raises CloudflareError with `cf_code` NO_SUCH_SCRIPT."""
        metadata: dict[str, Any] = {
            "main_module": bundle.entry,
            "compatibility_date": bundle.compatibility_date,
            "compatibility_flags": list(bundle.compatibility_flags),
            "bindings": [b.as_metadata() for b in bindings],
        }
        files = [
            (name, module.content, CONTENT_TYPES[module.kind])
            for name, module in bundle.modules.items()
        ]
        if deploy:
            await self._call(
                "PUT /accounts/{account_id}/workers/scripts/{script_name}",
                lambda cf: cf.workers.scripts.with_raw_response.update(
                    script, account_id=self.account_id, metadata=metadata,  # type: ignore[arg-type]
                    files=files,
                ),
            )  # fmt: skip
            newest = await self.deployments(script)
            if not newest:
                raise CloudflareError(f"Cloudflare shows no deployment of {script} after upload")
            return newest[0]
        body = await self._call(
            "POST /accounts/{account_id}/workers/scripts/{script_name}/versions",
            lambda cf: cf.workers.scripts.versions.with_raw_response.create(
                script, account_id=self.account_id, metadata=metadata,  # type: ignore[arg-type]
                files=files,
            ),
        )  # fmt: skip
        return str(body["result"]["id"])

    async def deploy(self, script: str, version_id: str, *, message: str = "") -> str:
        """Send all of `script`'s traffic to `version_id`; the deployment's id."""
        # Omitted, not null, when there is no message: the document refuses a null.
        annotations: Any = {"workers/message": message[:100]} if message else cloudflare.omit
        body = await self._call(
            "POST /accounts/{account_id}/workers/scripts/{script_name}/deployments",
            lambda cf: cf.workers.scripts.deployments.with_raw_response.create(
                script, account_id=self.account_id, strategy="percentage",
                versions=[{"version_id": version_id, "percentage": 100}],
                annotations=annotations,
            ),
        )  # fmt: skip
        return str(body["result"]["id"])

    async def deployments(self, script: str) -> list[str]:
        """The version ids `script`'s deployments sent all traffic to, newest first.
        (The SDK 5.9 pages this by `result.items`; Cloudflare answers
        `result.deployments`: read from the raw answer.)"""
        body = await self._call(
            "GET /accounts/{account_id}/workers/scripts/{script_name}/deployments",
            lambda cf: cf.workers.scripts.deployments.with_raw_response.list(
                script, account_id=self.account_id
            ),
        )
        found = []
        for deployment in (body.get("result") or {}).get("deployments") or []:
            versions = sorted(deployment.get("versions") or [], key=lambda v: -v["percentage"])
            if versions:
                found.append(str(versions[0]["version_id"]))
        return found

    async def delete_script(self, script: str) -> bool:
        """False when there was no such script."""
        try:
            await self._call(
                "DELETE /accounts/{account_id}/workers/scripts/{script_name}",
                lambda cf: cf.workers.scripts.with_raw_response.delete(
                    script, account_id=self.account_id, force=True
                ),
            )
        except CloudflareError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    # -- routes ---------------------------------------------------------------------

    def _zone(self) -> str:
        if not self.zone_id:
            raise CloudflareError(
                "no zone for the Workers routes",
                hint="Set `[compute.cloudflare] zone_id` (or `[dns.cloudflare] zone_id`) to "
                "the id of `[project] zone` in Cloudflare.",
            )
        return self.zone_id

    async def routes(self) -> list[CfRoute]:
        zone = self._zone()
        body = await self._call(
            "GET /zones/{zone_id}/workers/routes",
            lambda cf: cf.workers.routes.with_raw_response.list(zone_id=zone),
        )
        return [
            CfRoute(str(r["id"]), str(r["pattern"]), str(r.get("script") or ""))
            for r in body.get("result") or []
        ]

    async def ensure_route(self, pattern: str, script: str) -> CfRoute:
        """The route `pattern` -> `script`: made, or pointed at `script`, as needed."""
        zone = self._zone()
        present = next((r for r in await self.routes() if r.pattern == pattern), None)
        if present is not None and present.script == script:
            return present
        if present is not None:
            body = await self._call(
                "PUT /zones/{zone_id}/workers/routes/{route_id}",
                lambda cf: cf.workers.routes.with_raw_response.update(
                    present.id, zone_id=zone, pattern=pattern, script=script
                ),
            )
        else:
            body = await self._call(
                "POST /zones/{zone_id}/workers/routes",
                lambda cf: cf.workers.routes.with_raw_response.create(
                    zone_id=zone, pattern=pattern, script=script
                ),
            )
        made = body.get("result") or {}
        return CfRoute(str(made.get("id") or ""), pattern, script)

    async def delete_route(self, route_id: str) -> bool:
        zone = self._zone()
        try:
            await self._call(
                "DELETE /zones/{zone_id}/workers/routes/{route_id}",
                lambda cf: cf.workers.routes.with_raw_response.delete(route_id, zone_id=zone),
            )
        except CloudflareError as exc:
            if exc.status == 404:
                return False
            raise
        return True
