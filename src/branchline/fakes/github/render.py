"""The fake GitHub's records as GitHub's JSON (the schemas of its OpenAPI document)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from branchline.fakes.github import shapes
from branchline.fakes.github.environments import Environment, Secret
from branchline.fakes.github.records import (
    PERMISSION_OF_ROLE,
    Actor,
    CheckRun,
    Comment,
    CommitStatus,
    Deployment,
    DeploymentStatus,
    Issue,
    Label,
    Pull,
    fake_sha,
)
from branchline.fakes.github.shapes import APP_SLUG, HTML, node_id, stamp
from branchline.fakes.github.world import GitHubWorld


class Renderer:
    """JSON for one world, with API URLs under `api` (the fake's own base URL)."""

    def __init__(self, world: GitHubWorld, api: str) -> None:
        self.world = world
        self.api = api.rstrip("/")

    @property
    def repo_api(self) -> str:
        return f"{self.api}/repos/{self.world.full_name}"

    @property
    def repo_html(self) -> str:
        return f"{HTML}/{self.world.full_name}"

    def user(self, actor: Actor | str) -> dict[str, Any]:
        if isinstance(actor, str):
            actor = Actor(actor)
        return shapes.user(self.api, actor.login, self.world.user_id(actor.login), bot=actor.bot)

    def repository(self, *, full: bool = False, fork_of: str | None = None) -> dict[str, Any]:
        world = self.world
        if fork_of is not None:  # a fork's copy under its owner's name
            name = f"{fork_of}/{world.name}"
            ident = world.user_id(f"repo:{name}")
            return shapes.repository(self.api, name, ident, self.user(fork_of), fork=True,
                                     created=world.created)  # fmt: skip
        opened = sum(1 for i in world.issues.values() if i.state == "open")
        return shapes.repository(
            self.api, world.full_name, world.repo_id, self.user(world.owner),
            default_branch=world.default_branch, created=world.created,
            open_issues=opened, full=full,
        )  # fmt: skip

    def label(self, label: Label) -> dict[str, Any]:
        return {
            "id": label.id,
            "node_id": node_id("LA", label.id),
            "url": f"{self.repo_api}/labels/{label.name}",
            "name": label.name,
            "description": label.description,
            "color": label.color,
            "default": False,
            # Newer GitHub API versions (githubkit's models) require it; the document
            # allows it.
            "archived_at": None,
            "archived_by": None,
        }

    def issue(self, issue: Issue) -> dict[str, Any]:
        world = self.world
        url = f"{self.repo_api}/issues/{issue.number}"
        kind = "pull" if issue.is_pull else "issues"
        body: dict[str, Any] = {
            "id": issue.id,
            "node_id": node_id("I", issue.id),
            "url": url,
            "repository_url": self.repo_api,
            "labels_url": url + "/labels{/name}",
            "comments_url": url + "/comments",
            "events_url": url + "/events",
            "html_url": f"{self.repo_html}/{kind}/{issue.number}",
            "number": issue.number,
            "state": issue.state,
            "state_reason": issue.state_reason,
            "title": issue.title,
            "body": issue.body,
            "user": self.user(issue.author),
            "labels": [self.label(x) for x in world.labels_of(issue.number)],
            "assignee": None,
            "assignees": [],
            "milestone": None,
            "locked": False,
            "active_lock_reason": None,
            "comments": sum(1 for c in world.comments.values() if c.issue == issue.number),
            "closed_at": stamp(issue.closed_at),
            "created_at": stamp(issue.created),
            "updated_at": stamp(issue.updated),
            "closed_by": None,
            "author_association": self.association(issue.author),
        }
        if issue.is_pull:
            pull = world.pulls[issue.number]
            pull_url = f"{self.repo_api}/pulls/{issue.number}"
            html = f"{self.repo_html}/pull/{issue.number}"
            body["pull_request"] = {
                "url": pull_url,
                "html_url": html,
                "diff_url": html + ".diff",
                "patch_url": html + ".patch",
                "merged_at": stamp(pull.merged_at),
            }
        return body

    def association(self, actor: Actor) -> str:
        if actor.login == self.world.owner:
            return "OWNER"
        if self.world.role(actor.login) != "none":
            return "COLLABORATOR"
        return "NONE"

    def pull(self, pull: Pull, *, full: bool = True) -> dict[str, Any]:
        world = self.world
        issue = world.issues[pull.number]
        url = f"{self.repo_api}/pulls/{pull.number}"
        html = f"{self.repo_html}/pull/{pull.number}"
        issue_url = f"{self.repo_api}/issues/{pull.number}"
        statuses = f"{self.repo_api}/statuses/{pull.head_sha}"
        head_owner = issue.author.login if pull.fork else world.owner
        links = {
            "self": url, "html": html, "issue": issue_url,
            "comments": issue_url + "/comments", "review_comments": url + "/comments",
            "review_comment": f"{self.repo_api}/pulls/comments{{/number}}",
            "commits": url + "/commits", "statuses": statuses,
        }  # fmt: skip
        body: dict[str, Any] = {
            "url": url,
            "id": pull.id,
            "node_id": node_id("PR", pull.id),
            "html_url": html,
            "diff_url": html + ".diff",
            "patch_url": html + ".patch",
            "issue_url": issue_url,
            "commits_url": url + "/commits",
            "review_comments_url": url + "/comments",
            "review_comment_url": links["review_comment"],
            "comments_url": issue_url + "/comments",
            "statuses_url": statuses,
            "number": pull.number,
            "state": issue.state,
            "locked": False,
            "title": issue.title,
            "user": self.user(issue.author),
            "body": issue.body,
            "labels": [self.label(x) for x in world.labels_of(pull.number)],
            "milestone": None,
            "active_lock_reason": None,
            "created_at": stamp(issue.created),
            "updated_at": stamp(issue.updated),
            "closed_at": stamp(issue.closed_at),
            "merged_at": stamp(pull.merged_at),
            "merge_commit_sha": _merge_sha(pull),
            "assignee": None,
            "assignees": [],
            "requested_reviewers": [],
            "requested_teams": [],
            "head": {
                "label": f"{head_owner}:{pull.head_ref}",
                "ref": pull.head_ref,
                "sha": pull.head_sha,
                "user": self.user(head_owner),
                "repo": self.repository(fork_of=head_owner if pull.fork else None),
            },
            "base": {
                "label": f"{world.owner}:{pull.base_ref}",
                "ref": pull.base_ref,
                "sha": pull.base_sha,
                "user": self.user(world.owner),
                "repo": self.repository(),
            },
            "_links": {name: {"href": href} for name, href in links.items()},
            "author_association": self.association(issue.author),
            "auto_merge": None,
            "draft": False,
        }
        if full:
            open_ = issue.state == "open"
            body |= {
                "merged": pull.merged,
                "mergeable": True if open_ else None,
                "rebaseable": True if open_ else None,
                "mergeable_state": "clean" if open_ else "unknown",
                "merged_by": self.user(world.owner) if pull.merged else None,
                "comments": sum(1 for c in world.comments.values() if c.issue == pull.number),
                "review_comments": 0,
                "maintainer_can_modify": False,
                "commits": 1,
                "additions": len(pull.files),
                "deletions": 0,
                "changed_files": len(pull.files),
            }
        return body

    def file(self, filename: str, head_sha: str) -> dict[str, Any]:
        return {
            "sha": fake_sha(filename, head_sha),
            "filename": filename,
            "status": "modified",
            "additions": 1,
            "deletions": 0,
            "changes": 1,
            "blob_url": f"{self.repo_html}/blob/{head_sha}/{filename}",
            "raw_url": f"{self.repo_html}/raw/{head_sha}/{filename}",
            "contents_url": f"{self.repo_api}/contents/{filename}?ref={head_sha}",
            "patch": "@@ -1 +1 @@",
        }

    def commit(self, sha: str, message: str = "") -> dict[str, Any]:
        url = f"{self.repo_api}/commits/{sha}"
        return {
            "url": url,
            "sha": sha,
            "node_id": node_id("C", int(sha[:8], 16) if _hex(sha) else 0),
            "html_url": f"{self.repo_html}/commit/{sha}",
            "comments_url": url + "/comments",
            "commit": {
                "url": f"{self.repo_api}/git/commits/{sha}",
                "author": None,
                "committer": None,
                "message": message or f"commit {sha[:7]}",
                "comment_count": 0,
                "tree": {"sha": sha, "url": f"{self.repo_api}/git/trees/{sha}"},
            },
            "author": None,  # no GitHub account for the commit's e-mail, as GitHub can say
            "committer": None,
            "parents": [],
        }

    def compare(self, base: str, head: str, base_sha: str, head_sha: str,
                files: list[str]) -> dict[str, Any]:  # fmt: skip
        same = base_sha == head_sha
        spec = f"{base}...{head}"
        return {
            "url": f"{self.repo_api}/compare/{spec}",
            "html_url": f"{self.repo_html}/compare/{spec}",
            "permalink_url": f"{self.repo_html}/compare/{base_sha}...{head_sha}",
            "diff_url": f"{self.repo_html}/compare/{spec}.diff",
            "patch_url": f"{self.repo_html}/compare/{spec}.patch",
            "base_commit": self.commit(base_sha),
            "merge_base_commit": self.commit(base_sha),
            "status": "identical" if same else "ahead",
            "ahead_by": 0 if same else 1,
            "behind_by": 0,
            "total_commits": 0 if same else 1,
            "commits": [] if same else [self.commit(head_sha)],
            "files": [] if same else [self.file(f, head_sha) for f in files],
        }

    def comment(self, comment: Comment) -> dict[str, Any]:
        kind = "pull" if self.world.issues[comment.issue].is_pull else "issues"
        return {
            "id": comment.id,
            "node_id": node_id("IC", comment.id),
            "url": f"{self.repo_api}/issues/comments/{comment.id}",
            "html_url": f"{self.repo_html}/{kind}/{comment.issue}#issuecomment-{comment.id}",
            "issue_url": f"{self.repo_api}/issues/{comment.issue}",
            "body": comment.body,
            "user": self.user(comment.author),
            "created_at": stamp(comment.created),
            "updated_at": stamp(comment.updated),
            "author_association": self.association(comment.author),
        }

    def status(self, status: CommitStatus) -> dict[str, Any]:
        return {
            "url": f"{self.repo_api}/statuses/{status.sha}",
            "avatar_url": self.user(status.author)["avatar_url"],
            "id": status.id,
            "node_id": node_id("SC", status.id),
            "state": status.state,
            "description": status.description,
            "target_url": status.target_url,
            "context": status.context,
            "created_at": stamp(status.created),
            "updated_at": stamp(status.created),
            "creator": self.user(status.author),
        }

    def combined(self, ref: str) -> dict[str, Any]:
        state, sha, latest = self.world.commits.combined_status(ref)
        statuses = []
        for s in latest:
            one = self.status(s)
            one.pop("creator")
            statuses.append(one)
        return {
            "state": state,
            "sha": sha,
            "total_count": len(statuses),
            "statuses": statuses,
            "repository": self.repository(),
            "commit_url": f"{self.repo_api}/commits/{sha}",
            "url": f"{self.repo_api}/commits/{sha}/status",
        }

    def check_run(self, run: CheckRun) -> dict[str, Any]:
        output = run.output
        return {
            "id": run.id,
            "node_id": node_id("CR", run.id),
            "head_sha": run.head_sha,
            "external_id": run.external_id,
            "url": f"{self.repo_api}/check-runs/{run.id}",
            "html_url": f"{self.repo_html}/runs/{run.id}",
            "details_url": run.details_url,
            "status": run.status,
            "conclusion": run.conclusion,
            "started_at": stamp(run.started),
            "completed_at": stamp(run.completed),
            "output": {
                "title": output.get("title"),
                "summary": output.get("summary"),
                "text": output.get("text"),
                "annotations_count": len(output.get("annotations") or []),
                "annotations_url": f"{self.repo_api}/check-runs/{run.id}/annotations",
            },
            "name": run.name,
            "check_suite": {"id": run.id},
            "app": self.app(),
            "pull_requests": [],
        }

    def app(self, app_id: int = 1) -> dict[str, Any]:
        """The GitHub App (an `integration`) that the fake's installation belongs to."""
        created = stamp(self.world.created)
        return {
            "id": app_id,
            "slug": APP_SLUG,
            "node_id": node_id("A", app_id),
            "client_id": f"Iv1.{app_id:016x}",
            "owner": self.user(self.world.owner),
            "name": APP_SLUG,
            "description": "branchline's previews and rollouts",
            "external_url": "https://branchline.invalid",
            "html_url": f"{HTML}/apps/{APP_SLUG}",
            "created_at": created,
            "updated_at": created,
            "permissions": PERMISSIONS,
            "events": ["pull_request", "push"],
        }

    def installation(self, installation_id: int, app_id: int) -> dict[str, Any]:
        created = stamp(self.world.created)
        return {
            "id": installation_id,
            "account": self.user(self.world.owner),
            "repository_selection": "selected",
            "access_tokens_url": f"{self.api}/app/installations/{installation_id}/access_tokens",
            "repositories_url": f"{self.api}/installation/repositories",
            "html_url": f"{HTML}/settings/installations/{installation_id}",
            "app_id": app_id,
            "app_slug": APP_SLUG,
            "target_id": self.world.user_id(self.world.owner),
            "target_type": "User",
            "permissions": PERMISSIONS,
            "events": ["pull_request", "push"],
            "created_at": created,
            "updated_at": created,
            "single_file_name": None,
            "suspended_by": None,
            "suspended_at": None,
        }

    def deployment(self, deployment: Deployment) -> dict[str, Any]:
        url = f"{self.repo_api}/deployments/{deployment.id}"
        return {
            "url": url,
            "id": deployment.id,
            "node_id": node_id("DE", deployment.id),
            "sha": deployment.sha,
            "ref": deployment.ref,
            "task": deployment.task,
            "payload": deployment.payload,
            "original_environment": deployment.environment,
            "environment": deployment.environment,
            "description": deployment.description,
            "creator": self.user(deployment.author),
            "created_at": stamp(deployment.created),
            "updated_at": stamp(deployment.updated),
            "statuses_url": url + "/statuses",
            "repository_url": self.repo_api,
            "transient_environment": deployment.transient,
            "production_environment": deployment.production,
        }

    def deployment_status(self, deployment: Deployment, status: DeploymentStatus) -> dict[str, Any]:
        url = f"{self.repo_api}/deployments/{deployment.id}"
        return {
            "url": f"{url}/statuses/{status.id}",
            "id": status.id,
            "node_id": node_id("DES", status.id),
            "state": status.state,
            "creator": self.user(status.author),
            "description": status.description,
            "environment": status.environment,
            "target_url": status.log_url,
            "log_url": status.log_url,
            "environment_url": status.environment_url,
            "created_at": stamp(status.created),
            "updated_at": stamp(status.created),
            "deployment_url": url,
            "repository_url": self.repo_api,
        }

    def environment(self, environment: Environment) -> dict[str, Any]:
        name = environment.name
        return {
            "id": environment.id,
            "node_id": node_id("EN", environment.id),
            "name": name,
            "url": f"{self.repo_api}/environments/{quote(name, safe='')}",
            "html_url": f"{self.repo_html}/deployments/activity_log?environments_filter={name}",
            "created_at": stamp(environment.created),
            "updated_at": stamp(environment.updated),
            "protection_rules": [],
            "deployment_branch_policy": None,
        }

    def secret(self, secret: Secret) -> dict[str, Any]:
        return {
            "name": secret.name,
            "created_at": stamp(secret.created),
            "updated_at": stamp(secret.updated),
        }

    def permission(self, login: str) -> dict[str, Any]:
        role = self.world.role(login)
        return {
            "permission": PERMISSION_OF_ROLE[role],
            "role_name": role,
            "user": {**self.user(login), "role_name": role},
        }


PERMISSIONS = {
    "checks": "write", "contents": "read", "deployments": "write", "issues": "write",
    "metadata": "read", "pull_requests": "write", "statuses": "write",
}  # fmt: skip


def _merge_sha(pull: Pull) -> str | None:
    return fake_sha("merge", pull.head_sha, pull.base_sha) if pull.merged else None


def _hex(value: str) -> bool:
    try:
        int(value[:8], 16)
    except ValueError:
        return False
    return True
