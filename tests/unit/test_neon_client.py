"""The Neon client: Neon's recorded answers read through its parsers, and Neon's
documented behaviour (operations, 423, 429 with Retry-After, refused keys, the
branch limit) handled as documented. In-memory transports only: the fast lane."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from branchline.errors import UsageError
from branchline.providers.database import neon_api
from branchline.providers.database.neon_api import (
    NeonClient,
    NeonError,
    NeonLimitError,
    NeonOperation,
)

RECORDED = Path(__file__).resolve().parents[1] / "fixtures" / "neon" / "recorded-responses"
KEY = "neon-key-that-must-not-leak"


def recorded(name: str) -> list[dict[str, Any]]:
    return list(yaml.safe_load((RECORDED / name).read_text())["interactions"])


def replaying(*cassettes: str) -> httpx.MockTransport:
    """Answers each request with the recorded answer to the same method and path."""
    answers: dict[tuple[str, str], tuple[int, str]] = {}
    for cassette in cassettes:
        for exchange in recorded(cassette):
            uri = urlsplit(exchange["request"]["uri"])
            key = (exchange["request"]["method"], uri.path.removeprefix("/api/v2"))
            response = exchange["response"]
            answers[key] = (response["status"]["code"], response["body"]["string"])

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == f"Bearer {KEY}"
        path = request.url.path.removeprefix("/api/v2")
        status, body = answers[(request.method, path)]
        return httpx.Response(status, text=body, headers={"content-type": "application/json"})

    return httpx.MockTransport(answer)


def client(transport: httpx.AsyncBaseTransport, project: str, **kw: Any) -> NeonClient:
    neon = NeonClient(
        base_url="https://console.neon.tech/api/v2", api_key=KEY, project_id=project,
        transport=transport, **kw,
    )  # fmt: skip

    async def no_wait(seconds: float) -> None:
        neon.count.waited += seconds  # counted, not slept: the fast lane stays fast

    neon._sleep = no_wait  # type: ignore[method-assign]
    return neon


def run(work: Any) -> Any:
    return asyncio.run(work)


def test_the_fixtures_are_neons_own_recordings() -> None:
    shared = Path(__file__).resolve().parents[3] / "shared/realworld/neon/recorded-responses"
    if shared.is_dir():  # beside a checkout of the project's shared documents
        for path in RECORDED.glob("*.yaml"):
            assert path.read_bytes() == (shared / path.name).read_bytes(), path.name
    assert len(list(RECORDED.glob("*.yaml"))) == 5


def test_recorded_project_branches_operation_and_uri_are_read() -> None:
    neon = client(replaying("test_project.yaml"), "long-forest-06846227")
    project = run(neon.project())
    assert project["id"] == "long-forest-06846227"
    uri = run(neon.connection_uri("br-x", database="neondb", role="neondb_owner", pooled=True))
    assert uri.startswith("postgresql://neondb_owner:") and "-pooler." in uri

    neon = client(replaying("test_branches.yaml"), "old-violet-32930710")
    (main,) = run(neon.list_branches())
    assert (main.name, main.current_state, main.pending_state, main.default) == (
        "main", "init", "ready", True,
    )  # fmt: skip
    assert main.parent_id is None and main.annotation == {}

    neon = client(replaying("test_operations.yaml"), "solitary-cell-58208823")
    op = run(neon.operation("d6ad21e4-725d-493f-a495-43867ad88d09"))
    assert (op.action, op.status, op.branch_id) == (
        "start_compute", "scheduling", "br-yellow-dawn-a5qftt8g",
    )  # fmt: skip


def test_recorded_refusal_becomes_a_clear_error_without_the_key() -> None:
    answers = recorded("test_project_delete.yaml")
    refusal = next(a for a in answers if a["response"]["status"]["code"] == 400)
    transport = httpx.MockTransport(
        lambda _r: httpx.Response(400, text=refusal["response"]["body"]["string"])
    )
    neon = client(transport, "p")
    with pytest.raises(NeonError) as caught:
        run(neon.restore_branch("br-a", "br-b"))
    assert caught.value.status == 400
    assert "field required" in caught.value.message
    assert KEY not in str(caught.value) + (caught.value.hint or "")


def test_the_recordings_predate_two_fields_the_document_now_requires() -> None:
    """The drift the recordings carry, said once here: the list of projects lacks
    `applications` and `integrations` in some of them. The client never reads either,
    so its parsers take both shapes."""
    bodies = [json.loads(a["response"]["body"]["string"]) for a in recorded("test_project.yaml")
              if a["request"]["uri"].endswith("/projects")]  # fmt: skip
    assert any("applications" not in body for body in bodies)


Script = list[tuple[int, dict[str, Any], dict[str, str]]]


def scripted(answers: Script, seen: list[httpx.Request]) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        status, body, headers = answers.pop(0)
        return httpx.Response(status, json=body, headers=headers)

    return httpx.MockTransport(answer)


BRANCH = {"id": "br-a-b-123456", "name": "pr-1", "parent_id": "br-root", "current_state": "init",
          "pending_state": "ready", "created_at": "2026-12-03T10:00:00Z"}  # fmt: skip
RUNNING = {"id": "op-1", "action": "create_branch", "status": "running"}
LOCKED = (423, {"code": "", "message": "project already has running conflicting operations"}, {})


def test_locked_and_rate_limited_calls_are_retried_honouring_retry_after() -> None:
    seen: list[httpx.Request] = []
    answers: Script = [
        LOCKED, LOCKED,
        (429, {"code": "", "message": "rate limit"}, {"Retry-After": "3"}),
        (201, {"branch": BRANCH, "operations": [RUNNING]}, {}),
    ]  # fmt: skip
    neon = client(scripted(answers, seen), "p")
    branch, operations = run(neon.create_branch("pr-1", "br-root", annotation={"k": "v"}))
    assert branch.id == "br-a-b-123456" and operations[0].status == "running"
    assert neon.count.retries == 3 and neon.count.calls == 4
    assert neon.count.waited >= 3.0, "Retry-After was not honoured"
    sent = json.loads(seen[-1].content)
    assert sent == {
        "branch": {"name": "pr-1", "parent_id": "br-root"},
        "endpoints": [{"type": "read_write"}],
        "annotation_value": {"k": "v"},
    }


def test_retries_stop_at_the_deadline() -> None:
    neon = client(scripted([LOCKED] * 200, []), "p", deadline=0.0)
    with pytest.raises(NeonError) as caught:
        run(neon.delete_branch("br-a"))
    assert caught.value.status == 423


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_names_the_variable(status: int) -> None:
    neon = client(scripted([(status, {"code": "", "message": "no"}, {})], []), "p")
    with pytest.raises(NeonError) as caught:
        run(neon.project())
    assert "NEON_API_KEY" in (caught.value.hint or "")


def test_a_missing_key_is_said_before_any_call() -> None:
    seen: list[httpx.Request] = []
    neon = NeonClient(base_url="http://x", api_key=None, project_id="p",
                      transport=scripted([], seen))  # fmt: skip
    with pytest.raises(UsageError, match="NEON_API_KEY"):
        run(neon.project())
    assert seen == []


def test_an_unknown_project_is_named() -> None:
    neon = client(scripted([(404, {"code": "", "message": "not found"}, {})], []), "nope-1")
    with pytest.raises(NeonError, match="no project 'nope-1'"):
        run(neon.project())


def test_the_branch_limit_is_its_own_error() -> None:
    limit = (422, {"code": "BRANCHES_LIMIT_EXCEEDED", "message": "branches limit exceeded"}, {})
    neon = client(scripted([limit], []), "p")
    with pytest.raises(NeonLimitError):
        run(neon.create_branch("pr-9", "br-root"))


def operations_answering(*statuses: str) -> Iterator[tuple[int, dict[str, Any], dict[str, str]]]:
    for status in statuses:
        yield 200, {"operation": {**RUNNING, "status": status}}, {}


def test_wait_polls_operations_until_finished() -> None:
    answers = list(operations_answering("running", "running", "finished"))
    neon = client(scripted(answers, []), "p")
    run(neon.wait([NeonOperation.parse(RUNNING)], deadline=60, what="branch 'pr-1'"))
    assert neon.count.by_route["GET /operations/{id}"] == 3


@pytest.mark.parametrize(
    ("statuses", "deadline", "said"),
    [(("running", "failed"), 60.0, "failed"), (("running",) * 50, 0.5, "did not finish")],
)
def test_wait_says_a_failed_or_overdue_operation(
    statuses: tuple[str, ...], deadline: float, said: str
) -> None:
    neon = client(scripted(list(operations_answering(*statuses)), []), "p")
    neon._sleep = asyncio.sleep  # type: ignore[method-assign]  # the deadline is real time
    with pytest.raises(NeonError, match=said):
        run(neon.wait([NeonOperation.parse(RUNNING)], deadline=deadline, what="x"))


def test_a_finished_operation_costs_no_call() -> None:
    neon = client(scripted([], []), "p")
    run(neon.wait([NeonOperation.parse({**RUNNING, "status": "finished"})], deadline=1, what="x"))
    assert neon.count.calls == 0


def test_list_follows_the_cursor_and_reads_annotations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(neon_api, "PAGE", 1)
    first = {"branches": [BRANCH], "annotations": {BRANCH["id"]: {
        "object": {"type": "console/branch", "id": BRANCH["id"]},
        "value": {"branchline-project": "codex"}}}, "pagination": {"next": "c2"}}  # fmt: skip
    second = {"branches": [{**BRANCH, "id": "br-2", "name": "pr-2"}], "annotations": {}}
    seen: list[httpx.Request] = []
    neon = client(scripted([(200, first, {}), (200, second, {})], seen), "p")
    branches = run(neon.list_branches())
    assert [b.name for b in branches] == ["pr-1", "pr-2"]
    assert branches[0].annotation == {"branchline-project": "codex"}
    assert seen[1].url.params["cursor"] == "c2"
