"""Cloudflare's published OpenAPI documents (the Workers + DNS subset, and the per-script
secrets operations quoted from a newer document), shipped byte for byte, and validation
of the fake's requests and responses against them. The documents' defects that would
fail valid Cloudflare exchanges are patched in `patch`, one place, on the loaded copy:
the shipped files stay Cloudflare's."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from openapi_core import OpenAPI

from branchline.fakes import openapi as shared
from branchline.fakes.openapi import SpecRequest, SpecResponse

HERE = Path(__file__).parent
SPEC_PATH = HERE / "cloudflare-api.workers-dns.subset.2024-08-06.json"
SECRETS_PATH = HERE / "worker-script-secrets.operations.2026-07-27.json"
SERVER = "https://api.cloudflare.com"  # the document's server is this host + API_PREFIX
API_PREFIX = "/client/v4"
METHODS = ("get", "put", "post", "delete", "patch")

_WORKERS_FAILURE = {"$ref": "#/components/schemas/workers_api-response-common-failure"}
_DNS_FAILURE = {"$ref": "#/components/schemas/dns-records_api-response-common-failure"}
_ZONES_FAILURE = {"$ref": "#/components/schemas/zones_api-response-common-failure"}
_SERVER_SET = ("id", "proxiable", "created_on", "modified_on")


def patch(document: dict[str, Any], secrets: dict[str, Any]) -> dict[str, Any]:
    """The loaded subset with the secrets operations merged in and its defects mended
    (in place; returned for chaining). Each patch says which defect it mends."""
    schemas = document["components"]["schemas"]
    # 1. The secrets operations come without components, and three they use exist in
    #    neither file (the note of the secrets file says so): a secret's name is a
    #    string, `url_encoded` a flag, a delete's answer the envelope with a null result.
    document["paths"].update(secrets["paths"])
    schemas["workers_secret_name"] = {"type": "string"}
    schemas["workers_secret_name_url_encoded"] = {"type": "boolean", "default": False}
    schemas["workers_api-response-null-result"] = {
        "allOf": [
            {"$ref": "#/components/schemas/workers_api-response-common"},
            {"properties": {"result": {"nullable": True, "enum": [None], "type": "object"}}},
        ]
    }
    for path, item in document["paths"].items():
        for method in METHODS:
            if method not in item:
                continue
            operation = item[method]
            responses = operation["responses"]
            # 2. The DNS operations key their error answers "4xx" (OpenAPI's range is
            #    "4XX": strict validators reject, openapi-core never matches it), and
            #    most 4XX schemas are allOf(the success envelope, the failure envelope):
            #    `success` must then be both true and false, so no answer can match.
            #    Every error answer is held to its family's failure envelope; so are
            #    the 5XX answers, which the documents leave out (Cloudflare's outages
            #    answer in the same envelope).
            responses.pop("4xx", None)
            responses["4XX"] = _failure(_family_failure(path))
            responses.setdefault("5XX", _failure(_family_failure(path)))
            # 3. Every DELETE declares a required, empty JSON body; Cloudflare's SDKs
            #    send none (the body, when sent, is still JSON).
            body = operation.get("requestBody")
            if method == "delete" and body is not None:
                body["required"] = False
            # 4. The DNS operations declare only the legacy e-mail + global key; every
            #    Cloudflare API takes an API token (Bearer) too, as the rest of the
            #    document says and the SDK sends.
            security = operation.get("security")
            if security is not None and {"api_token": []} not in security:
                security.insert(0, {"api_token": []})
    workers = "/accounts/{account_id}/workers/scripts/{script_name}"
    # 5. A script's download declares the media type "undefined"; Cloudflare answers
    #    the module's own text (application/javascript for the SDK's Accept).
    download = document["paths"][workers]["get"]["responses"]["200"]
    download["content"] = {
        "application/javascript": {"schema": {"type": "string", "format": "binary"}}
    }
    # 6. The upload's multipart body is oneOf(modules + metadata, a rollback message):
    #    neither alternative requires anything, so every upload matches both and oneOf
    #    fails (anyOf would pass anything through the message). The message is read
    #    only with `rollback_to`, which the fake refuses: an upload is held to the
    #    modules + metadata shape alone, so its metadata is checked.
    upload = document["components"]["requestBodies"]["workers_script_upload"]
    multipart = upload["content"]["multipart/form-data"]
    multipart["schema"] = multipart["schema"]["oneOf"][0]
    # 7. A DNS record requires `id`, `proxiable`, `created_on` and `modified_on`, all
    #    set by Cloudflare (the last three marked readOnly, the id assigned), and the
    #    create and overwrite bodies are that record: no client could send a valid
    #    one. Answers keep them required.
    written = dict(schemas["dns-records_dns-record"])
    written["required"] = [name for name in written["required"] if name not in _SERVER_SET]
    schemas["dns-records_dns-record-written"] = written
    records = "/zones/{zone_id}/dns_records"
    for path, method in ((records, "post"), (records + "/{dns_record_id}", "put")):
        content = document["paths"][path][method]["requestBody"]["content"]
        content["application/json"] = {
            "schema": {"$ref": "#/components/schemas/dns-records_dns-record-written"}
        }
    # 8. A DNS PATCH changes some fields of a record, but its body is the full record
    #    (type, name and content required): a partial body is what PATCH is for.
    record = "/zones/{zone_id}/dns_records/{dns_record_id}"
    document["paths"][record]["patch"]["requestBody"]["content"]["application/json"] = {
        "schema": _partial_record(schemas)
    }
    # 9. A version's id is read-only in the version, and the same schema types the
    #    `version_id` path parameter, so openapi-core refuses every request naming a
    #    version ("tried to write read-only property").
    schemas["workers_version_path_identifier"] = {
        key: value for key, value in schemas["workers_version_identifier"].items()
        if key != "readOnly"
    }  # fmt: skip
    version = document["paths"][workers + "/versions/{version_id}"]["get"]
    for parameter in version["parameters"]:
        if parameter["name"] == "version_id":
            parameter["schema"] = {"$ref": "#/components/schemas/workers_version_path_identifier"}
    # 10. Attaching a custom domain requires `environment`, a setting Cloudflare has
    #     since dropped with service environments: the SDK (5.x) no longer sends it.
    attach = document["paths"]["/accounts/{account_id}/workers/domains"]["put"]
    attach_schema = attach["requestBody"]["content"]["application/json"]["schema"]
    attach_schema["required"] = [n for n in attach_schema["required"] if n != "environment"]
    # 11. Every message's code has a minimum of 1000, but Cloudflare's answer to its
    #    global rate limit (HTTP 429) carries code 971.
    for name in ("workers_messages", "dns-records_messages", "zones_messages"):
        schemas[name]["items"]["properties"]["code"].pop("minimum", None)
    return document


def _family_failure(path: str) -> dict[str, str]:
    if "/dns_records" in path:
        return _DNS_FAILURE
    if path == "/zones":
        return _ZONES_FAILURE
    return _WORKERS_FAILURE


def _failure(schema: dict[str, str]) -> dict[str, Any]:
    return {"description": "failure", "content": {"application/json": {"schema": schema}}}


def _partial_record(schemas: dict[str, Any]) -> dict[str, Any]:
    """Every record type's fields, none required (type, when given, still one of them)."""
    properties: dict[str, Any] = {}
    for alternative in schemas["dns-records_dns-record"]["oneOf"]:
        record = schemas[alternative["$ref"].rsplit("/", 1)[-1]]
        for part in record["allOf"]:
            if "properties" in part:
                for name, schema in part["properties"].items():
                    # A field two types define differently (content: an IPv4
                    # address, a host name ...) takes any value here.
                    known = properties.setdefault(name, schema)
                    if known != schema:
                        properties[name] = {}
    properties["type"] = {"$ref": "#/components/schemas/dns-records_type"}
    return {"allOf": [{"type": "object", "properties": properties},
                      {"$ref": "#/components/schemas/dns-records_base"}]}  # fmt: skip


@cache
def openapi() -> OpenAPI:
    """The patched document, parsed once per process."""
    document: dict[str, Any] = json.loads(SPEC_PATH.read_bytes())
    secrets: dict[str, Any] = json.loads(SECRETS_PATH.read_bytes())
    return shared.load(patch(document, secrets))


def spec_request(
    method: str,
    path: str,
    *,
    query: list[tuple[str, str]],
    headers: dict[str, str],
    body: bytes | None,
    content_type: str,
) -> SpecRequest:
    """A request to `path` under /client/v4, validated as if sent to Cloudflare."""
    return SpecRequest(
        method, path, query=query, headers=headers, raw_body=body,
        content_type_header=content_type, server=SERVER, prefix=API_PREFIX,
    )  # fmt: skip


def request_errors(request: SpecRequest) -> str | None:
    return shared.request_errors(openapi(), request)


def response_errors(request: SpecRequest, response: SpecResponse) -> str | None:
    return shared.response_errors(openapi(), request, response)
