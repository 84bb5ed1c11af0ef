"""HTTP/1.1 message heads and bodies for the edge, on asyncio streams.

Strict where a proxy must be (RFC 9112): a request whose framing is ambiguous
(Content-Length with Transfer-Encoding, differing Content-Lengths, a transfer
coding other than chunked, obsolete line folding, a space before the colon,
control characters) is refused with 400 rather than guessed at, so that the edge
and the service behind it never disagree about where a request ends.

Bodies are streamed in pieces of at most `PIECE` bytes; nothing here holds a
whole body unless it is small.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

MAX_HEAD = 64 * 1024
"""The largest request or response head accepted (status line and headers)."""
PIECE = 64 * 1024
"""How much of a body is read and written at a time."""
MAX_CHUNK_LINE = 4096

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",  # recomputed from the framing the edge uses
    }
)

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_FIELD = re.compile(rb"(" + _TOKEN + rb"):[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*")
_METHOD = re.compile(_TOKEN)
_TARGET = re.compile(rb"[\x21-\x7e]+")
_STATUS = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: ([\t\x20-\x7e\x80-\xff]*))?")
_DIGITS = re.compile(rb"[0-9]{1,18}")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")
# The headers whose values the edge reads; every other one is only passed along.
_NOTED = frozenset(
    {b"host", b"content-length", b"transfer-encoding", b"connection", b"upgrade", b"expect"}
)


class ProtocolError(Exception):
    """A message the edge cannot pass on; `status` is what a client is told."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class IncompleteBodyError(Exception):
    """The peer closed (or stalled) before the body it announced was complete."""


Header = tuple[bytes, bytes, bytes]
"""(name as received, lower-case name, value)."""


@dataclass(slots=True)
class Head:
    """What the edge needs of a request or response head."""

    http11: bool
    headers: list[Header]
    content_length: int | None = None
    chunked: bool = False
    other_coding: bool = False  # Transfer-Encoding present, chunked not last
    connection: frozenset[bytes] = frozenset()  # lower-case tokens of Connection
    noted: dict[bytes, bytes] = field(default_factory=dict)  # the last value of each

    @property
    def keep_alive(self) -> bool:
        if b"close" in self.connection:
            return False
        return self.http11 or b"keep-alive" in self.connection


@dataclass(slots=True)
class Request:
    method: bytes
    target: bytes
    head: Head
    authority: bytes | None  # Host, or the authority of an absolute-form target

    @property
    def has_body(self) -> bool:
        return self.head.chunked or bool(self.head.content_length)

    @property
    def websocket(self) -> bool:
        upgrade = self.head.noted.get(b"upgrade")
        return (
            self.method == b"GET"
            and upgrade is not None
            and b"upgrade" in self.head.connection
            and b"websocket" in _tokens(upgrade)
        )


@dataclass(slots=True)
class Response:
    status: int
    reason: bytes
    head: Head

    def has_body(self, method: bytes) -> bool:
        return not (method == b"HEAD" or self.status < 200 or self.status in (204, 304))


def _tokens(value: bytes) -> frozenset[bytes]:
    return frozenset(t.strip().lower() for t in value.split(b",") if t.strip())


def _parse_fields(lines: list[bytes], *, request: bool) -> Head:
    headers: list[Header] = []
    noted: dict[bytes, bytes] = {}
    lengths: set[bytes] = set()
    codings: list[bytes] = []
    connection: set[bytes] = set()
    hosts = 0
    for line in lines:
        match = _FIELD.fullmatch(line)
        if match is None:
            raise ProtocolError("malformed header line")
        name, value = match.groups()
        lname = name.lower()
        headers.append((name, lname, value))
        if lname in _NOTED:
            noted[lname] = value
            if lname == b"content-length":
                lengths.update(v.strip() for v in value.split(b","))
            elif lname == b"transfer-encoding":
                codings.extend(t.strip().lower() for t in value.split(b",") if t.strip())
            elif lname == b"connection":
                connection.update(_tokens(value))
            elif lname == b"host":
                hosts += 1
    head = Head(False, headers, connection=frozenset(connection), noted=noted)
    if hosts > 1:
        raise ProtocolError("more than one Host header")
    if codings:
        if lengths and request:
            raise ProtocolError("both Content-Length and Transfer-Encoding")
        if codings[-1] == b"chunked" and codings.count(b"chunked") == 1:
            if request and len(codings) > 1:
                raise ProtocolError("unsupported transfer coding", 501)
            head.chunked = True
        elif request:
            raise ProtocolError("unsupported transfer coding", 501)
        else:
            head.other_coding = True  # the body runs until the connection closes
    elif lengths:
        if len(lengths) != 1:
            raise ProtocolError("conflicting Content-Length values")
        (length,) = lengths
        if not _DIGITS.fullmatch(length):
            raise ProtocolError("invalid Content-Length")
        head.content_length = int(length)
    return head


def parse_request(raw: bytes) -> Request:
    """The request in `raw` (its head, ending with the blank line)."""
    lines = raw.lstrip(b"\r\n").split(b"\r\n")
    del lines[-2:]  # the blank line
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise ProtocolError("malformed request line")
    method, target, version = parts
    if version == b"HTTP/1.1":
        http11 = True
    elif version == b"HTTP/1.0":
        http11 = False
    elif re.fullmatch(rb"HTTP/[0-9]\.[0-9]", version):
        raise ProtocolError("unsupported HTTP version", 505)
    else:
        raise ProtocolError("malformed request line")
    if _METHOD.fullmatch(method) is None or _TARGET.fullmatch(target) is None:
        raise ProtocolError("malformed request line")
    head = _parse_fields(lines[1:], request=True)
    head.http11 = http11
    if head.chunked and not http11:
        raise ProtocolError("chunked request body in HTTP/1.0")
    authority = head.noted.get(b"host")
    if http11 and authority is None:
        raise ProtocolError("missing Host header")
    lowered = target[:8].lower()
    if lowered.startswith((b"http://", b"https://")):
        # Absolute form (what a client configured to use a proxy sends): the
        # authority in the target wins over Host, and the service gets the path.
        rest = target.split(b"://", 1)[1]
        slash = rest.find(b"/")
        authority = rest if slash < 0 else rest[:slash]
        target = b"/" if slash < 0 else rest[slash:]
        if b"@" in authority:
            raise ProtocolError("credentials in the request target")
    elif not target.startswith(b"/") and not (method == b"OPTIONS" and target == b"*"):
        raise ProtocolError("unsupported request target")
    return Request(method, target, head, authority)


def parse_response(raw: bytes) -> Response:
    lines = raw.split(b"\r\n")
    del lines[-2:]
    match = _STATUS.fullmatch(lines[0])
    if match is None:
        raise ProtocolError("malformed status line", 502)
    minor, status, reason = match.groups()
    try:
        head = _parse_fields(lines[1:], request=False)
    except ProtocolError as exc:
        raise ProtocolError(str(exc), 502) from None
    head.http11 = minor == b"1"
    return Response(int(status), reason or b"", head)


async def read_head(reader: asyncio.StreamReader) -> bytes:
    """The next head (through the blank line). IncompleteReadError at EOF (`partial`
    says whether anything came), ProtocolError(431) when it is too large."""
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise ProtocolError("request head too large", 431) from None


def forwarded_headers(head: Head, *, keep: frozenset[bytes] = frozenset()) -> list[bytes]:
    """The end-to-end header lines of `head` (hop-by-hop ones and those Connection
    names dropped, except the lower-case names in `keep`), ready to join."""
    drop = HOP_BY_HOP | head.connection
    if keep:
        drop = drop - keep
    return [
        b"%s: %s\r\n" % (name, value) for name, lname, value in head.headers if lname not in drop
    ]


async def _read(reader: asyncio.StreamReader, n: int, timeout: float) -> bytes:
    async with asyncio.timeout(timeout):
        return await reader.read(n)


async def body_pieces(
    reader: asyncio.StreamReader,
    *,
    length: int | None,
    chunked: bool,
    timeout: float,
) -> AsyncIterator[bytes]:
    """The body's bytes, decoded from its framing: `length` bytes, chunked, or (both
    unset) everything until EOF. IncompleteBodyError when it ends early or stalls for
    `timeout` seconds; ProtocolError for a malformed chunk."""
    try:
        if chunked:
            while True:
                async with asyncio.timeout(timeout):
                    line = await reader.readuntil(b"\r\n")
                if len(line) > MAX_CHUNK_LINE:
                    raise ProtocolError("chunk header too long")
                size_text = line[:-2].split(b";", 1)[0].strip(b" \t")
                if _HEX.fullmatch(size_text) is None:
                    raise ProtocolError("malformed chunk size")
                remaining = int(size_text, 16)
                if remaining == 0:
                    while True:  # trailers: read and dropped
                        async with asyncio.timeout(timeout):
                            trailer = await reader.readuntil(b"\r\n")
                        if trailer == b"\r\n":
                            return
                while remaining:
                    data = await _read(reader, min(remaining, PIECE), timeout)
                    if not data:
                        raise IncompleteBodyError("the peer closed inside a chunk")
                    remaining -= len(data)
                    yield data
                async with asyncio.timeout(timeout):
                    crlf = await reader.readexactly(2)
                if crlf != b"\r\n":
                    raise ProtocolError("malformed chunk end")
        elif length is not None:
            remaining = length
            while remaining:
                data = await _read(reader, min(remaining, PIECE), timeout)
                if not data:
                    raise IncompleteBodyError(f"the peer closed with {remaining} bytes to go")
                remaining -= len(data)
                yield data
        else:
            while True:
                data = await _read(reader, PIECE, timeout)
                if not data:
                    return
                yield data
    except asyncio.IncompleteReadError:
        raise IncompleteBodyError("the peer closed inside the body") from None
    except asyncio.LimitOverrunError:
        raise ProtocolError("chunk header too long") from None
    except TimeoutError:
        raise IncompleteBodyError(f"the body stalled for {timeout:g} s") from None


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
