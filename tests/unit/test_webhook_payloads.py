"""GitHub's webhook bodies against branchline's models: every real delivery in the
fixtures passes, what the models require GitHub's own schema requires too, and
each malformed body is refused naming the field and the problem, not the value."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest

from branchline import events
from branchline.providers.forge import github_events, payloads
from tests.conftest import REPO

FIXTURES = REPO / "tests" / "fixtures" / "github-webhooks"
SCHEMA = json.loads((FIXTURES / "webhooks-openapi.subset.json").read_text())
SHA = "ec26c3e57ca3a959ca5aad62de7213c562f8c821"


def delivery(path: Path) -> tuple[str, dict[str, Any]]:
    data = json.loads(path.read_text())
    if "body_raw_base64" in data:  # a captured delivery: its headers and raw body
        body = json.loads(base64.b64decode(data["body_raw_base64"]))
        return str(data["headers"]["x-github-event"]), body
    return path.name.split(".")[0], data


REAL = sorted(p for p in FIXTURES.rglob("*.json") if p.parent != FIXTURES)


@pytest.mark.parametrize("path", REAL, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_real_delivery_passes_its_model(path: Path) -> None:
    kind, body = delivery(path)
    typed = github_events.validate(kind, body)
    if kind not in ("ping", *github_events.HANDLED):
        assert typed is None  # workflow_run, delete: not read at all
        return
    assert typed is not None
    event = github_events.parse(kind, body)
    if isinstance(typed, payloads.PullRequestPayload):
        assert isinstance(event, events.PullRequestChanged)
        assert (event.number, event.head_branch, event.head_sha) == (
            body["number"], body["pull_request"]["head"]["ref"],
            body["pull_request"]["head"]["sha"],
        )  # fmt: skip
    if isinstance(typed, payloads.PushPayload) and body["ref"].startswith("refs/heads/"):
        assert isinstance(event, events.Push) and event.deleted == body["deleted"]


# -- the models never ask more than GitHub promises ---------------------------------------


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    """A schema with its $ref followed and allOf merged (properties, required)."""
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        schema = SCHEMA["components"]["schemas"][name]
    if "allOf" in schema:
        merged: dict[str, Any] = {"properties": {}, "required": []}
        for part in map(_resolve, schema["allOf"]):
            merged["properties"].update(part.get("properties", {}))
            merged["required"] += part.get("required", [])
        return merged
    if "anyOf" in schema or "oneOf" in schema:  # nullable objects: the object branch
        options = [_resolve(s) for s in schema.get("anyOf", schema.get("oneOf", []))]
        return next(o for o in options if "properties" in o)
    return schema


def _required_paths(model: type[Any], prefix: str = "") -> list[str]:
    """Every field the model requires, as dotted paths (nested models followed)."""
    found = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        nested = getattr(annotation, "model_fields", None)
        if field.is_required():
            found.append(prefix + name)
        if nested is not None:
            found += _required_paths(annotation, f"{prefix}{name}.")
        for option in getattr(annotation, "__args__", ()):  # X | None
            if getattr(option, "model_fields", None) is not None:
                found += [p for p in _required_paths(option, f"{prefix}{name}.")]
    return found


@pytest.mark.parametrize(
    ("model", "schemas"),
    [(payloads.PushPayload, ["push"]),
     (payloads.PullRequestPayload, ["pull-request-opened", "pull-request-synchronize",
                                    "pull-request-reopened", "pull-request-closed"])],
)  # fmt: skip
def test_what_a_model_requires_githubs_schema_requires(
    model: type[Any], schemas: list[str]
) -> None:
    paths = _required_paths(model)
    assert paths, "the model requires something"
    for webhook in schemas:
        operation = SCHEMA["x-webhooks"][webhook]["post"]
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        checked = 0
        for path in paths:
            schema = _resolve(body)
            *parents, last = path.split(".")
            for part in parents:  # an optional object this action does not have: skip
                schema = _resolve(schema.get("properties", {}).get(part, {"properties": {}}))
            if schema["properties"]:
                checked += 1
                assert last in schema.get("required", []), f"{webhook}: {path} is optional"
        assert checked >= len(paths) - 1, f"{webhook}: only {checked} of {paths} checked"


# -- malformed bodies -----------------------------------------------------------------------


def opened() -> dict[str, Any]:
    path = FIXTURES / "octokit-examples" / "pull_request.opened.payload.json"
    return copy.deepcopy(delivery(path)[1])


def push() -> dict[str, Any]:
    return copy.deepcopy(
        delivery(FIXTURES / "octokit-examples/push.new-branch-master.payload.json")[1]
    )


def with_value(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    target = body
    *parents, last = path.split(".")
    for part in parents:
        target = target[part]
    target[last] = value
    return body


# (kind, field, value, where the error points, what it says)
MALFORMED = [
    ("pull_request", "pull_request", "x", "pull_request", "valid dictionary"),
    ("pull_request", "repository", [1], "repository", "valid dictionary"),
    ("pull_request", "number", 2**31, "number", "less than or equal to 2147483647"),
    ("pull_request", "number", 0, "number", "greater than or equal to 1"),
    ("pull_request", "number", -1, "number", "greater than or equal to 1"),
    ("pull_request", "number", True, "number", "valid integer"),
    ("pull_request", "number", 1.5, "number", "valid integer"),
    ("pull_request", "number", 1.0, "number", "valid integer"),
    ("pull_request", "number", "2", "number", "valid integer"),
    ("pull_request", "number", None, "number", "valid integer"),
    ("pull_request", "pull_request.number", 3, "the body", "differ"),
    ("pull_request", "pull_request.head.ref", "a..b", "pull_request.head.ref", "'..'"),
    ("pull_request", "pull_request.head.ref", "a\nb", "pull_request.head.ref", "U+000A"),
    ("pull_request", "pull_request.head.ref", "x.lock", "pull_request.head.ref", ".lock"),
    ("pull_request", "pull_request.head.ref", "-x", "pull_request.head.ref", "'-'"),
    ("pull_request", "pull_request.head.ref", "\u202eevil", "pull_request.head.ref", "U+202E"),
    ("pull_request", "pull_request.base.ref", "a b", "pull_request.base.ref", "a space"),
    ("pull_request", "pull_request.head.sha", "nope", "pull_request.head.sha", "commit id"),
    ("pull_request", "pull_request.head", None, "pull_request.head", "valid dictionary"),
    ("pull_request", "pull_request.title", "a\x00b", "pull_request.title", "U+0000"),
    ("pull_request", "pull_request.title", "x" * 5000, "pull_request.title", "at most 1024"),
    ("pull_request", "pull_request.merged", "yes", "pull_request.merged", "valid boolean"),
    ("pull_request", "action", 5, "action", "valid string"),
    ("pull_request", "repository.full_name", "a\x1bb", "repository.full_name", "U+001B"),
    ("push", "ref", "refs/heads/a..b", "ref", "'..'"),
    ("push", "ref", "refs/heads/a\nb", "ref", "U+000A"),
    ("push", "ref", "refs/heads/x/", "ref", "'/'"),
    ("push", "ref", "refs/heads/-x", "ref", "starts with '-'"),
    ("push", "ref", "refs/heads/HEAD", "ref", "'HEAD'"),
    ("push", "ref", 7, "ref", "valid string"),
    ("push", "after", "x" * 40, "after", "commit id"),
    ("push", "deleted", "false", "deleted", "valid boolean"),
    ("push", "repository", [1], "repository", "valid dictionary"),
]


@pytest.mark.parametrize(("kind", "field", "value", "where", "says"), MALFORMED)
def test_each_malformed_body_is_refused_naming_the_field(
    kind: str, field: str, value: Any, where: str, says: str
) -> None:
    body = with_value(opened() if kind == "pull_request" else push(), field, value)
    with pytest.raises(payloads.MalformedPayloadError) as refused:
        github_events.parse(kind, body)
    found = dict(refused.value.errors)
    assert where in found, refused.value.errors
    assert says in found[where], found[where]
    assert str(refused.value).startswith(f"the {kind} payload is malformed: {where}: ")


def test_a_huge_value_is_never_echoed() -> None:
    huge = "A" * 1_000_000
    body = with_value(with_value(opened(), "pull_request.title", huge), "number", huge)
    with pytest.raises(payloads.MalformedPayloadError) as refused:
        github_events.parse("pull_request", body)
    said = str(refused.value)
    assert "AAAA" not in said and len(said) < 400
    assert [field for field, _ in refused.value.errors] == ["number", "pull_request.title"]


def test_many_problems_are_counted_not_all_said() -> None:
    body = {"action": 1, "number": 0, "pull_request": {"head": 1, "base": 2, "title": 3,
            "merged": 4, "number": 5}, "repository": 6, "sender": 7, "label": 8}  # fmt: skip
    with pytest.raises(payloads.MalformedPayloadError) as refused:
        github_events.parse("pull_request", body)
    assert len(refused.value.errors) > 5 and "more" in str(refused.value)


@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 5000 + b"1" + b"}" * 5000],
    ids=["array", "object"],
)
def test_deep_nesting_is_refused_cleanly(body: bytes) -> None:
    with pytest.raises(payloads.MalformedPayloadError, match="nested too deeply"):
        payloads.parse_json(body)


@pytest.mark.parametrize(
    ("body", "says"),
    [(b"{not json", "not JSON"), (b"\xff\xfe", "not JSON"), (b"[1]", "not a JSON object"),
     (b'"x"', "not a JSON object"), (b"1" * 5000, "not JSON")],
)  # fmt: skip
def test_bodies_that_are_not_json_objects(body: bytes, says: str) -> None:
    with pytest.raises(payloads.MalformedPayloadError, match=says):
        payloads.parse_json(body)


def test_titles_in_any_script_pass_and_are_kept_as_sent() -> None:
    title = "\u05ea\u05d9\u05e7\u05d5\u05df \u200f(v2)\tlogin\nfix \U0001f680"
    event = github_events.parse("pull_request", with_value(opened(), "pull_request.title", title))
    assert isinstance(event, events.PullRequestChanged) and event.title == title


def test_the_fork_and_the_head_repository() -> None:
    same = payloads.PullRequestPayload.model_validate(opened())
    assert not same.from_fork and same.head_repository == ""
    fork = opened()
    fork["pull_request"]["head"]["repo"]["full_name"] = "Someone/Fork"
    typed = payloads.PullRequestPayload.model_validate(fork)
    assert typed.from_fork and typed.head_repository == "someone/fork"
    gone = with_value(opened(), "pull_request.head.repo", None)
    typed = payloads.PullRequestPayload.model_validate(gone)
    assert typed.from_fork and typed.head_repository == f"#{typed.number}"


def test_deliveries_that_start_nothing() -> None:
    assert github_events.parse("push", {"ref": "refs/tags/v1", "after": SHA}) is None
    assert github_events.parse("pull_request", with_value(opened(), "action", "edited")) is None
    assert github_events.parse("issues", {"action": "opened"}) is None
    assert github_events.parse("ping", {"zen": "Design for failure."}) is None
    with pytest.raises(payloads.MalformedPayloadError, match="zen: Input should be a valid"):
        github_events.parse("ping", {"zen": 5})
