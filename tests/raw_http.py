"""HTTP/1.1 by hand over a socket, for what an HTTP client library will not do: send
only a head and wait for the answer, or keep streaming a body the server refused."""

from __future__ import annotations

import socket
import threading

MB = 1024 * 1024


def head(
    path: str, headers: dict[str, str], *, length: int | None = None, method: str = "POST"
) -> bytes:
    """A request head announcing `length` bytes (chunked when None)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: test"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    lines.append(framing)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def answer_of(sock: socket.socket, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """The response on `sock` (read until the server closes, or resets: bytes still
    coming in when it closes make its kernel reset), parsed."""
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            piece = sock.recv(65536)
        except ConnectionResetError:
            break
        if not piece:
            break
        data += piece
    raw_head, _, body = data.partition(b"\r\n\r\n")
    status_line, *fields = raw_head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
    return int(status_line.split(" ")[1]), headers, body


def head_only(
    port: int, path: str, headers: dict[str, str], length: int | None, method: str = "POST"
) -> tuple[int, dict[str, str], bytes]:
    """Send only a head announcing a body, and wait for the answer without any of it."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head(path, headers, length=length, method=method))
        return answer_of(sock)


def stream(
    port: int, path: str, headers: dict[str, str], total: int, *, chunked: bool,
    method: str = "POST",
) -> tuple[int, bytes, int]:  # fmt: skip
    """Send `total` bytes in 1 MB pieces (chunked, or under a Content-Length that says
    so) while reading the answer: (status, its body, bytes sent before it came)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sent = 0

    def send() -> None:
        nonlocal sent
        piece = b"x" * MB
        try:
            sock.sendall(head(path, headers, length=None if chunked else total, method=method))
            while sent < total:
                sock.sendall(b"%x\r\n%b\r\n" % (len(piece), piece) if chunked else piece)
                sent += len(piece)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server closed: what a refusal does

    sender = threading.Thread(target=send)
    sender.start()
    try:
        status, _headers, body = answer_of(sock, timeout=30)
    finally:
        sender.join(timeout=30)
        sock.close()
    return status, body, sent
