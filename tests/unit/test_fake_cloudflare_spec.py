"""The fake Cloudflare's documents and their patches, and its world's rules, without a
server: the documents are Cloudflare's byte for byte, each patch mends a defect the
unpatched document really has (a valid exchange it refuses), and the world keeps
Cloudflare's DNS and secrets rules."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from openapi_core import OpenAPI

from branchline.fakes import openapi as shared
from branchline.fakes.cloudflare import spec
from branchline.fakes.cloudflare.world import CloudflareError, CloudflareWorld, Module
from branchline.fakes.openapi import SpecResponse
from tests.conftest import REPO

SHARED = REPO.parent / "shared" / "realworld" / "cloudflare"
# The documents as shared (see their `x-subset-note`): byte for byte.
SHA256 = {
    spec.SPEC_PATH.name: "aba6bf2ff7d8aec7636ba6d5a0c6987c9015c10c484790c608fad63bd346955a",
    spec.SECRETS_PATH.name: "75733a809b83ba5e91bd633f6e6f90815133c31a72a1cea0cccf0ec8de7fc89d",
}
ACCOUNT = "a" * 32
ZONE = "b" * 32
SCRIPT = f"/accounts/{ACCOUNT}/workers/scripts/api"
FAILURE = json.dumps(
    {
        "success": False,
        "errors": [{"code": 10007, "message": "not found"}],
        "messages": [],
        "result": None,
    }
).encode()


def test_the_unpatched_subset_is_refused_by_a_strict_validator() -> None:
    """Patch 2's first half: the DNS operations' "4xx" keys are not OpenAPI."""
    document: dict[str, Any] = json.loads(spec.SPEC_PATH.read_bytes())
    with pytest.raises(Exception, match="'4xx' was unexpected"):
        shared.load(document)


@pytest.fixture(scope="module")
def unpatched() -> OpenAPI:
    """The subset as shipped with only its "4xx" keys renamed "4XX" (so that it loads
    at all): no other patch, no secrets operations."""
    document: dict[str, Any] = json.loads(spec.SPEC_PATH.read_bytes())
    for item in document["paths"].values():
        for operation in item.values():
            responses = operation.get("responses", {}) if isinstance(operation, dict) else {}
            if "4xx" in responses:
                responses["4XX"] = responses.pop("4xx")
    return shared.load(document)


def request(method: str, path: str, body: Any = None) -> shared.SpecRequest:
    raw = json.dumps(body).encode() if body is not None else None
    headers = {"authorization": "Bearer token", "content-type": "application/json"}
    return spec.spec_request(method, path, query=[], headers=headers, body=raw,
                             content_type="application/json")  # fmt: skip


@pytest.mark.parametrize("path", [spec.SPEC_PATH, spec.SECRETS_PATH])
def test_the_documents_are_cloudflares_byte_for_byte(path: Any) -> None:
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SHA256[path.name]
    if (SHARED / path.name).exists():
        assert path.read_bytes() == (SHARED / path.name).read_bytes()


def test_a_token_and_an_sdk_dns_body_pass_only_once_patched(unpatched: OpenAPI) -> None:
    # What the SDK sends to create a record, with its Bearer token.
    made = request("POST", f"/zones/{ZONE}/dns_records",
                   {"name": "api.example.com", "ttl": 1, "type": "CNAME",
                    "content": "x.workers.dev", "proxied": True})  # fmt: skip
    refused = shared.request_errors(unpatched, made) or ""
    assert "Security" in refused or "'id' is a required property" in refused
    assert spec.request_errors(made) is None
    # A token alone, on an operation without a body: only the security patch matters.
    listed = request("GET", f"/zones/{ZONE}/dns_records")
    assert "Security" in (shared.request_errors(unpatched, listed) or "")
    assert spec.request_errors(listed) is None


def test_error_envelopes_match_only_once_patched(unpatched: OpenAPI) -> None:
    for path in (f"/zones/{ZONE}/dns_records/{'c' * 32}", SCRIPT + "/versions"):
        asked = request("GET", path)
        assert shared.response_errors(unpatched, asked, SpecResponse(404, FAILURE)) is not None
        assert spec.response_errors(asked, SpecResponse(404, FAILURE)) is None
        assert spec.response_errors(asked, SpecResponse(503, FAILURE)) is None


def test_deletes_versions_and_partial_patches_pass_only_once_patched(unpatched: OpenAPI) -> None:
    for made in (
        request("DELETE", SCRIPT),  # no body, as the SDK sends it
        request("GET", SCRIPT + "/versions/bcf48806-b317-4351-9ee7-36e7d557d4de"),
        request("PATCH", f"/zones/{ZONE}/dns_records/{'c' * 32}", {"ttl": 600}),
        request("PUT", f"/accounts/{ACCOUNT}/workers/domains",
                {"hostname": "api.example.com", "service": "api", "zone_id": ZONE}),
    ):  # fmt: skip
        assert shared.request_errors(unpatched, made) is not None, made.api_path
        assert spec.request_errors(made) is None, made.api_path


def test_the_secrets_operations_are_merged_and_still_strict() -> None:
    put = request("PUT", SCRIPT + "/secrets", {"name": "S", "text": "v", "type": "secret_text"})
    assert spec.request_errors(put) is None
    assert spec.request_errors(request("DELETE", SCRIPT + "/secrets/S")) is None
    wrong = request("PUT", SCRIPT + "/secrets", {"name": "S", "text": "v", "type": "plain"})
    assert "plain" in (spec.request_errors(wrong) or "")


def world() -> CloudflareWorld:
    return CloudflareWorld(ACCOUNT, ["example.com"])


def code(exc: pytest.ExceptionInfo[CloudflareError]) -> tuple[int, int]:
    return exc.value.status, exc.value.code


def test_dns_duplicates_conflicts_and_names() -> None:
    w = world()
    zone = next(iter(w.zones))
    a = w.create_record(zone, {"type": "A", "name": "www", "content": "192.0.2.1"})
    assert a.name == "www.example.com"
    assert w.create_record(zone, {"type": "A", "name": "www", "content": "192.0.2.2"}).id
    with pytest.raises(CloudflareError) as twice:
        w.create_record(zone, {"type": "A", "name": "www.example.com", "content": "192.0.2.1"})
    assert code(twice) == (400, 81057)
    with pytest.raises(CloudflareError) as beside:
        w.create_record(zone, {"type": "CNAME", "name": "www", "content": "x.example.net"})
    assert code(beside) == (400, 81053)
    with pytest.raises(CloudflareError) as address:
        w.create_record(zone, {"type": "AAAA", "name": "v6", "content": "192.0.2.1"})
    assert code(address) == (400, 9005)
    assert w.create_record(zone, {"type": "TXT", "name": "@", "content": "x"}).name == "example.com"
    with pytest.raises(CloudflareError) as missing:
        w.record(zone, "0" * 32)
    assert code(missing) == (404, 81044)


def test_secrets_live_in_versions_and_are_never_public() -> None:
    w = world()
    metadata = {"main_module": "w.js", "bindings": [
        {"type": "secret_text", "name": "K", "text": "hidden"},
        {"type": "plain_text", "name": "P", "text": "shown"},
    ]}  # fmt: skip
    _, first = w.add_version("api", metadata, [Module("w.js", "text/javascript", b"1")],
                             source="api", create=True)  # fmt: skip
    assert first.secrets() == {"K": "hidden"}
    assert "hidden" not in json.dumps(first.public_bindings())
    assert "shown" in json.dumps(first.public_bindings())
    # A new upload drops secrets unless it keeps them (keep_bindings).
    _, dropped = w.add_version("api", {"main_module": "w.js"},
                               [Module("w.js", "text/javascript", b"2")], source="api",
                               create=False)  # fmt: skip
    assert dropped.secrets() == {}
    second, deploy = w.put_secret("api", "K", "again")
    assert second.secrets() == {"K": "again"} and deploy is False  # nothing deployed yet
    _, kept = w.add_version("api", {"main_module": "w.js", "keep_bindings": ["secret_text"]},
                            [Module("w.js", "text/javascript", b"3")], source="api",
                            create=False)  # fmt: skip
    assert kept.secrets() == {"K": "again"}
    with pytest.raises(CloudflareError) as no_main:
        w.add_version("api", {"main_module": "missing.js"},
                      [Module("w.js", "text/javascript", b"4")], source="api",
                      create=False)  # fmt: skip
    assert code(no_main) == (400, 10021)


def test_an_upload_is_held_to_the_modules_and_metadata_shape() -> None:
    def upload(metadata: dict[str, Any]) -> shared.SpecRequest:
        body = (
            b'--XX\r\nContent-Disposition: form-data; name="files"; filename="worker.js"\r\n'
            b"Content-Type: application/javascript+module\r\n\r\nexport default {}\r\n"
            b'--XX\r\nContent-Disposition: form-data; name="metadata"\r\n'
            b"Content-Type: application/json\r\n\r\n" + json.dumps(metadata).encode() + b"\r\n"
            b"--XX--\r\n"
        )
        kind = "multipart/form-data; boundary=XX"
        headers = {"authorization": "Bearer t", "content-type": kind}
        return spec.spec_request(
            "PUT", SCRIPT, query=[], body=body, content_type=kind, headers=headers
        )

    assert spec.request_errors(upload({"main_module": "worker.js"})) is None
    refused = spec.request_errors(upload({"main_module": "worker.js", "usage_model": "bogus"}))
    assert "bogus" in (refused or "")
