"""The whole flow on the GitHub code host, against a fake GitHub that checks every
request and answer against GitHub's OpenAPI description: GitHub's own webhook
deliveries (captured ones, re-signed for the fake's repository) come in through the
webhook endpoint, the pipelines run, and what they post is read back from the fake:
one sticky comment, commit statuses linked to their run, a Deployment per
environment with its URL, made inactive when the preview goes. A fork's pull
request waits for a writer's label; a reader's label is taken off again."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from branchline.fakes.github import FakeGitHub
from branchline.kit import Kit
from branchline.server.app import create_app
from branchline.server.webhooks import signature_of
from tests.codex_project import commit_on, git
from tests.conftest import REPO
from tests.integration.test_pipelines import BROKEN_WEB, pipelines, project, runs_of, story

pytestmark = pytest.mark.integration
__all__ = ["project"]  # the fixture, shared with the local pipelines' tests
WEBHOOKS = REPO / "tests" / "fixtures" / "github-webhooks"
CAPTURED = WEBHOOKS / "captured-deliveries"
REPOSITORY = "acme/codex"
TOKEN = "ghp_flow-test-token-0123456789abcdef"
SECRET = "a webhook secret for the flow test"
MARKER = "<!-- branchline:preview -->"


@pytest.fixture
def github(tmp_path: Path, project: Path) -> Iterator[FakeGitHub]:
    fake = FakeGitHub.start(tmp_path / "fake-github", repository=REPOSITORY, token=TOKEN)
    try:
        config = project / "branchline.toml"
        text = config.read_text()
        local = '[forge]\nprovider = "local"'
        assert local in text
        config.write_text(
            text.replace(local, '[forge]\nprovider = "github"')
            + f'\n[forge.github]\nrepository = "{REPOSITORY}"\napi_url = "{fake.url}"\n'
            f'token = "{TOKEN}"\nwebhook_secret = "{SECRET}"\nwrite_interval = "0s"\n'
        )
        git(project, "commit", "-qam", "on GitHub")
        yield fake
    finally:
        fake.stop()


def delivery(
    action: str, *, number: int, head: str, sha: str, base_sha: str, fork: bool = False,
    merged: bool = False, label: str | None = None, sender: str = "octocat",
) -> tuple[dict[str, str], bytes]:  # fmt: skip
    """GitHub's captured `pull_request` delivery, made about this pull request of the
    fake's repository and signed with the test's secret."""
    captured = json.loads((CAPTURED / "pull_request.opened.delivery.json").read_text())
    payload: dict[str, Any] = json.loads(base64.b64decode(captured["body_raw_base64"]))
    payload = copy.deepcopy(payload)
    payload["action"], payload["number"] = action, number
    payload["repository"]["full_name"] = REPOSITORY
    payload["sender"]["login"] = sender
    pull = payload["pull_request"]
    pull["number"], pull["merged"] = number, merged
    pull["state"] = "closed" if action == "closed" else "open"
    pull["head"]["ref"], pull["head"]["sha"] = head, sha
    pull["head"]["repo"]["full_name"] = "stranger/codex" if fork else REPOSITORY
    pull["head"]["repo"]["fork"] = fork
    pull["base"]["ref"], pull["base"]["sha"] = "main", base_sha
    pull["base"]["repo"]["full_name"] = REPOSITORY
    if label is not None:
        payload["label"] = {"id": 1, "node_id": "L_1", "url": "", "name": label,
                            "color": "0e8a16", "default": False, "description": None}  # fmt: skip
    return signed("pull_request", payload)


def signed(kind: str, payload: dict[str, Any]) -> tuple[dict[str, str], bytes]:
    """A delivery of `kind` as GitHub sends it: headers and the body, signed."""
    body = json.dumps(payload).encode()
    headers = {
        "content-type": "application/json", "x-github-event": kind,
        "x-github-delivery": str(uuid.uuid4()),
        "x-hub-signature-256": signature_of(SECRET.encode(), body),
    }  # fmt: skip
    return headers, body


def push_delivery(before: str, after: str) -> tuple[dict[str, str], bytes]:
    """GitHub's example `push` delivery, made a push to this repository's main."""
    payload = json.loads((WEBHOOKS / "octokit-examples" / "push.new-branch-master.payload.json")
                         .read_text())  # fmt: skip
    payload.update(ref="refs/heads/main", before=before, after=after, created=False)
    payload["repository"]["full_name"] = REPOSITORY
    return signed("push", payload)


async def deliver(kit: Kit, sent: tuple[dict[str, str], bytes]) -> None:
    app = create_app(kit.config, kit.store, kit=kit)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://github.test") as client:
        answer = await client.post("/webhooks/github", content=sent[1], headers=sent[0])
    assert answer.status_code == 202, answer.text


def comments(fake: FakeGitHub, number: int) -> list[str]:
    state = fake.state()
    return [c["body"] for c in state["comments"] if c["issue"] == number]


def statuses(fake: FakeGitHub, sha: str) -> dict[str, dict[str, Any]]:
    """The latest status per context of commit `sha`."""
    latest: dict[str, dict[str, Any]] = {}
    for status in fake.state()["statuses"]:
        if status["sha"] == sha:
            latest[status["context"]] = status
    return latest


def deployments(fake: FakeGitHub, environment: str) -> list[dict[str, Any]]:
    return [d for d in fake.state()["deployments"] if d["environment"] == environment]


def test_a_pull_request_on_github_from_opened_to_merged(project: Path, github: FakeGitHub) -> None:
    main = git(project, "rev-parse", "main")
    sha = git(project, "rev-parse", "feature")
    number = github.add_pull(head="feature", sha=sha, base_sha=main, title="Feature",
                             files=["services/web/VERSION"])  # fmt: skip

    async def test() -> None:
        async with pipelines(project) as p:
            kit = p.kit
            await deliver(kit, delivery("opened", number=number, head="feature", sha=sha,
                                        base_sha=main))  # fmt: skip
            await p.run_until_settled()
            done = [(r.workflow, r.status) for rs in (await runs_of(kit)).values() for r in rs]
            assert sorted(done) == [("preview", "success"), ("testing", "success")], await story(
                kit
            )
            (comment,) = comments(github, number)
            web = kit.url(f"web-preview-{number}.codex.localhost")
            assert comment.startswith(MARKER) and web in comment
            testing = statuses(github, sha)["branchline/testing"]
            run = (await runs_of(kit))["testing"][-1]
            assert testing["state"] == "success"
            assert testing["target_url"].endswith(f"/runs/{run.id}")
            (deployment,) = deployments(github, f"preview-{number}")
            assert deployment["sha"] == sha
            assert [s["state"] for s in deployment["statuses"]] == ["in_progress", "success"]
            assert deployment["statuses"][-1]["environment_url"] == web

            # A new commit: tested and previewed again, the same comment edited.
            newer = commit_on(project, "feature", {"services/web/VERSION": "2\n"}, "again")
            github.update_pull(number, sha=newer)
            await deliver(kit, delivery("synchronize", number=number, head="feature",
                                        sha=newer, base_sha=main))  # fmt: skip
            await p.run_until_settled()
            (comment,) = comments(github, number)
            assert newer[:8] in comment
            assert statuses(github, newer)["branchline/testing"]["state"] == "success"

            # Merged: the preview goes, and GitHub shows its deployments inactive.
            github.update_pull(number, state="closed", merged=True)
            await deliver(kit, delivery("closed", number=number, head="feature", sha=newer,
                                        base_sha=main, merged=True))  # fmt: skip
            await p.run_until_settled()
            (comment,) = comments(github, number)
            assert "Preview removed" in comment
            for made in deployments(github, f"preview-{number}"):
                assert made["statuses"][-1]["state"] == "inactive"
        assert github.calls()["invalid"] == []

    asyncio.run(test())


def test_a_forks_preview_waits_for_a_writers_label(project: Path, github: FakeGitHub) -> None:
    main = git(project, "rev-parse", "main")
    sha = git(project, "rev-parse", "feature")
    number = github.add_pull(head="feature", sha=sha, base_sha=main, fork=True, title="Fork")
    github.set_permission("a-reader", "read")
    github.set_permission("a-writer", "write")

    async def test() -> None:
        async with pipelines(project) as p:
            kit = p.kit
            await deliver(kit, delivery("opened", number=number, head="feature", sha=sha,
                                        base_sha=main, fork=True))  # fmt: skip
            await p.run_until_settled()
            assert [r.workflow for rs in (await runs_of(kit)).values() for r in rs] == ["testing"]
            waiting = statuses(github, sha)["branchline/fork-approval"]
            assert (waiting["state"], waiting["description"]) == (
                "pending", "waiting for approval: a writer adds the safe-to-preview label"
            )  # fmt: skip

            # A reader's label approves nothing: it is taken off, and a comment says why.
            github.add_label(number, "safe-to-preview")
            await deliver(kit, delivery("labeled", number=number, head="feature", sha=sha,
                                        base_sha=main, fork=True, label="safe-to-preview",
                                        sender="a-reader"))  # fmt: skip
            await p.run_until_settled()
            assert "preview" not in await runs_of(kit)
            assert "safe-to-preview" not in github.state()["labels"].get(str(number), [])
            assert any("taken off" in c for c in comments(github, number))

            # A writer's label starts the preview.
            github.add_label(number, "safe-to-preview")
            await deliver(kit, delivery("labeled", number=number, head="feature", sha=sha,
                                        base_sha=main, fork=True, label="safe-to-preview",
                                        sender="a-writer"))  # fmt: skip
            await p.run_until_settled()
            (preview,) = (await runs_of(kit))["preview"]
            assert preview.status == "success", await story(kit)
            approved = statuses(github, sha)["branchline/fork-approval"]
            assert approved["state"] == "success" and "a-writer" in approved["description"]

            # A new commit takes the label off: it needs an approval of its own.
            newer = commit_on(project, "feature", {"services/web/VERSION": "3\n"}, "more")
            github.update_pull(number, sha=newer)
            await deliver(kit, delivery("synchronize", number=number, head="feature",
                                        sha=newer, base_sha=main, fork=True))  # fmt: skip
            await p.run_until_settled()
            assert "safe-to-preview" not in github.state()["labels"].get(str(number), [])
            assert len((await runs_of(kit))["preview"]) == 1
            assert statuses(github, newer)["branchline/fork-approval"]["state"] == "pending"
        assert github.calls()["invalid"] == []

    asyncio.run(test())


def test_production_on_github_a_failed_rollout_opens_an_issue_the_fix_closes(
    project: Path, github: FakeGitHub
) -> None:
    async def test() -> None:
        async with pipelines(project) as p:
            kit = p.kit
            for name in ("AUTH_SECRET", "PAYMENT_WEBHOOK_SECRET"):
                await kit.secrets.set("production", name, f"production-{name}-0123456789")
            good = git(project, "rev-parse", "main")
            await deliver(kit, push_delivery(git(project, "rev-parse", "main~1"), good))
            await p.run_until_settled()
            (deployment,) = deployments(github, "production")
            assert deployment["statuses"][-1]["state"] == "success", await story(kit)
            web = kit.url("web.codex.localhost")
            assert deployment["statuses"][-1]["environment_url"] == web
            assert statuses(github, good)["branchline/production"]["state"] == "success"

            app = project / "services" / "web" / "app.py"
            text = app.read_text()
            app.write_text(text.replace("\nfrom common", BROKEN_WEB + "\nfrom common"))
            git(project, "commit", "-qam", "web needs a currency")
            bad = git(project, "rev-parse", "main")
            await deliver(kit, push_delivery(good, bad))
            await p.run_until_settled()
            assert statuses(github, bad)["branchline/production"]["state"] == "failure"
            (incident,) = github.state()["issues"].values()
            assert "web unhealthy" in incident["title"] and incident["state"] == "open"
            assert "incident" in incident["labels"]
            failed = [d for d in deployments(github, "production") if d["sha"] == bad]
            assert failed[0]["statuses"][-1]["state"] == "failure"

            app.write_text(text)
            git(project, "commit", "-qam", "web is fixed")
            fixed = git(project, "rev-parse", "main")
            await deliver(kit, push_delivery(bad, fixed))
            await p.run_until_settled()
            assert statuses(github, fixed)["branchline/production"]["state"] == "success"
            (closed,) = github.state()["issues"].values()
            assert closed["state"] == "closed"
            number = next(iter(github.state()["issues"]))
            assert any("healthy again" in c for c in comments(github, int(number)))
        assert github.calls()["invalid"] == []

    asyncio.run(test())
