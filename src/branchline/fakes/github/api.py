"""GitHub's REST paths the fake answers: a route table (method, path template, handler,
and who may call it) and the handlers, which read a `Call` and give a `Reply`."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from branchline.fakes.github.auth import Credentials
from branchline.fakes.github.records import Actor, ApiError, invalid, not_found
from branchline.fakes.github.render import PERMISSIONS, Renderer
from branchline.fakes.github.shapes import stamp
from branchline.fakes.github.world import GitHubWorld

DEFAULT_PER_PAGE = 30  # GitHub's page size when none is asked for
MAX_PER_PAGE = 100


@dataclass
class Call:
    params: dict[str, str]
    query: dict[str, str]
    body: Any
    url: str  # the request's full URL (the Link header's pages are built on it)
    actor: Actor = field(default_factory=lambda: Actor(""))


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Call], Reply]
# Parameters that take a ref with slashes in it (`feature/x`, `main...feature/x`).
WHOLE_REFS = ("ref", "basehead")
REPO = "/repos/{owner}/{repo}"


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    handler: Handler
    auth: str  # "token": personal or installation token; "jwt": the App's JWT
    pattern: re.Pattern[str]


Found = tuple[Route, dict[str, str]]


def paginate(items: Sequence[Any], call: Call) -> tuple[Sequence[Any], dict[str, str]]:
    """One page of `items` (`per_page`, `page`) and GitHub's Link header to the others."""
    per_page = min(max(int(call.query.get("per_page") or DEFAULT_PER_PAGE), 1), MAX_PER_PAGE)
    page = max(int(call.query.get("page") or 1), 1)
    last = max(math.ceil(len(items) / per_page), 1)
    chunk = items[(page - 1) * per_page : page * per_page]
    links = []
    if page < last:
        links += [(page + 1, "next"), (last, "last")]
    if page > 1:
        links = [(1, "first"), (page - 1, "prev"), *links]
    if not links:
        return chunk, {}
    link = ", ".join(f'<{_page_url(call.url, n)}>; rel="{rel}"' for n, rel in links)
    return chunk, {"Link": link}


def _page_url(url: str, page: int) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "page"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("page", str(page))])))


class GitHubApi:
    """The handlers over one world; `render` writes the JSON."""

    def __init__(self, world: GitHubWorld, credentials: Credentials, render: Renderer) -> None:
        self.world = world
        self.credentials = credentials
        self.render = render
        self.routes = [self._route(*row) for row in self._table()]

    @staticmethod
    def _route(method: str, template: str, handler: Handler, auth: str = "token") -> Route:
        pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
        for name in WHOLE_REFS:  # GitHub takes `feature/x` whole here
            pattern = pattern.replace(f"(?P<{name}>[^/]+)", f"(?P<{name}>.+)")
        return Route(method, template, handler, auth, re.compile(f"^{pattern}$"))

    def _table(self) -> list[tuple[str, str, Handler] | tuple[str, str, Handler, str]]:
        i = REPO + "/issues/{issue_number}"
        d = REPO + "/deployments/{deployment_id}"
        e = REPO + "/environments/{environment_name}"
        return [
            ("GET", REPO, self.get_repo),
            ("GET", REPO + "/issues", self.list_issues),
            ("POST", REPO + "/issues", self.create_issue),
            ("GET", i, self.get_issue),
            ("PATCH", i, self.update_issue),
            ("GET", i + "/comments", self.list_comments),
            ("POST", i + "/comments", self.create_comment),
            ("GET", REPO + "/issues/comments/{comment_id}", self.get_comment),
            ("PATCH", REPO + "/issues/comments/{comment_id}", self.update_comment),
            ("DELETE", REPO + "/issues/comments/{comment_id}", self.delete_comment),
            ("GET", i + "/labels", self.list_labels),
            ("POST", i + "/labels", self.add_labels),
            ("PUT", i + "/labels", self.set_labels),
            ("DELETE", i + "/labels", self.clear_labels),
            ("DELETE", i + "/labels/{name}", self.remove_label),
            ("POST", REPO + "/statuses/{sha}", self.create_status),
            ("GET", REPO + "/commits/{ref}/status", self.combined_status),
            ("POST", REPO + "/check-runs", self.create_check_run),
            ("GET", REPO + "/check-runs/{check_run_id}", self.get_check_run),
            ("PATCH", REPO + "/check-runs/{check_run_id}", self.update_check_run),
            ("GET", REPO + "/deployments", self.list_deployments),
            ("POST", REPO + "/deployments", self.create_deployment),
            ("GET", d, self.get_deployment),
            ("DELETE", d, self.delete_deployment),
            ("GET", d + "/statuses", self.list_deployment_statuses),
            ("POST", d + "/statuses", self.create_deployment_status),
            ("GET", REPO + "/pulls", self.list_pulls),
            ("POST", REPO + "/pulls", self.create_pull),
            ("GET", REPO + "/pulls/{pull_number}", self.get_pull),
            ("PATCH", REPO + "/pulls/{pull_number}", self.update_pull),
            ("GET", REPO + "/pulls/{pull_number}/files", self.pull_files),
            ("GET", REPO + "/compare/{basehead}", self.compare),
            ("GET", REPO + "/collaborators/{username}/permission", self.permission),
            ("GET", REPO + "/actions/secrets/public-key", self.public_key),
            ("GET", e, self.get_environment),
            ("PUT", e, self.put_environment),
            ("DELETE", e, self.delete_environment),
            ("GET", e + "/secrets/{secret_name}", self.get_secret),
            ("PUT", e + "/secrets/{secret_name}", self.put_secret),
            ("DELETE", e + "/secrets/{secret_name}", self.delete_secret),
            ("GET", "/app", self.get_app, "jwt"),
            ("GET", REPO + "/installation", self.get_installation, "jwt"),
            ("POST", "/app/installations/{installation_id}/access_tokens", self.create_token,
             "jwt"),
        ]  # fmt: skip

    def route(self, method: str, path: str) -> Found | None:
        """The route of `path` (undecoded) and its parameters (decoded)."""
        for route in self.routes:
            match = route.pattern.match(path)
            if match and route.method == method:
                return route, {k: unquote(v) for k, v in match.groupdict().items()}
        return None

    # -- the repository ------------------------------------------------------------

    def get_repo(self, call: Call) -> Reply:
        return Reply(200, self.render.repository(full=True))

    # -- issues -----------------------------------------------------------------------

    def list_issues(self, call: Call) -> Reply:
        found = self.world.list_issues(call.query.get("state", "open"), call.query.get("labels"))
        page, headers = paginate(found, call)
        return Reply(200, [self.render.issue(x) for x in page], headers)

    def create_issue(self, call: Call) -> Reply:
        body = call.body or {}
        labels = _label_names(body.get("labels") or [])
        title = body.get("title")
        issue = self.world.create_issue(call.actor, "" if title is None else str(title),
                                        body.get("body"), labels)  # fmt: skip
        return Reply(201, self.render.issue(issue))

    def get_issue(self, call: Call) -> Reply:
        return Reply(200, self.render.issue(self.world.issue(_int(call.params["issue_number"]))))

    def update_issue(self, call: Call) -> Reply:
        number = _int(call.params["issue_number"])
        return Reply(200, self.render.issue(self.world.update_issue(number, call.body or {})))

    # -- comments --------------------------------------------------------------------

    def list_comments(self, call: Call) -> Reply:
        found = self.world.comments_on(_int(call.params["issue_number"]))
        page, headers = paginate(found, call)
        return Reply(200, [self.render.comment(c) for c in page], headers)

    def create_comment(self, call: Call) -> Reply:
        number = _int(call.params["issue_number"])
        comment = self.world.add_comment(call.actor, number, str((call.body or {})["body"]))
        return Reply(201, self.render.comment(comment))

    def get_comment(self, call: Call) -> Reply:
        return Reply(200, self.render.comment(self.world.comment(_int(call.params["comment_id"]))))

    def update_comment(self, call: Call) -> Reply:
        ident = _int(call.params["comment_id"])
        comment = self.world.edit_comment(ident, str((call.body or {})["body"]))
        return Reply(200, self.render.comment(comment))

    def delete_comment(self, call: Call) -> Reply:
        self.world.delete_comment(_int(call.params["comment_id"]))
        return Reply(204)

    # -- labels -------------------------------------------------------------------------

    def _labels(self, labels: Sequence[Any]) -> Reply:
        return Reply(200, [self.render.label(x) for x in labels])

    def list_labels(self, call: Call) -> Reply:
        found = self.world.labels_of(_int(call.params["issue_number"]))
        page, headers = paginate(found, call)
        return Reply(200, [self.render.label(x) for x in page], headers)

    def add_labels(self, call: Call) -> Reply:
        number = _int(call.params["issue_number"])
        return self._labels(self.world.add_labels(number, _label_names(call.body)))

    def set_labels(self, call: Call) -> Reply:
        number = _int(call.params["issue_number"])
        return self._labels(self.world.set_labels(number, _label_names(call.body)))

    def clear_labels(self, call: Call) -> Reply:
        self.world.set_labels(_int(call.params["issue_number"]), [])
        return Reply(204)

    def remove_label(self, call: Call) -> Reply:
        number = _int(call.params["issue_number"])
        return self._labels(self.world.remove_label(number, call.params["name"]))

    # -- statuses and check runs --------------------------------------------------------

    def create_status(self, call: Call) -> Reply:
        status = self.world.commits.add_status(call.actor, call.params["sha"], call.body or {})
        return Reply(201, self.render.status(status))

    def combined_status(self, call: Call) -> Reply:
        return Reply(200, self.render.combined(call.params["ref"]))

    def create_check_run(self, call: Call) -> Reply:
        run = self.world.commits.create_check_run(call.actor, call.body or {})
        return Reply(201, self.render.check_run(run))

    def get_check_run(self, call: Call) -> Reply:
        run = self.world.commits.check_run(_int(call.params["check_run_id"]))
        return Reply(200, self.render.check_run(run))

    def update_check_run(self, call: Call) -> Reply:
        run = self.world.commits.update_check_run(
            _int(call.params["check_run_id"]), call.body or {}
        )
        return Reply(200, self.render.check_run(run))

    # -- deployments --------------------------------------------------------------------

    def list_deployments(self, call: Call) -> Reply:
        page, headers = paginate(self.world.commits.list_deployments(call.query), call)
        return Reply(200, [self.render.deployment(d) for d in page], headers)

    def create_deployment(self, call: Call) -> Reply:
        deployment = self.world.commits.create_deployment(call.actor, call.body or {})
        self.world.environments.ensure(deployment.environment)  # as GitHub makes it
        return Reply(201, self.render.deployment(deployment))

    def get_deployment(self, call: Call) -> Reply:
        deployment = self.world.commits.deployment(_int(call.params["deployment_id"]))
        return Reply(200, self.render.deployment(deployment))

    def delete_deployment(self, call: Call) -> Reply:
        self.world.commits.delete_deployment(_int(call.params["deployment_id"]))
        return Reply(204)

    def list_deployment_statuses(self, call: Call) -> Reply:
        deployment = self.world.commits.deployment(_int(call.params["deployment_id"]))
        page, headers = paginate(list(reversed(deployment.statuses)), call)
        return Reply(200, [self.render.deployment_status(deployment, s) for s in page], headers)

    def create_deployment_status(self, call: Call) -> Reply:
        ident = _int(call.params["deployment_id"])
        status = self.world.commits.add_deployment_status(call.actor, ident, call.body or {})
        return Reply(
            201, self.render.deployment_status(self.world.commits.deployment(ident), status)
        )

    # -- pulls --------------------------------------------------------------------------

    def list_pulls(self, call: Call) -> Reply:
        q = call.query
        found = self.world.list_pulls(q.get("state", "open"), q.get("head"), q.get("base"))
        page, headers = paginate(found, call)
        return Reply(200, [self.render.pull(p, full=False) for p in page], headers)

    def create_pull(self, call: Call) -> Reply:
        body = call.body or {}
        head = str(body.get("head") or "")
        if not head or not body.get("base"):
            raise invalid("PullRequest", "head" if not head else "base", "missing_field")
        if any(p.head_ref == head.split(":")[-1] and self.world.issues[p.number].state == "open"
               for p in self.world.pulls.values()):  # fmt: skip
            raise invalid("PullRequest", "head", "custom",
                          f"A pull request already exists for {head}.")  # fmt: skip
        pull = self.world.add_pull(
            head=head.split(":")[-1], sha=None, base=str(body["base"]), base_sha=None,
            title=str(body.get("title") or ""), body=body.get("body"), author=call.actor,
        )  # fmt: skip
        return Reply(201, self.render.pull(pull))

    def get_pull(self, call: Call) -> Reply:
        return Reply(200, self.render.pull(self.world.pull(_int(call.params["pull_number"]))))

    def update_pull(self, call: Call) -> Reply:
        body = call.body or {}
        pull = self.world.update_pull(
            _int(call.params["pull_number"]), state=body.get("state"), title=body.get("title"),
            body=body.get("body"), base=body.get("base"),
        )  # fmt: skip
        return Reply(200, self.render.pull(pull))

    def pull_files(self, call: Call) -> Reply:
        pull = self.world.pull(_int(call.params["pull_number"]))
        page, headers = paginate(pull.files, call)
        return Reply(200, [self.render.file(f, pull.head_sha) for f in page], headers)

    def compare(self, call: Call) -> Reply:
        base, dots, head = call.params["basehead"].partition("...")
        if not dots:
            base, dots, head = call.params["basehead"].partition("..")
        if not dots or not base or not head:
            raise not_found()
        if base == head:
            sha = self.world.resolve(base)
            return Reply(200, self.render.compare(base, head, sha, sha, []))
        found = self.world.compare(base, head)
        if found is None:
            raise not_found()
        base_sha, head_sha, files = found
        return Reply(200, self.render.compare(base, head, base_sha, head_sha, files))

    def permission(self, call: Call) -> Reply:
        return Reply(200, self.render.permission(call.params["username"]))

    # -- environments and their secrets ------------------------------------------------

    def public_key(self, call: Call) -> Reply:
        envs = self.world.environments
        return Reply(200, {"key_id": envs.key_id, "key": envs.public_key.decode()})

    def get_environment(self, call: Call) -> Reply:
        found = self.world.environments.environment(call.params["environment_name"])
        return Reply(200, self.render.environment(found))

    def put_environment(self, call: Call) -> Reply:
        made = self.world.environments.ensure(call.params["environment_name"])
        return Reply(200, self.render.environment(made))

    def delete_environment(self, call: Call) -> Reply:
        self.world.environments.delete(call.params["environment_name"])
        return Reply(204)

    def get_secret(self, call: Call) -> Reply:
        p = call.params
        found = self.world.environments.secret(p["environment_name"], p["secret_name"])
        return Reply(200, self.render.secret(found))

    def put_secret(self, call: Call) -> Reply:
        p, body = call.params, call.body or {}
        new = self.world.environments.put_secret(
            p["environment_name"], p["secret_name"], str(body["encrypted_value"]),
            str(body["key_id"]),
        )  # fmt: skip
        return Reply(201, {}) if new else Reply(204)

    def delete_secret(self, call: Call) -> Reply:
        p = call.params
        self.world.environments.delete_secret(p["environment_name"], p["secret_name"])
        return Reply(204)

    # -- the GitHub App ---------------------------------------------------------------

    def get_app(self, call: Call) -> Reply:
        return Reply(200, self.render.app(self.credentials.app_id or 1))

    def get_installation(self, call: Call) -> Reply:
        if not self.world.owns(call.params["owner"], call.params["repo"]):
            raise not_found()
        c = self.credentials
        return Reply(200, self.render.installation(c.installation_id, c.app_id or 1))

    def create_token(self, call: Call) -> Reply:
        token = self.credentials.issue_token(_int(call.params["installation_id"]))
        return Reply(201, {
            "token": token.token,
            # whole seconds, the only shape clients parse (githubkit's strptime)
            "expires_at": stamp_epoch(token.expires),
            "permissions": PERMISSIONS,
            "repository_selection": "selected",
        })  # fmt: skip


def stamp_epoch(moment: float) -> str:
    return stamp(datetime.fromtimestamp(math.floor(moment), UTC)) or ""


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise not_found() from None


def _label_names(body: Any) -> list[str]:
    """The labels of a POST or PUT: a list, or `{"labels": [...]}` (names or objects)."""
    if isinstance(body, dict):
        body = body.get("labels") or []
    if not isinstance(body, list):
        raise ApiError(422, "Invalid request.", [{"resource": "Label", "code": "invalid"}])
    return [str(x["name"]) if isinstance(x, dict) else str(x) for x in body]
