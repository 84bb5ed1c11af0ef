"""The HTML pages the edge answers itself: the index of live environments (for an
unknown host and for the edge's own address) and the error pages. Everything that
came from a request or the store is escaped.

An unknown host's 404 lists only the routes of the zone it falls in (a stranger's
made-up Host learns nothing of other projects), and no page names an upstream's
address or port: those are the machine's, not the visitor's business."""

from __future__ import annotations

import html
from collections.abc import Iterable
from itertools import groupby

from branchline import naming
from branchline.store.routes import RouteRow

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}

_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:46rem;padding:0 1rem;"
    "color:#222}h1{font-size:1.4rem}h2{font-size:1.1rem;margin-bottom:.2rem}"
    "h3{font-size:.95rem;margin:.6rem 0 .2rem;color:#555}ul{margin:.2rem 0}"
    "code{background:#f2f2f2;padding:0 .2rem}.muted{color:#777}"
)


def _page(title: str, body: str) -> bytes:
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>\n"
    ).encode()


def route_url(host: str, port: int) -> str:
    return f"http://{host}/" if port == 80 else f"http://{host}:{port}/"


def zone_of(route: RouteRow) -> str:
    """The zone a route's host is in: its host without the first label
    (`api-preview-8.codex.localhost` -> `codex.localhost`; see `naming.host_name`)."""
    return route.host.partition(".")[2]


def in_same_zone(routes: Iterable[RouteRow], host: str) -> list[RouteRow]:
    """The routes of the most specific zone `host` falls in (none when it falls in
    no route's zone): what the 404 for `host` may show."""
    routes = list(routes)
    zones = {zone_of(r) for r in routes if zone_of(r) and naming.in_zone(host, zone_of(r))}
    if not zones:
        return []
    zone = max(zones, key=len)
    return [r for r in routes if zone_of(r) == zone]


def index(routes: Iterable[RouteRow], *, port: int, unknown_host: str | None = None) -> bytes:
    """Every live route, grouped by project and environment, as links through the
    edge on `port`; with `unknown_host`, the 404 page that names it and lists only
    the routes of its zone."""
    parts: list[str] = []
    if unknown_host is not None:
        shown = unknown_host if len(unknown_host) <= 200 else unknown_host[:200] + "..."
        parts.append(
            f"<h1>No environment answers for <code>{html.escape(shown)}</code></h1>"
            "<p>branchline's edge has no route for this host name. The live environments "
            "of its zone are:</p>"
        )
    else:
        parts.append("<h1>branchline edge</h1><p>The live environments:</p>")
    routes = list(routes) if unknown_host is None else in_same_zone(routes, unknown_host)
    if not routes:
        none = "None: nothing is deployed yet." if unknown_host is None else "None in its zone."
        parts.append(f"<p class=muted>{none}</p>")
    for project, in_project in groupby(routes, key=lambda r: r.project):
        parts.append(f"<h2>{html.escape(project)}</h2>")
        for environment, in_env in groupby(in_project, key=lambda r: r.environment):
            parts.append(f"<h3>{html.escape(environment)}</h3><ul>")
            for route in in_env:
                url = html.escape(route_url(route.host, port), quote=True)
                parts.append(
                    f'<li><a href="{url}">{html.escape(route.host)}</a> '
                    f"<span class=muted>{html.escape(route.service)}</span></li>"
                )
            parts.append("</ul>")
    title = "No such environment" if unknown_host is not None else "branchline edge"
    return _page(title, "".join(parts))


def error(status: int, message: str, detail: str = "") -> bytes:
    reason = REASONS.get(status, "Error")
    body = f"<h1>{status} {html.escape(reason)}</h1><p>{html.escape(message)}</p>"
    if detail:
        body += f"<p class=muted>{html.escape(detail)}</p>"
    return _page(f"{status} {reason}", body)


def no_process(route: RouteRow) -> bytes:
    return error(
        502,
        f"No process answers for service {route.service} of environment "
        f"{route.environment} (project {route.project}).",
        "Its process accepted no connection. "
        "The service may be starting, stopped or crashed: see `branchline status`.",
    )


def bad_upstream(route: RouteRow, what: str) -> bytes:
    return error(
        502,
        f"Service {route.service} of environment {route.environment} "
        f"(project {route.project}) gave no valid answer.",
        what,
    )


def timeout(route: RouteRow, seconds: float) -> bytes:
    return error(
        504,
        f"Service {route.service} of environment {route.environment} "
        f"(project {route.project}) did not answer within {seconds:g} s.",
    )
