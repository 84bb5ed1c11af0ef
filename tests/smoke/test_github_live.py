"""Opt-in: the GitHub code host against a real repository. Needs GITHUB_TOKEN (write
access to the repository: issues, pull requests, commit statuses, deployments) and
BRANCHLINE_GITHUB_TEST_REPO ("owner/name" of a throw-away repository). It opens an
issue, keeps one sticky comment on it across edits, posts a status and a deployment
on the default branch's head, and closes the issue."""

from __future__ import annotations

import asyncio
import os

import pytest

from branchline.providers.forge.github import GitHubForge, marker
from branchline.providers.forge.github_api import Credentials, GitHubClient

pytestmark = pytest.mark.integration
NEEDED = ("GITHUB_TOKEN", "BRANCHLINE_GITHUB_TEST_REPO")


@pytest.mark.skipif(
    not all(os.environ.get(v) for v in NEEDED),
    reason="needs a real GitHub repository: set GITHUB_TOKEN and BRANCHLINE_GITHUB_TEST_REPO",
)
def test_the_github_code_host_on_a_real_repository() -> None:
    repository = os.environ["BRANCHLINE_GITHUB_TEST_REPO"]
    client = GitHubClient(
        repository=repository, credentials=Credentials(token=os.environ["GITHUB_TOKEN"]),
        api_url=os.environ.get("GITHUB_API_URL", "https://api.github.com"),
    )  # fmt: skip
    forge = GitHubForge(client)

    async def scenario() -> None:
        assert repository in await forge.verify()
        number = await forge.create_issue("branchline smoke test", "opened by a test", [])
        try:
            await forge.upsert_comment(number, "smoke", "first")
            await forge.upsert_comment(number, "smoke", "second")
            comments = await forge._marked_comments(number, "smoke")
            assert [c["body"] for c in comments] == [f"{marker('smoke')}\nsecond"]
            repo = await client.read(
                "GET /repos/{owner}/{repo}",
                lambda gh: gh.rest.repos.async_get(client.owner, client.name),
            )
            branch = await client.read(
                "GET /repos/{owner}/{repo}/branches/{branch}",
                lambda gh: gh.rest.repos.async_get_branch(
                    client.owner, client.name, repo["default_branch"]
                ),
            )
            sha = branch["commit"]["sha"]
            await forge.set_status(sha, "branchline/smoke", "success", None, "smoke test")
            await forge.deployment_status(
                "branchline-smoke", sha=sha, ref=repo["default_branch"], state="success",
                url="https://example.com/",
            )  # fmt: skip
            await forge.deployment_status("branchline-smoke", sha=sha, ref="", state="inactive")
        finally:
            await forge.close_issue(number, "closed by the smoke test")

    asyncio.run(scenario())
