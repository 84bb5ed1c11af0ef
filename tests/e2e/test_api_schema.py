"""Schemathesis against the OpenAPI document a real `branchline serve` publishes:
every operation, called with generated (valid and invalid) input and a write
token, never answers 5xx and every answer matches the document (status code,
content type, body schema).

The server holds real things to read and act on: a project whose pull request
has a live preview (runs with logs, deployments, DNS records, branches, a secret).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode, checks

from branchline.postgres.cluster import free_port
from tests import raw_http
from tests.codex_project import commit_on, make_project, stop_serve_and_services
from tests.conftest import eventually, new_state_dir, remove_state_dir, run_cli

pytestmark = pytest.mark.integration


class Served:
    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env = root, env
        self.port = int(env["BRANCHLINE_API_PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = ""

    def cli(self, *args: str, stdin: str | None = None) -> Any:
        done = run_cli("--json", *args, cwd=self.root, env=self.env, input=stdin)
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout) if done.stdout.strip() else None


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, cluster_root: Path) -> Iterator[Served]:
    state = new_state_dir(cluster_root)
    root = make_project(tmp_path_factory.mktemp("schema") / "codex", quick_tests=True)
    env = {
        "BRANCHLINE_STATE_DIR": str(state),
        "BRANCHLINE_API_PORT": str(free_port()),
        "BRANCHLINE_WEBHOOK_SECRET": "the schema tests' webhook secret",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    server = Served(root, env)
    try:
        server.cli("db", "init")
        server.cli("secret", "set", "AUTH_SECRET", "--env", "production", stdin="s3cret-value\n")
        commit_on(root, "feature", {"README.md": "a change\n"}, "a change")
        # Starts `serve` detached and waits for testing and the preview.
        server.cli("pr", "open", "feature", "--title", "A change")
        server.token = server.cli("token", "create", "--name", "schema", "--scope", "write")[
            "token"
        ]
        eventually(lambda: _answers(f"{server.url}/healthz"), timeout=20)
        yield server
    finally:
        stop_serve_and_services(root, env)
        remove_state_dir(state)


def _answers(url: str) -> bool | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return True if answer.status == 200 else None
    except OSError:
        return None


def test_environments_carry_working_urls(served: Served) -> None:
    answer = httpx.get(f"{served.url}/api/environments", timeout=30,
                       headers={"Authorization": f"Bearer {served.token}"})  # fmt: skip
    environments = {e["name"]: e for e in answer.json()}
    preview = environments["preview-1"]
    assert preview["branch"] == "pr-1" and preview["status"] == "live"
    assert {s["service"] for s in preview["services"]} == {"api", "auth", "web"}
    for service in preview["services"]:
        # Browsers send *.localhost to 127.0.0.1 themselves; this resolver may not.
        url = httpx.URL(service["url"])
        health = httpx.get(f"http://127.0.0.1:{url.port or 80}/health", timeout=10,
                           headers={"Host": url.netloc.decode()}, trust_env=False)  # fmt: skip
        assert health.status_code == 200, service
        assert health.json()["commit"] == service["commit"]


def test_branch_actions_on_a_real_serve(served: Served) -> None:
    """Create, reset and delete a database branch through the API; production's
    branch and a live preview's are refused with a way forward."""
    read = served.cli("token", "create", "--name", "reader", "--scope", "read")["token"]

    def call(method: str, path: str, token: str, body: Any = None) -> httpx.Response:
        return httpx.request(method, f"{served.url}{path}", json=body, timeout=60,
                             headers={"Authorization": f"Bearer {token}"})  # fmt: skip

    assert call("POST", "/api/branches", read, {"name": "dev-api"}).status_code == 403
    made = call("POST", "/api/branches", served.token, {"name": "dev-api", "expires": "2h"})
    assert made.status_code == 200, made.text
    assert made.json()["message"] == "branch dev-api is ready (copied from production)"
    listed = {b["name"]: b for b in call("GET", "/api/branches", read).json()}
    assert listed["dev-api"]["parent"] == "production" and listed["dev-api"]["expires_at"]
    other = call("POST", "/api/branches", served.token, {"name": "dev-api", "parent": "pr-1"})
    assert other.status_code == 400, other.text
    assert "'dev-api' already exists with parent 'production', not 'pr-1'" in other.text
    same = call("POST", "/api/branches", served.token, {"name": "dev-api"})
    assert same.json()["message"] == "branch dev-api exists already (parent production)"
    assert "dev-api" in {b["name"] for b in served.cli("db", "branches", "list")}

    reset = call("POST", "/api/branches/dev-api/reset", served.token)
    assert reset.status_code == 200 and "production's current data" in reset.json()["message"]

    refused = call("DELETE", "/api/branches/production", served.token)
    assert refused.status_code == 400 and "production's services use it" in refused.text
    refused = call("POST", "/api/branches/production/reset", served.token)
    assert refused.status_code == 400
    refused = call("DELETE", "/api/branches/pr-1", served.token)
    assert refused.status_code == 400 and "/api/previews/1/close" in refused.text
    bad = call("POST", "/api/branches", served.token, {"name": "Not A Name"})
    assert bad.status_code == 400 and "not a database branch name" in bad.text
    bad = call("POST", "/api/branches", served.token, {"name": "dev-x", "parent": "nope"})
    assert bad.status_code == 400 and "does not exist" in bad.text

    gone = call("DELETE", "/api/branches/dev-api", served.token)
    assert gone.status_code == 200 and gone.json()["message"] == "deleted dev-api"
    again = call("DELETE", "/api/branches/dev-api", served.token)
    assert again.json()["message"] == "dev-api was already gone"
    assert "dev-api" not in {b["name"] for b in served.cli("db", "branches", "list")}


# Each operation gets this many generated requests of each kind (valid, invalid).
EXAMPLES = 20
# What the issue asks: no 5xx, and every answer as documented. (Not asked, and left
# out: that unknown query parameters be refused, or that valid-looking input to an
# action succeed: a rollback of a service with no earlier release rightly says 409.)
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]


def _checker(operation: Any, mode: GenerationMode, headers: dict[str, str]) -> Any:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def check(case: Any) -> None:
        case.call_and_validate(headers=headers, timeout=60, checks=CHECKS)

    return check


def test_every_operation_answers_as_documented(served: Served) -> None:
    # Driven by hand rather than through schemathesis' pytest plugin, whose lazy
    # fixtures do not work with this pytest.
    schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json")
    auth = {"Authorization": f"Bearer {served.token}"}
    failures: list[str] = []
    tried: list[str] = []
    unparameterised: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        # The webhook gets no token: unsigned deliveries must be refused as documented.
        headers = {} if operation.path == "/webhooks/github" else auth
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            check = _checker(operation, mode, headers)
            try:
                check()
                tried.append(f"{operation.label} {mode.value}")
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE, operation.label
                unparameterised.append(operation.label)  # nothing it takes can be invalid
            except Exception as exc:  # every operation is tried; all failures reported
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    # Every documented operation was exercised, with invalid input where it takes any.
    assert sorted(unparameterised) == ["GET /healthz", "GET /metrics", "POST /webhooks/github"]
    operations = {label.rsplit(" ", 1)[0] for label in tried}
    assert len(operations) == 22, sorted(operations)
    assert not failures, "\n\n".join(failures)


def test_every_operation_that_takes_a_body_caps_it_as_documented(served: Served) -> None:
    """Every POST and DELETE of the document, sent more than its cap (announced, and
    chunked): 413 with a write token (the webhook: a signature, wrong, of the right
    form); without a token (or signature), a body is refused before a byte of it is
    read; every such answer is one the operation documents."""
    document = httpx.get(f"{served.url}/openapi.json", timeout=30).json()
    auth = {"Authorization": f"Bearer {served.token}"}
    tried = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if method not in ("post", "delete"):
                continue
            target = path.replace("{run_id}", "1").replace("{pr}", "1").replace(
                "{service}", "api").replace("{name}", "dev-x")  # fmt: skip
            documented = set(operation["responses"])
            webhook = path == "/webhooks/github"
            headers = {"X-Hub-Signature-256": "sha256=" + "0" * 64} if webhook else auth
            big = (26 if webhook else 2) * raw_http.MB
            status, _h, _b = raw_http.head_only(
                served.port, target, headers, big, method=method.upper()
            )
            assert status == 413 and "413" in documented, (method, path, status)
            status, said, _sent = raw_http.stream(
                served.port, target, headers, big, chunked=True, method=method.upper()
            )
            assert status == 413, (method, path, status, said)
            for length in (1000, None):  # within the cap, and of no announced size
                status, _h, _b = raw_http.head_only(
                    served.port, target, {}, length, method=method.upper()
                )
                assert status == 401 and "401" in documented, (method, path, status)
            tried.append(f"{method} {path}")
    assert len(tried) == 10, tried
