"""The edge's HTTP/1.1 parsing and framing, host normalisation and pages, without
sockets."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from branchline.edge import pages
from branchline.edge.http import (
    IncompleteBodyError,
    ProtocolError,
    body_pieces,
    chunk,
    forwarded_headers,
    parse_request,
    parse_response,
)
from branchline.errors import UsageError
from branchline.store.routes import RouteRow, normalize_host, validate_host


def test_parse_request_basics() -> None:
    request = parse_request(
        b"POST /a?b=1 HTTP/1.1\r\nHost: API.x.localhost:8080\r\nContent-Length: 5\r\n"
        b"X-Thing:  spaced value \t\r\nConnection: keep-alive, X-Thing\r\n\r\n"
    )
    assert (request.method, request.target, request.authority) == (
        b"POST",
        b"/a?b=1",
        b"API.x.localhost:8080",
    )
    head = request.head
    assert head.http11 and head.keep_alive and head.content_length == 5 and not head.chunked
    assert (b"X-Thing", b"x-thing", b"spaced value") in head.headers
    assert head.connection == {b"keep-alive", b"x-thing"}
    assert request.has_body and not request.websocket
    # X-Thing is named by Connection: hop-by-hop, not passed on.
    assert forwarded_headers(head) == [b"Host: API.x.localhost:8080\r\n"]


def test_parse_request_framing_and_versions() -> None:
    chunked = parse_request(b"PUT / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n").head
    assert chunked.chunked and chunked.content_length is None
    old = parse_request(b"GET / HTTP/1.0\r\n\r\n")
    assert not old.head.http11 and not old.head.keep_alive and old.authority is None
    assert parse_request(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").head.keep_alive
    assert not parse_request(
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    ).head.keep_alive
    same = parse_request(
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"
    )
    assert same.head.content_length == 3
    absolute = parse_request(b"GET http://Api.x.localhost:81 HTTP/1.1\r\nHost: other\r\n\r\n")
    assert absolute.authority == b"Api.x.localhost:81" and absolute.target == b"/"
    star = parse_request(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n")
    assert star.target == b"*"
    ws = parse_request(
        b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\n"
        b"Upgrade: WebSocket\r\n\r\n"
    )
    assert ws.websocket
    assert not parse_request(b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n").websocket
    assert parse_request(b"\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n").method == b"GET"


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /\r\n\r\n", 400),
        (b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/3.0\r\nHost: h\r\n\r\n", 505),
        (b"GET / FOO/1.1\r\nHost: h\r\n\r\n", 400),
        (b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET /\x7f HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET relative HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET http://u:p@h/ HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nBad Name: v\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nName : v\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\nb\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1e3\r\n\r\n", 400),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 501),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    ],
)
def test_parse_request_refuses_ambiguity(raw: bytes, status: int) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_request(raw)
    assert info.value.status == status


def test_parse_response() -> None:
    ok = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
    assert (ok.status, ok.reason, ok.head.content_length) == (200, b"OK", 2)
    assert ok.has_body(b"GET") and not ok.has_body(b"HEAD")
    bare = parse_response(b"HTTP/1.0 204\r\n\r\n")
    assert bare.reason == b"" and not bare.head.http11 and not bare.head.keep_alive
    assert not bare.has_body(b"GET")
    coded = parse_response(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 9\r\n\r\n"
    )
    assert coded.head.other_coding and not coded.head.chunked
    chunked = parse_response(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n"
    )
    assert chunked.head.chunked  # Transfer-Encoding wins over Content-Length
    for raw in [b"HTTP/1.1 20 OK\r\n\r\n", b"ICY 200 OK\r\n\r\n", b"HTTP/1.1 200 OK\r\nX\r\n\r\n"]:
        with pytest.raises(ProtocolError) as info:
            parse_response(raw)
        assert info.value.status == 502


def _reader(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=64 * 1024)
    reader.feed_data(data)
    reader.feed_eof()
    return reader


async def _collect(data: bytes, **kw: object) -> bytes:
    return b"".join([p async for p in body_pieces(_reader(data), timeout=1.0, **kw)])  # type: ignore[arg-type]


def test_body_pieces_decode_every_framing() -> None:
    assert asyncio.run(_collect(b"abcdef", length=4, chunked=False)) == b"abcd"
    assert asyncio.run(_collect(b"abcdef", length=None, chunked=False)) == b"abcdef"
    wire = chunk(b"hello ") + b"5;ext=1\r\nworld\r\n" + b"0\r\nTrailer: x\r\n\r\n"
    assert asyncio.run(_collect(wire, length=None, chunked=True)) == b"hello world"
    big = bytes(range(256)) * 1000
    assert asyncio.run(_collect(chunk(big) + b"0\r\n\r\n", length=None, chunked=True)) == big
    with pytest.raises(IncompleteBodyError):
        asyncio.run(_collect(b"abc", length=4, chunked=False))
    with pytest.raises(IncompleteBodyError):
        asyncio.run(_collect(b"5\r\nab", length=None, chunked=True))
    for bad in [b"zz\r\nab\r\n0\r\n\r\n", b"2\r\nabXX0\r\n\r\n", b"-1\r\n\r\n"]:
        with pytest.raises(ProtocolError):
            asyncio.run(_collect(bad, length=None, chunked=True))


@pytest.mark.parametrize(
    ("raw", "host"),
    [
        ("API.Codex.localhost", "api.codex.localhost"),
        ("api.codex.localhost.", "api.codex.localhost"),
        ("api.codex.localhost:8080", "api.codex.localhost"),
        ("api.codex.localhost.:8080", "api.codex.localhost"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("[::1]:8080", "[::1]"),
        ("", ""),
    ],
)
def test_normalize_host(raw: str, host: str) -> None:
    assert normalize_host(raw) == host


def test_validate_host() -> None:
    assert validate_host("API.codex.localhost.") == "api.codex.localhost"
    assert validate_host("localhost") == "localhost"
    for bad in ["", "a..b", "-a.b", "a b", "x:80", "1.2.3.4", "a/b", "é.b", "a" * 64 + ".b"]:
        with pytest.raises(UsageError):
            validate_host(bad)


def _row(host: str, project: str, environment: str, service: str = "api") -> RouteRow:
    return RouteRow(host, project, environment, service, "127.0.0.1", 4000, None, datetime.now(UTC))


def test_index_groups_and_escapes() -> None:
    rows = [
        _row("api-preview-8.codex.localhost", "codex", "preview-8"),
        _row("web-preview-8.codex.localhost", "codex", "preview-8", "<b>web</b>"),
        _row("api.codex.localhost", "codex", "production"),
        _row("api.other.localhost", "o&ther", "production"),
    ]
    own = pages.index(rows, port=8080).decode()  # the edge's own address: every route
    assert "&lt;b&gt;web&lt;/b&gt;" in own and "o&amp;ther" in own
    page = pages.index(rows, port=8080, unknown_host='"><script>x</script>.codex.localhost')
    page = page.decode()
    assert "<script>" not in page and "&quot;&gt;&lt;script&gt;" in page
    assert '<a href="http://api.codex.localhost:8080/">' in page
    assert "&lt;b&gt;web&lt;/b&gt;" in page
    assert page.index("<h2>codex</h2>") < page.index("<h3>preview-8</h3>")
    assert page.index("<h3>preview-8</h3>") < page.index("<h3>production</h3>")
    assert pages.route_url("api.codex.localhost", 80) == "http://api.codex.localhost/"
    empty = pages.index([], port=1).decode()
    assert "nothing is deployed" in empty
    error = pages.no_process(_row("h", "p<", "preview-8", "api&")).decode()
    assert "No process answers for service api&amp; of environment preview-8" in error
    assert "p&lt;" in error


def test_the_404_lists_only_the_zone_of_the_host_asked_for() -> None:
    rows = [
        _row("api.codex.localhost", "codex", "production"),
        _row("api-preview-8.codex.localhost", "codex", "preview-8"),
        _row("api.other.localhost", "other", "production"),
        _row("web.localhost", "top", "production", "web"),  # a project whose zone is a parent
    ]

    def listed(host: str) -> set[str]:
        return {r.host for r in pages.in_same_zone(rows, host)}

    codex = {"api.codex.localhost", "api-preview-8.codex.localhost"}
    assert listed("nope.codex.localhost") == codex
    assert listed("codex.localhost") == listed("a.b.codex.localhost") == listed("x.codex.localhost")
    assert listed("x.other.localhost") == {"api.other.localhost"}
    assert listed("x.localhost") == {"web.localhost"}  # only the most specific zone
    assert listed("evil.example") == listed("") == listed("localhost.evil") == set()
    page = pages.index(rows, port=80, unknown_host="x.other.localhost").decode()
    assert "api.other.localhost" in page and "codex" not in page and "web.localhost" not in page
    stranger = pages.index(rows, port=80, unknown_host="evil.example").decode()
    assert "None in its zone." in stranger
    assert not any(r.host in stranger or f"<h2>{r.project}</h2>" in stranger for r in rows)


def test_the_502_and_504_pages_name_no_upstream_address() -> None:
    row = RouteRow("api.codex.localhost", "codex", "production", "api", "10.1.2.3", 47311,
                   None, datetime.now(UTC))  # fmt: skip
    for page in (pages.no_process(row), pages.bad_upstream(row, "It broke off."),
                 pages.timeout(row, 5)):  # fmt: skip
        text = page.decode()
        assert "47311" not in text and "10.1.2.3" not in text
        assert "api" in text and "production" in text
