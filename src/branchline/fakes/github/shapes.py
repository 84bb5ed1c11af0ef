"""GitHub's JSON shapes for the fake's people and repositories: users, bots and
repository objects with every URL the schema requires, pointing at the fake's own API
(`api`) and at github.com for pages."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

HTML = "https://github.com"
DOCS = "https://docs.github.com/rest"
APP_SLUG = "branchline"  # the fake GitHub App's name; its bot is `branchline[bot]`


def now() -> datetime:
    return datetime.now(UTC)


def stamp(moment: datetime | None) -> str | None:
    """ISO 8601 in whole seconds with a `Z`, as GitHub writes its timestamps."""
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def node_id(kind: str, ident: int) -> str:
    """An opaque node id shaped like GitHub's (`IC_kwDO...`)."""
    return f"{kind}_" + base64.b64encode(f"{kind}{ident}".encode()).decode().rstrip("=")


def user(api: str, login: str, ident: int, *, bot: bool = False) -> dict[str, Any]:
    """A simple-user: a person, or a GitHub App's `slug[bot]`."""
    u = f"{api}/users/{login}"
    return {
        "login": login,
        "id": ident,
        "node_id": node_id("U" if not bot else "BOT", ident),
        "avatar_url": f"https://avatars.githubusercontent.com/u/{ident}?v=4",
        "gravatar_id": "",
        "url": u,
        "html_url": f"{HTML}/{login}" if not bot else f"{HTML}/apps/{login.removesuffix('[bot]')}",
        "followers_url": f"{u}/followers",
        "following_url": f"{u}/following{{/other_user}}",
        "gists_url": f"{u}/gists{{/gist_id}}",
        "starred_url": f"{u}/starred{{/owner}}{{/repo}}",
        "subscriptions_url": f"{u}/subscriptions",
        "organizations_url": f"{u}/orgs",
        "repos_url": f"{u}/repos",
        "events_url": f"{u}/events{{/privacy}}",
        "received_events_url": f"{u}/received_events",
        "type": "Bot" if bot else "User",
        "site_admin": False,
    }


# The repository URLs: (field, path under the repository's API URL).
_REPO_URLS = (
    ("archive_url", "/{archive_format}{/ref}"),
    ("assignees_url", "/assignees{/user}"),
    ("blobs_url", "/git/blobs{/sha}"),
    ("branches_url", "/branches{/branch}"),
    ("collaborators_url", "/collaborators{/collaborator}"),
    ("comments_url", "/comments{/number}"),
    ("commits_url", "/commits{/sha}"),
    ("compare_url", "/compare/{base}...{head}"),
    ("contents_url", "/contents/{+path}"),
    ("contributors_url", "/contributors"),
    ("deployments_url", "/deployments"),
    ("downloads_url", "/downloads"),
    ("events_url", "/events"),
    ("forks_url", "/forks"),
    ("git_commits_url", "/git/commits{/sha}"),
    ("git_refs_url", "/git/refs{/sha}"),
    ("git_tags_url", "/git/tags{/sha}"),
    ("hooks_url", "/hooks"),
    ("issue_comment_url", "/issues/comments{/number}"),
    ("issue_events_url", "/issues/events{/number}"),
    ("issues_url", "/issues{/number}"),
    ("keys_url", "/keys{/key_id}"),
    ("labels_url", "/labels{/name}"),
    ("languages_url", "/languages"),
    ("merges_url", "/merges"),
    ("milestones_url", "/milestones{/number}"),
    ("notifications_url", "/notifications{?since,all,participating}"),
    ("pulls_url", "/pulls{/number}"),
    ("releases_url", "/releases{/id}"),
    ("stargazers_url", "/stargazers"),
    ("statuses_url", "/statuses/{sha}"),
    ("subscribers_url", "/subscribers"),
    ("subscription_url", "/subscription"),
    ("tags_url", "/tags"),
    ("teams_url", "/teams"),
    ("trees_url", "/git/trees{/sha}"),
)


def repository(
    api: str,
    full_name: str,
    ident: int,
    owner: dict[str, Any],
    *,
    fork: bool = False,
    default_branch: str = "main",
    created: datetime,
    open_issues: int = 0,
    full: bool = False,
) -> dict[str, Any]:
    """A repository (as in a pull's head and base) or, with `full`, a full-repository
    (`GET /repos/{owner}/{repo}`)."""
    u = f"{api}/repos/{full_name}"
    html = f"{HTML}/{full_name}"
    body: dict[str, Any] = {
        "id": ident,
        "node_id": node_id("R", ident),
        "name": full_name.split("/", 1)[1],
        "full_name": full_name,
        "owner": owner,
        "private": False,
        "html_url": html,
        "description": None,
        "fork": fork,
        "url": u,
        **{name: u + tail for name, tail in _REPO_URLS},
        "clone_url": f"{html}.git",
        "git_url": f"git://github.com/{full_name}.git",
        "ssh_url": f"git@github.com:{full_name}.git",
        "svn_url": html,
        "mirror_url": None,
        "homepage": None,
        "language": "Python",
        "forks": 0,
        "forks_count": 0,
        "stargazers_count": 0,
        "watchers": 0,
        "watchers_count": 0,
        "size": 0,
        "default_branch": default_branch,
        "open_issues": open_issues,
        "open_issues_count": open_issues,
        "has_issues": True,
        "has_projects": True,
        "has_wiki": True,
        "has_pages": False,
        "has_downloads": True,
        "archived": False,
        "disabled": False,
        "visibility": "public",
        "license": None,
        "pushed_at": stamp(created),
        "created_at": stamp(created),
        "updated_at": stamp(created),
    }
    if full:
        body |= {"has_discussions": False, "network_count": 0, "subscribers_count": 0}
    return body
