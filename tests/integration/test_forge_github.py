"""The GitHub code host against a fake GitHub that checks every exchange against
GitHub's OpenAPI description: the sticky comment survives a lost record and heals a
duplicate, deployments and their statuses, changed files, who may approve, a GitHub
App's installation tokens (renewed when they expire), and rate limits waited out."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from branchline.fakes.github import FakeGitHub
from branchline.providers.forge.github import GitHubForge, marker
from branchline.providers.forge.github_api import Credentials, GitHubClient, GitHubError

pytestmark = pytest.mark.integration
TOKEN = "ghp_forge-test-token-0123456789abcdef"
APP_ID = 424242


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeGitHub]:
    started = FakeGitHub.start(tmp_path / "fake-github", repository="acme/codex", token=TOKEN)
    try:
        yield started
    finally:
        started.stop()


def forge_of(fake: FakeGitHub, **options: float) -> GitHubForge:
    client = GitHubClient(
        repository=fake.repository, credentials=Credentials(token=TOKEN), api_url=fake.url,
        **{"write_interval": 0.0, **options},  # type: ignore[arg-type]
    )  # fmt: skip
    return GitHubForge(client)


def bodies(fake: FakeGitHub, number: int) -> list[str]:
    return [c["body"] for c in fake.state()["comments"] if c["issue"] == number]


def test_the_sticky_comment_is_found_again_by_its_marker(fake: FakeGitHub) -> None:
    number = fake.add_pull(head="feature", sha="a" * 40)

    async def test() -> None:
        await forge_of(fake).upsert_comment(number, "preview", "building")
        # A new process (a restart after a crash) remembers nothing: it edits the same.
        await forge_of(fake).upsert_comment(number, "preview", "live")
        assert bodies(fake, number) == [f"{marker('preview')}\nlive"]
        # Two at once made two (another machine): the older is kept, the other deleted.
        other = forge_of(fake)
        await other.client.write(
            "POST /repos/{owner}/{repo}/issues/{issue_number}/comments",
            lambda gh: gh.rest.issues.async_create_comment(
                "acme", "codex", number, body=f"{marker('preview')}\nraced"
            ),
        )
        await forge_of(fake).upsert_comment(number, "preview", "healed")
        assert bodies(fake, number) == [f"{marker('preview')}\nhealed"]
        # Someone's own comment, and another key, are left alone.
        await other.client.write(
            "POST /repos/{owner}/{repo}/issues/{issue_number}/comments",
            lambda gh: gh.rest.issues.async_create_comment(
                "acme", "codex", number, body="looks good to me"
            ),
        )
        await forge_of(fake).upsert_comment(number, "tests", "passed")
        assert len(bodies(fake, number)) == 3
        # A stranger's copy of the marker (a fork's author, older than ours or not)
        # is neither edited nor deleted, and does not stop ours being kept.
        fake.add_comment(number, f"{marker('tests')}\nspoofed", author="a-stranger")
        await forge_of(fake).upsert_comment(number, "tests", "passed")
        assert f"{marker('tests')}\nspoofed" in bodies(fake, number)
        assert f"{marker('tests')}\npassed" in bodies(fake, number)
        assert len(bodies(fake, number)) == 4
        first = fake.add_pull(head="spoofed-first", sha="9" * 40)
        fake.add_comment(first, f"{marker('preview')}\nspoofed", author="a-stranger")
        await forge_of(fake).upsert_comment(first, "preview", "ours")
        assert bodies(fake, first) == [f"{marker('preview')}\nspoofed",
                                       f"{marker('preview')}\nours"]  # fmt: skip
        # Unchanged text is not written again.
        before = fake.calls()["by_route"].get(
            "PATCH /repos/{owner}/{repo}/issues/comments/{comment_id}", 0
        )
        await forge_of(fake).upsert_comment(number, "tests", "passed")
        after = fake.calls()["by_route"].get(
            "PATCH /repos/{owner}/{repo}/issues/comments/{comment_id}", 0
        )
        assert after == before

    asyncio.run(test())
    assert fake.calls()["invalid"] == []


def test_comments_beyond_the_first_page_are_found(fake: FakeGitHub) -> None:
    number = fake.add_pull(head="busy", sha="b" * 40)
    forge = forge_of(fake)

    async def test() -> None:
        for n in range(105):  # a long discussion: the marker's comment is on page 2
            await forge.client.write(
                "POST /repos/{owner}/{repo}/issues/{issue_number}/comments",
                lambda gh, at=n: gh.rest.issues.async_create_comment(  # type: ignore[misc]
                    "acme", "codex", number, body=f"comment {at}"
                ),
            )
        await forge.upsert_comment(number, "preview", "first")
        await forge_of(fake).upsert_comment(number, "preview", "second")
        marked = [b for b in bodies(fake, number) if b.startswith(marker("preview"))]
        assert marked == [f"{marker('preview')}\nsecond"]

    asyncio.run(test())


def test_deployments_per_environment_and_inactive_when_gone(fake: FakeGitHub) -> None:
    forge = forge_of(fake)
    sha, newer = "c" * 40, "d" * 40

    async def test() -> None:
        await forge.deployment_status("preview-8", sha=sha, ref="feature", state="in_progress")
        await forge.deployment_status(
            "preview-8", sha=sha, ref="feature", state="success", url="http://web-preview-8/"
        )
        # A restart finds the deployment it made instead of making another.
        await forge_of(fake).deployment_status(
            "preview-8", sha=sha, ref="feature", state="success", url="http://web-preview-8/"
        )
        await forge.deployment_status(
            "preview-8", sha=newer, ref="feature", state="success", url="http://web-preview-8/"
        )
        await forge.deployment_status("production", sha=sha, ref="main", state="success",
                                      url="http://web/")  # fmt: skip
        made = {(d["environment"], d["sha"]): d for d in fake.state()["deployments"]}
        assert sorted(made) == [("preview-8", sha), ("preview-8", newer), ("production", sha)]
        first = made[("preview-8", sha)]
        assert [s["state"] for s in first["statuses"]][:3] == ["in_progress", "success", "success"]
        assert first["statuses"][1]["environment_url"] == "http://web-preview-8/"
        assert made[("production", sha)]["production"] is True
        assert made[("preview-8", sha)]["transient"] is True

        await forge.deployment_status("preview-8", sha="", ref="", state="inactive")
        after = {(d["environment"], d["sha"]): d for d in fake.state()["deployments"]}
        for key in (("preview-8", sha), ("preview-8", newer)):
            assert after[key]["statuses"][-1]["state"] == "inactive"
        assert after[("production", sha)]["statuses"][-1]["state"] == "success"

    asyncio.run(test())
    assert fake.calls()["invalid"] == []


def test_issues_pull_requests_changed_files_and_who_may_approve(fake: FakeGitHub) -> None:
    forge = forge_of(fake)
    ours = fake.add_pull(head="ours", sha="e" * 40, files=["services/web/app.py", "README"])
    theirs = fake.add_pull(head="theirs", sha="f" * 40, fork=True)
    for login, permission in (("ada", "admin"), ("max", "maintain"), ("wes", "write"),
                              ("tia", "triage"), ("rae", "read")):  # fmt: skip
        fake.set_permission(login, permission)

    async def test() -> None:
        issue = await forge.create_issue("Rollout failed", "details", ["incident"])
        assert issue > theirs  # issues and pull requests share one sequence
        await forge.close_issue(issue, "healthy again")
        await forge.close_issue(issue, "twice")
        closed = fake.state()["issues"][str(issue)]
        assert closed["state"] == "closed"
        assert bodies(fake, issue) == ["healthy again"]

        pull = await forge.pull_request(ours)
        assert pull is not None and pull.is_open and not pull.fork
        fork = await forge.pull_request(theirs)
        assert fork is not None and fork.fork
        assert await forge.pull_request(issue) is None  # an issue is not a pull request
        assert {p.number for p in await forge.pull_requests()} == {ours, theirs}
        fake.update_pull(ours, state="closed", merged=True)
        merged = await forge.pull_request(ours)
        assert merged is not None and merged.state == "merged"
        assert {p.number for p in await forge.pull_requests()} == {theirs}

        changed = await forge.changed_files("0" * 39 + "1", "e" * 40)
        assert changed is None or isinstance(changed, list)

        allowed = {who: await forge.may_approve(who) for who in ("ada", "max", "wes", "tia",
                                                                  "rae", "nobody")}  # fmt: skip
        assert allowed == {"ada": True, "max": True, "wes": True, "tia": False, "rae": False,
                           "nobody": False}  # fmt: skip
        fake.add_label(theirs, "safe-to-preview")
        await forge.withdraw_approval(theirs)
        await forge.withdraw_approval(theirs)  # not labelled any more: nothing to do
        assert "safe-to-preview" not in fake.state()["labels"].get(str(theirs), [])

    asyncio.run(test())
    assert fake.calls()["invalid"] == []


def test_rate_limits_are_waited_out_and_said_when_too_long(fake: FakeGitHub) -> None:
    number = fake.add_pull(head="limits", sha="1" * 40)

    async def test() -> None:
        forge = forge_of(fake)
        fake.inject("secondary-rate-limit", retry_after=1, method="POST")
        await forge.upsert_comment(number, "preview", "after a secondary limit")
        fake.inject("rate-limit", retry_after=1, method="GET")
        assert await forge.pull_request(number) is not None
        assert forge.client.count.retries == 2 and forge.client.count.waited >= 2.0
        assert len(bodies(fake, number)) == 1

        impatient = forge_of(fake, rate_limit_wait=2.0)
        fake.inject("rate-limit", retry_after=600, method="GET")
        with pytest.raises(GitHubError) as caught:
            await impatient.pull_request(number)
        assert "rate limit" in caught.value.message

    asyncio.run(test())


def test_a_github_app_signs_in_and_renews_its_installation_token(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()  # fmt: skip
    fake = FakeGitHub.start(
        tmp_path / "fake-github", repository="acme/codex", token=TOKEN, app_id=APP_ID,
        app_private_key_pem=pem, installation_id=77, token_lifetime=2.0,
    )  # fmt: skip
    try:
        number = fake.add_pull(head="app", sha="2" * 40)
        client = GitHubClient(
            repository="acme/codex", api_url=fake.url, write_interval=0.0,
            credentials=Credentials(app_id=APP_ID, private_key=pem),  # installation looked up
        )  # fmt: skip
        forge = GitHubForge(client)

        async def test() -> None:
            await forge.upsert_comment(number, "preview", "as an App")
            await asyncio.sleep(2.5)  # the installation token has expired
            await forge.upsert_comment(number, "preview", "with a new token")

        asyncio.run(test())
        assert bodies(fake, number) == [f"{marker('preview')}\nwith a new token"]
        routes = fake.calls()["by_route"]
        assert routes["GET /repos/{owner}/{repo}/installation"] == 1
        assert routes["POST /app/installations/{installation_id}/access_tokens"] >= 2
        assert fake.calls()["invalid"] == []

        # A key the App does not have is refused, and the error says what to check.
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        wrong = other.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()  # fmt: skip
        refused = GitHubForge(GitHubClient(
            repository="acme/codex", api_url=fake.url,
            credentials=Credentials(app_id=APP_ID, private_key=wrong, installation_id=77),
        ))  # fmt: skip
        with pytest.raises(GitHubError) as caught:
            asyncio.run(refused.pull_request(number))
        assert caught.value.status == 401 and caught.value.hint
    finally:
        fake.stop()
