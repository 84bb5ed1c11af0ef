"""What the fake Cloudflare keeps for one account: Workers scripts with their versions
(uploaded modules kept as bytes), deployments and secrets, the account's workers.dev
subdomain, custom domains and routes, zones and their DNS records; and Cloudflare's
refusals (`CloudflareError`: an HTTP status and Cloudflare's code and message).

Secrets live in a version's bindings (`secret_text` with its text), as on Cloudflare:
putting or deleting one makes a new version (and deploys it when the script is
deployed); no answer ever carries a secret's text."""

from __future__ import annotations

import copy
import ipaddress
import secrets as random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

AUTHOR = "branchline@fake.cloudflare.test"
# Binding types whose values the fake keeps and hands to a runner.
TEXT_BINDINGS = ("plain_text", "secret_text")


class CloudflareError(Exception):
    """An answer other than success: an HTTP status, Cloudflare's code and message."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def not_found(what: str) -> CloudflareError:
    # 10007: "Resource not found (similar to HTTP 404)" in the document's link errors.
    return CloudflareError(404, 10007, f"{what} not found")


def invalid(message: str) -> CloudflareError:
    # 10021: "Script content failed validation checks" / a request it cannot take.
    return CloudflareError(400, 10021, message)


def now() -> datetime:
    return datetime.now(UTC)


def stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def new_id() -> str:
    """Cloudflare's 32-hex identifiers (records, routes, domains, zones)."""
    return uuid.uuid4().hex


@dataclass
class Module:
    name: str
    content_type: str
    content: bytes


@dataclass
class Version:
    id: str
    number: int
    main_module: str
    modules: dict[str, Module]
    bindings: list[dict[str, Any]]  # as uploaded: secret_text ones carry their text
    compatibility_date: str
    compatibility_flags: list[str]
    annotations: dict[str, str]
    source: str
    created_on: datetime

    def public_bindings(self) -> list[dict[str, Any]]:
        """The bindings as Cloudflare shows them: a secret's text never."""
        return [
            {k: v for k, v in b.items() if not (b.get("type") == "secret_text" and k == "text")}
            for b in self.bindings
        ]

    def secrets(self) -> dict[str, str]:
        return {
            str(b["name"]): str(b.get("text", ""))
            for b in self.bindings
            if b.get("type") == "secret_text"
        }


@dataclass
class Deployment:
    id: str
    versions: list[tuple[str, float]]  # (version id, percentage)
    source: str
    created_on: datetime
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass
class Script:
    name: str
    created_on: datetime
    modified_on: datetime
    versions: list[Version] = field(default_factory=list)
    deployments: list[Deployment] = field(default_factory=list)
    usage_model: str = "standard"
    etag: str = field(default_factory=lambda: random.token_hex(32))

    def latest(self) -> Version | None:
        return self.versions[-1] if self.versions else None

    def version(self, version_id: str) -> Version:
        for version in self.versions:
            if version.id == version_id:
                return version
        raise not_found(f"version {version_id} of script {self.name}")

    def deployed(self) -> Version | None:
        """The version at 100% of the newest deployment (the fake deploys whole)."""
        if not self.deployments:
            return None
        return self.version(self.deployments[-1].versions[0][0])


@dataclass
class DnsRecord:
    id: str
    zone_id: str
    zone_name: str
    type: str
    name: str
    content: str
    proxied: bool
    ttl: float
    comment: str | None
    tags: list[str]
    created_on: datetime
    modified_on: datetime


@dataclass
class Domain:
    id: str
    hostname: str
    service: str
    environment: str
    zone_id: str
    zone_name: str


@dataclass
class Route:
    id: str
    zone_id: str
    pattern: str
    script: str


PROXIABLE = ("A", "AAAA", "CNAME")
# One name may hold several A/AAAA records but a CNAME excludes them all.
ADDRESS_TYPES = ("A", "AAAA", "CNAME")


class CloudflareWorld:
    """One account's scripts and its zones' records, kept in memory."""

    def __init__(self, account_id: str, zones: list[str], subdomain: str | None = None):
        self.account_id = account_id
        self.zones: dict[str, str] = {}  # id -> name
        for name in zones:
            self.add_zone(name)
        self.subdomain = subdomain
        self.scripts: dict[str, Script] = {}
        self.records: dict[str, DnsRecord] = {}
        self.domains: dict[str, Domain] = {}
        self.routes: dict[str, Route] = {}

    # -- zones ----------------------------------------------------------------

    def add_zone(self, name: str) -> str:
        for zone_id, known in self.zones.items():
            if known == name:
                return zone_id
        zone_id = new_id()
        self.zones[zone_id] = name
        return zone_id

    def zone(self, zone_id: str) -> str:
        if zone_id not in self.zones:
            # Cloudflare's answer for an identifier it cannot route.
            raise CloudflareError(404, 7003, f"Could not route to /zones/{zone_id}, perhaps "
                                  "your object identifier is invalid?")  # fmt: skip
        return self.zones[zone_id]

    def zone_of(self, hostname: str) -> tuple[str, str]:
        """The zone (id, name) that holds `hostname`: the longest that does."""
        best: tuple[str, str] | None = None
        for zone_id, name in self.zones.items():
            inside = hostname == name or hostname.endswith("." + name)
            if inside and (best is None or len(name) > len(best[1])):
                best = (zone_id, name)
        if best is None:
            raise invalid(f"{hostname} is in no zone of this account")
        return best

    # -- scripts and versions -------------------------------------------------------

    def script(self, name: str) -> Script:
        script = self.scripts.get(name)
        if script is None:
            # 10007 with Cloudflare's own wording for a missing Worker.
            raise CloudflareError(404, 10007, "This Worker does not exist on your account.")
        return script

    def add_version(
        self, name: str, metadata: dict[str, Any], modules: list[Module], *, source: str,
        create: bool,
    ) -> tuple[Script, Version]:  # fmt: skip
        """A new version of `name` from an upload's metadata and modules (`create`: the
        script is made if it does not exist, as an upload does)."""
        if create and name not in self.scripts:
            moment = now()
            self.scripts[name] = Script(name, moment, moment)
        script = self.script(name)
        main = metadata.get("main_module") or metadata.get("body_part")
        if not main:
            raise invalid("main_module is required: the part that exports the fetch handler")
        by_name = {m.name: m for m in modules}
        if main not in by_name:
            raise CloudflareError(400, 10021, f"No such module \"{main}\": the metadata's "
                                  "main_module names no uploaded part")  # fmt: skip
        bindings = [dict(b) for b in metadata.get("bindings") or []]
        for binding in bindings:
            if not binding.get("name") or not binding.get("type"):
                raise invalid("every binding needs a name and a type")
            if binding["type"] in TEXT_BINDINGS and not isinstance(binding.get("text"), str):
                raise invalid(f"binding {binding['name']}: {binding['type']} needs a text")
        names = [b["name"] for b in bindings]
        if len(set(names)) != len(names):
            raise invalid("a binding name is used twice")
        previous = script.latest()
        kept = set(metadata.get("keep_bindings") or [])
        if previous is not None and kept:
            # keep_bindings: the previous version's bindings of those types carry over.
            bindings += [copy.deepcopy(b) for b in previous.bindings
                         if b.get("type") in kept and b["name"] not in names]  # fmt: skip
        version = Version(
            id=str(uuid.uuid4()),
            number=len(script.versions) + 1,
            main_module=str(main),
            modules=by_name,
            bindings=bindings,
            compatibility_date=str(metadata.get("compatibility_date") or ""),
            compatibility_flags=[str(f) for f in metadata.get("compatibility_flags") or []],
            annotations={str(k): str(v) for k, v in (metadata.get("annotations") or {}).items()},
            source=source,
            created_on=now(),
        )
        script.versions.append(version)
        script.modified_on = version.created_on
        script.etag = random.token_hex(32)
        if metadata.get("usage_model"):
            script.usage_model = str(metadata["usage_model"])
        return script, version

    def deploy(
        self, name: str, versions: list[tuple[str, float]], *, source: str,
        annotations: dict[str, str] | None = None,
    ) -> Deployment:  # fmt: skip
        script = self.script(name)
        if not versions:
            raise invalid("a deployment needs a version")
        for version_id, _ in versions:
            script.version(version_id)
        if abs(sum(p for _, p in versions) - 100) > 1e-9:
            raise invalid("the versions' percentages must add up to 100")
        if len(versions) != 1:
            # The fake runs one version per script: a gradual split is not modelled.
            raise invalid("the fake Cloudflare deploys one version at 100% (no gradual split)")
        deployment = Deployment(str(uuid.uuid4()), list(versions), source, now(),
                                dict(annotations or {}))  # fmt: skip
        script.deployments.append(deployment)
        script.modified_on = deployment.created_on
        return deployment

    def delete_script(self, name: str) -> Script:
        script = self.script(name)
        del self.scripts[name]
        for route in [r for r in self.routes.values() if r.script == name]:
            del self.routes[route.id]
        for domain in [d for d in self.domains.values() if d.service == name]:
            del self.domains[domain.id]
        return script

    # -- secrets -------------------------------------------------------------------------

    def put_secret(self, name: str, secret: str, text: str) -> tuple[Version, bool]:
        """A new version with the secret set; (it, whether it is to be deployed)."""
        return self._rebind(name, secret, {"type": "secret_text", "name": secret, "text": text})

    def delete_secret(self, name: str, secret: str) -> tuple[Version, bool]:
        latest = self.script(name).latest()
        if latest is None or secret not in latest.secrets():
            raise not_found(f"secret {secret} of script {name}")
        return self._rebind(name, secret, None)

    def _rebind(
        self, name: str, secret: str, binding: dict[str, Any] | None
    ) -> tuple[Version, bool]:
        script = self.script(name)
        latest = script.latest()
        if latest is None:
            raise invalid(f"script {name} has no version to bind a secret to")
        if any(b["name"] == secret and b.get("type") != "secret_text" for b in latest.bindings):
            raise invalid(f"binding {secret} exists and is not a secret")
        bindings = [copy.deepcopy(b) for b in latest.bindings if b["name"] != secret]
        if binding is not None:
            bindings.append(binding)
        version = Version(
            id=str(uuid.uuid4()), number=len(script.versions) + 1,
            main_module=latest.main_module, modules=dict(latest.modules), bindings=bindings,
            compatibility_date=latest.compatibility_date,
            compatibility_flags=list(latest.compatibility_flags),
            annotations={"workers/triggered_by": "secret"}, source="api", created_on=now(),
        )  # fmt: skip
        script.versions.append(version)
        script.modified_on = version.created_on
        # Cloudflare deploys a secret change at once when the script runs.
        return version, script.deployed() is not None

    # -- DNS ---------------------------------------------------------------------------

    def record(self, zone_id: str, record_id: str) -> DnsRecord:
        self.zone(zone_id)
        record = self.records.get(record_id)
        if record is None or record.zone_id != zone_id:
            raise CloudflareError(404, 81044, "Record does not exist.")
        return record

    def create_record(self, zone_id: str, body: dict[str, Any]) -> DnsRecord:
        zone_name = self.zone(zone_id)
        moment = now()
        record = DnsRecord(
            id=new_id(), zone_id=zone_id, zone_name=zone_name, type="", name="", content="",
            proxied=False, ttl=1, comment=None, tags=[], created_on=moment, modified_on=moment,
        )  # fmt: skip
        self._apply(record, body, full=True)
        self.records[record.id] = record
        return record

    def update_record(
        self, zone_id: str, record_id: str, body: dict[str, Any], *, full: bool
    ) -> DnsRecord:
        record = self.record(zone_id, record_id)
        changed = copy.copy(record)
        if full:  # an overwrite: what the body leaves out takes its default
            changed.proxied, changed.ttl, changed.comment, changed.tags = False, 1, None, []
        self._apply(changed, body, full=full)
        changed.modified_on = now()
        self.records[record.id] = changed
        return changed

    def delete_record(self, zone_id: str, record_id: str) -> None:
        self.record(zone_id, record_id)
        del self.records[record_id]

    def _apply(self, record: DnsRecord, body: dict[str, Any], *, full: bool) -> None:
        """`body`'s fields onto `record`, with Cloudflare's checks."""
        kind = str(body.get("type", record.type)).upper()
        name = _fqdn(str(body.get("name", record.name)), record.zone_name)
        content = str(body.get("content", record.content))
        if kind not in PROXIABLE and kind not in ("TXT", "MX", "NS"):
            raise CloudflareError(400, 1004, f"DNS Validation Error: the fake keeps A, AAAA, "
                                  f"CNAME, TXT, MX and NS records, not {kind}")  # fmt: skip
        if not (name == record.zone_name or name.endswith("." + record.zone_name)):
            raise CloudflareError(400, 1004, f"DNS Validation Error: {name} is not in zone "
                                  f"{record.zone_name}")  # fmt: skip
        if kind in ("A", "AAAA"):
            try:
                address = ipaddress.ip_address(content)
            except ValueError:
                address = None
            if address is None or address.version != (4 if kind == "A" else 6):
                which = "IPv4" if kind == "A" else "IPv6"
                raise CloudflareError(400, 9005, f"Content for {kind} record must be a valid "
                                      f"{which} address.")  # fmt: skip
        proxied = bool(body.get("proxied", record.proxied))
        if proxied and kind not in PROXIABLE:
            raise CloudflareError(400, 9004, f"This record type cannot be proxied: {kind}")
        self._check_duplicates(record.id, kind, name, content)
        record.type, record.name, record.content, record.proxied = kind, name, content, proxied
        if "ttl" in body:
            record.ttl = body["ttl"]
        if "comment" in body:
            record.comment = body["comment"]
        if "tags" in body:
            record.tags = [str(t) for t in body["tags"]]

    def _check_duplicates(self, record_id: str, kind: str, name: str, content: str) -> None:
        for other in self.records.values():
            if other.id == record_id or other.name != name:
                continue
            if other.type == kind and other.content == content:
                raise CloudflareError(400, 81057, "Record already exists.")
            if (
                kind in ADDRESS_TYPES
                and other.type in ADDRESS_TYPES
                and (kind == "CNAME" or other.type == "CNAME")
            ):
                raise CloudflareError(400, 81053, "An A, AAAA, or CNAME record with that "
                                      "host already exists.")  # fmt: skip

    # -- custom domains and routes ----------------------------------------------------------

    def attach_domain(self, body: dict[str, Any]) -> Domain:
        hostname = str(body["hostname"])
        service = str(body["service"])
        self.script(service)
        zone_id = str(body.get("zone_id") or "") or self.zone_of(hostname)[0]
        zone_name = self.zone(zone_id)
        if not (hostname == zone_name or hostname.endswith("." + zone_name)):
            raise invalid(f"{hostname} is not in zone {zone_name}")
        environment = str(body.get("environment") or "production")
        for domain in self.domains.values():
            if domain.hostname == hostname:  # an attach moves a hostname to the service
                domain.service, domain.environment = service, environment
                return domain
        domain = Domain(new_id(), hostname, service, environment, zone_id, zone_name)
        self.domains[domain.id] = domain
        return domain

    def domain(self, domain_id: str) -> Domain:
        domain = self.domains.get(domain_id)
        if domain is None:
            raise not_found(f"domain {domain_id}")
        return domain

    def route(self, zone_id: str, route_id: str) -> Route:
        self.zone(zone_id)
        route = self.routes.get(route_id)
        if route is None or route.zone_id != zone_id:
            raise not_found(f"route {route_id}")
        return route

    def put_route(self, zone_id: str, body: dict[str, Any], route_id: str | None = None) -> Route:
        self.zone(zone_id)
        pattern = str(body["pattern"])
        script = str(body.get("script") or "")
        if script:
            self.script(script)
        for other in self.routes.values():
            if other.pattern == pattern and other.id != route_id:
                raise CloudflareError(409, 10020, f"A route with pattern {pattern} already exists")
        if route_id is None:
            route = Route(new_id(), zone_id, pattern, script)
        else:
            route = self.route(zone_id, route_id)
            route.pattern, route.script = pattern, script
        self.routes[route.id] = route
        return route


def _fqdn(name: str, zone: str) -> str:
    """A record's full name: `@` is the zone, a bare label lives under it."""
    name = name.rstrip(".").lower()
    if name in ("@", ""):
        return zone
    if name == zone or name.endswith("." + zone):
        return name
    return f"{name}.{zone}"
