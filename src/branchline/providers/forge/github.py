"""The GitHub code host: what pipelines post back goes to the repository on GitHub.

- **The sticky comment.** One comment per pull request and key, found again by a
  hidden marker (`<!-- branchline:KEY -->`) on its first line and edited in place.
  The marker, not a remembered id, is the record: a crash between creating the
  comment and anything after it finds the same comment next time, and should two
  ever exist (two machines at once) the older one is kept and the other deleted.
- **Commit statuses** (`branchline/testing`, `branchline/preview`, ...) link to the
  run's page.
- **Deployments.** Each environment (`preview-8`, `production`) gets a GitHub
  Deployment per commit and deployment statuses with the environment's URL, so
  GitHub's pull request page shows "View deployment"; a preview torn down is
  marked `inactive`.
- **Issues.** A failed rollout's incident issue, closed with a comment when a later
  rollout succeeds.
- **Asked, not assumed.** A pull request (still open? at which commit? from a
  fork?), the files two commits differ by, and whether someone who labelled a
  fork's pull request may write to the repository all come from the API.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime
from typing import Any, cast

from branchline.errors import UsageError
from branchline.providers.forge import (
    APPROVAL_LABEL,
    DeploymentState,
    PullRequest,
    PullRequestState,
    check_status,
)
from branchline.providers.forge.github_api import GitHubClient, GitHubError

WRITERS = frozenset({"admin", "maintain", "write"})
TRUSTED_AUTHORS = frozenset({"OWNER", "MEMBER", "COLLABORATOR"})
DESCRIPTION_LIMIT = 140  # GitHub refuses a longer status description
COMPARE_LIMIT = 300  # files GitHub lists in a comparison; more: unknown
PRODUCTION = "production"


def marker(key: str) -> str:
    return f"<!-- branchline:{key} -->"


class GitHubForge:
    """Construction does no I/O."""

    name = "github"

    def __init__(self, client: GitHubClient) -> None:
        self.client = client
        self.repository = client.repository
        self._comment_locks: dict[tuple[int, str], asyncio.Lock] = {}
        # (environment, sha) -> deployment id: found again by listing after a restart.
        self._deployments: dict[tuple[str, str], int] = {}

    @property
    def owner(self) -> str:
        return self.client.owner

    @property
    def repo(self) -> str:
        return self.client.name

    # -- the sticky comment -----------------------------------------------------------

    async def upsert_comment(self, pr: int, key: str, body: str) -> None:
        lock = self._comment_locks.setdefault((pr, key), asyncio.Lock())
        async with lock:
            text = f"{marker(key)}\n{body}"
            found = await self._marked_comments(pr, key)
            if not found:
                await self.client.write(
                    "POST /repos/{owner}/{repo}/issues/{issue_number}/comments",
                    lambda gh: gh.rest.issues.async_create_comment(
                        self.owner, self.repo, pr, body=text
                    ),
                )
                return
            keep, *extra = found
            if keep.get("body") != text:
                await self.client.write(
                    "PATCH /repos/{owner}/{repo}/issues/comments/{comment_id}",
                    lambda gh: gh.rest.issues.async_update_comment(
                        self.owner, self.repo, int(keep["id"]), body=text
                    ),
                )
            for duplicate in extra:
                await self._delete_comment(int(duplicate["id"]))

    async def _delete_comment(self, comment: int) -> None:
        await self.client.write(
            "DELETE /repos/{owner}/{repo}/issues/comments/{comment_id}",
            lambda gh: gh.rest.issues.async_delete_comment(self.owner, self.repo, comment),
        )

    async def _marked_comments(self, pr: int, key: str) -> list[Mapping[str, Any]]:
        """The pull request's comments carrying `key`'s marker, oldest first."""
        comments = await self.client.read_pages(
            "GET /repos/{owner}/{repo}/issues/{issue_number}/comments",
            lambda gh, page: gh.rest.issues.async_list_comments(
                self.owner, self.repo, pr, per_page=100, page=page
            ),
        )
        tag = marker(key)
        mine = [
            c for c in comments if str(c.get("body") or "").startswith(tag) and _ours(c)
        ]  # fmt: skip
        return sorted(mine, key=lambda c: int(c["id"]))

    # -- issues -----------------------------------------------------------------------

    async def create_issue(self, title: str, body: str, labels: list[str]) -> int:
        made = await self.client.write(
            "POST /repos/{owner}/{repo}/issues",
            lambda gh: gh.rest.issues.async_create(
                self.owner, self.repo, title=title, body=body, labels=list(labels)
            ),
        )
        return int(made["number"])

    async def close_issue(self, number: int, comment: str) -> None:
        issue = await self.client.read(
            "GET /repos/{owner}/{repo}/issues/{issue_number}",
            lambda gh: gh.rest.issues.async_get(self.owner, self.repo, number),
        )
        if issue.get("state") == "closed":
            return
        await self.client.write(
            "POST /repos/{owner}/{repo}/issues/{issue_number}/comments",
            lambda gh: gh.rest.issues.async_create_comment(
                self.owner, self.repo, number, body=comment
            ),
        )
        await self.client.write(
            "PATCH /repos/{owner}/{repo}/issues/{issue_number}",
            lambda gh: gh.rest.issues.async_update(
                self.owner, self.repo, number, state="closed", state_reason="completed"
            ),
        )

    # -- commit statuses --------------------------------------------------------------

    async def set_status(
        self, sha: str, context: str, state: str, url: str | None = None,
        description: str | None = None,
    ) -> None:  # fmt: skip
        check_status(state)
        body: dict[str, Any] = {"state": state, "context": context}
        if url:
            body["target_url"] = url
        if description:
            body["description"] = _shorten(description, DESCRIPTION_LIMIT)
        await self.client.write(
            "POST /repos/{owner}/{repo}/statuses/{sha}",
            lambda gh: gh.rest.repos.async_create_commit_status(
                self.owner, self.repo, sha, data=cast(Any, body)
            ),
        )

    # -- deployments ------------------------------------------------------------------

    async def deployment_status(
        self, environment: str, *, sha: str, ref: str, state: DeploymentState,
        url: str | None = None, log_url: str | None = None, description: str | None = None,
    ) -> None:  # fmt: skip
        if state == "inactive":
            await self._deactivate(environment)
            return
        deployment = await self._deployment(environment, sha, ref)
        extra: dict[str, Any] = {"auto_inactive": True}
        if url:
            extra["environment_url"] = url
        if log_url:
            extra["log_url"] = log_url
        if description:
            extra["description"] = _shorten(description, DESCRIPTION_LIMIT)
        await self.client.write(
            "POST /repos/{owner}/{repo}/deployments/{deployment_id}/statuses",
            lambda gh: gh.rest.repos.async_create_deployment_status(
                self.owner, self.repo, deployment, state=state, **extra
            ),
        )

    async def _deployment(self, environment: str, sha: str, ref: str) -> int:
        """The deployment of `sha` to `environment`, made when there is none yet (a
        restart finds the one it made before by listing)."""
        known = self._deployments.get((environment, sha))
        if known is not None:
            return known
        listed = await self.client.read(
            "GET /repos/{owner}/{repo}/deployments",
            lambda gh: gh.rest.repos.async_list_deployments(
                self.owner, self.repo, sha=sha, environment=environment, per_page=1
            ),
        )
        if listed:
            found = int(listed[0]["id"])
        else:
            made = await self.client.write(
                "POST /repos/{owner}/{repo}/deployments",
                lambda gh: gh.rest.repos.async_create_deployment(
                    self.owner, self.repo, ref=sha, environment=environment,
                    auto_merge=False, required_contexts=[], description=f"branchline: {ref}",
                    transient_environment=environment != PRODUCTION,
                    production_environment=environment == PRODUCTION,
                ),
            )  # fmt: skip
            found = int(made["id"])
        self._deployments[(environment, sha)] = found
        return found

    async def _deactivate(self, environment: str) -> None:
        """Every deployment to `environment` inactive: its URL is gone."""
        listed = await self.client.read_pages(
            "GET /repos/{owner}/{repo}/deployments",
            lambda gh, page: gh.rest.repos.async_list_deployments(
                self.owner, self.repo, environment=environment, per_page=100, page=page
            ),
        )
        for deployment in listed:
            await self._deactivate_one(int(deployment["id"]))
        self._deployments = {k: v for k, v in self._deployments.items() if k[0] != environment}

    async def _deactivate_one(self, deployment: int) -> None:
        statuses = await self.client.read(
            "GET /repos/{owner}/{repo}/deployments/{deployment_id}/statuses",
            lambda gh: gh.rest.repos.async_list_deployment_statuses(
                self.owner, self.repo, deployment, per_page=1
            ),
        )
        if statuses and statuses[0].get("state") == "inactive":
            return
        await self.client.write(
            "POST /repos/{owner}/{repo}/deployments/{deployment_id}/statuses",
            lambda gh: gh.rest.repos.async_create_deployment_status(
                self.owner, self.repo, deployment, state="inactive",
                description="the environment was torn down",
            ),
        )  # fmt: skip

    # -- pull requests ----------------------------------------------------------------

    async def pull_request(self, number: int) -> PullRequest | None:
        try:
            data = await self.client.read(
                "GET /repos/{owner}/{repo}/pulls/{pull_number}",
                lambda gh: gh.rest.pulls.async_get(self.owner, self.repo, number),
            )
        except GitHubError as exc:
            if exc.status == 404:
                return None
            raise
        return self._pull(data)

    async def pull_requests(self) -> list[PullRequest]:
        listed = await self.client.read_pages(
            "GET /repos/{owner}/{repo}/pulls",
            lambda gh, page: gh.rest.pulls.async_list(
                self.owner, self.repo, state="open", per_page=100, page=page
            ),
        )
        return [self._pull(data) for data in listed]

    def _pull(self, data: Mapping[str, Any]) -> PullRequest:
        head, base = data.get("head") or {}, data.get("base") or {}
        head_repo = (head.get("repo") or {}).get("full_name")
        state: PullRequestState = "open" if data.get("state") == "open" else "closed"
        if data.get("merged") or data.get("merged_at"):
            state = "merged"
        return PullRequest(
            number=int(data["number"]), title=str(data.get("title") or ""),
            head_branch=str(head.get("ref") or ""), base_branch=str(base.get("ref") or ""),
            head_sha=str(head.get("sha") or ""), state=state,
            updated_at=_time(data.get("updated_at")),
            # A head in another repository (or one deleted since) is untrusted code.
            fork=head_repo is None or str(head_repo).lower() != self.repository.lower(),
        )  # fmt: skip

    async def changed_files(self, base: str, head: str) -> list[str] | None:
        try:
            compared = await self.client.read(
                "GET /repos/{owner}/{repo}/compare/{basehead}",
                lambda gh: gh.rest.repos.async_compare_commits(
                    self.owner, self.repo, f"{base}...{head}", per_page=COMPARE_LIMIT
                ),
            )
        except GitHubError as exc:
            if exc.status in (404, 422):
                return None  # a commit GitHub does not know (yet): everything counts
            raise
        files = compared.get("files") or []
        if len(files) >= COMPARE_LIMIT:
            return None  # GitHub lists no more than this: too many to filter by
        names: list[str] = []
        for entry in files:
            names.append(str(entry["filename"]))
            if entry.get("previous_filename"):
                names.append(str(entry["previous_filename"]))
        return names

    # -- approvals of forks' pull requests --------------------------------------------

    async def may_approve(self, login: str) -> bool:
        try:
            found = await self.client.read(
                "GET /repos/{owner}/{repo}/collaborators/{username}/permission",
                lambda gh: gh.rest.repos.async_get_collaborator_permission_level(
                    self.owner, self.repo, login
                ),
            )
        except GitHubError as exc:
            if exc.status == 404:
                return False  # not a collaborator at all
            raise
        role = str(found.get("role_name") or found.get("permission") or "")
        return role in WRITERS or found.get("permission") in ("admin", "write")

    async def withdraw_approval(self, pr: int) -> None:
        try:
            await self.client.write(
                "DELETE /repos/{owner}/{repo}/issues/{issue_number}/labels/{name}",
                lambda gh: gh.rest.issues.async_remove_label(
                    self.owner, self.repo, pr, APPROVAL_LABEL
                ),
            )
        except GitHubError as exc:
            if exc.status != 404:  # not labelled: nothing to withdraw
                raise

    async def verify(self) -> str:
        """Whether the settings can work: the credentials are accepted and reach the
        repository, and a token may write to it. Says what it found; raises what is
        wrong."""
        found = await self.client.read(
            "GET /repos/{owner}/{repo}", lambda gh: gh.rest.repos.async_get(self.owner, self.repo)
        )
        how = (
            f"as GitHub App {self.client.credentials.app_id}"
            if self.client.credentials.app_id is not None
            else "with a token"
        )
        permissions = found.get("permissions")
        if isinstance(permissions, dict) and not permissions.get("push"):
            raise UsageError(
                f"the GitHub token can read {self.repository} but not write to it: "
                "branchline could not post statuses, comments or issues",
                hint="Use a token of someone with write access (fine-grained: pull requests, "
                "issues, commit statuses and deployments read and write), or a GitHub App.",
            )
        return f"GitHub repository {found.get('full_name', self.repository)} reached {how}"

    async def aclose(self) -> None:
        await self.client.aclose()


def _ours(comment: Mapping[str, Any]) -> bool:
    """Whether a marked comment may be branchline's: written by an App (a bot) or by
    someone with a say in the repository. A marker copied by anyone else (a fork's
    author) is neither edited nor counted: it could not be edited, and would stop
    the preview's comment."""
    user = comment.get("user") or {}
    if user.get("type") == "Bot":
        return True
    return comment.get("author_association") in TRUSTED_AUTHORS


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
