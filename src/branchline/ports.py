"""Local ports: whether one is free, and who holds it when it is not.

The holder is found as `ss -p` or `lsof -i` would, through psutil: the socket bound
to the port, and the process that has it open. Another user's process cannot be
looked into (on macOS, no process's sockets are listed to anyone but root): then
only the fact that the port is held is known.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from psutil._ntuples import pconn, sconn


@dataclass(frozen=True)
class Holder:
    """Who holds a port: the process, when this user may see it."""

    pid: int | None
    command: str | None
    # Not a listener: a connection whose local end took the port (TCP shares one
    # range of numbers between listeners and the local ends of connections).
    connection: bool = False

    def describe(self) -> str:
        if self.pid is None:
            what = "another program (one this user cannot look into)"
        else:
            what = f"pid {self.pid} ({self.command or 'command line unknown'})"
        return f"a connection of {what}" if self.connection else what


LOOPBACK = "127.0.0.1"


def family(host: str) -> socket.AddressFamily:
    """The socket family of an IP address (a bind address: validated by the config)."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    """Whether only this machine reaches a listener bound at `host`."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def is_every_interface(host: str) -> bool:
    """0.0.0.0 or ::: every address of the machine."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def reachable(host: str) -> str:
    """The address this machine reaches a listener bound at `host` on: loopback for
    0.0.0.0 or :: (they are no destination), else the address itself."""
    if is_every_interface(host):
        return "::1" if family(host) == socket.AF_INET6 else LOOPBACK
    return host


def url_host(host: str) -> str:
    """`host` as a URL spells it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def is_free(port: int, *, udp: bool = False, host: str = LOOPBACK) -> bool:
    """Whether this process could bind `port` on `host` now (TCP, or UDP)."""
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    with socket.socket(family(host), kind) as sock:
        # As servers bind: a port whose old connections linger in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def holder(port: int, *, udp: bool = False, host: str = LOOPBACK) -> Holder | None:
    """The process listening on (TCP) or bound to (UDP) `port`, else one whose
    connection's local end uses it; None when no socket of this network namespace
    holds it."""
    import psutil

    kind = "udp" if udp else "tcp"
    try:
        held = _on_port(((c.pid, c) for c in psutil.net_connections(kind)), port, udp=udp)
    except psutil.AccessDenied:
        # macOS lists the machine's sockets to root only: look into each process we
        # may (ours), and say only that the port is held when none of them holds it.
        held = _on_port(_sockets_of_each_process(kind), port, udp=udp)
        if not held:
            return None if is_free(port, udp=udp, host=host) else Holder(None, None)
    if not held:
        return None
    # A listener (a bound UDP socket) first: it is what a server set to use the port
    # collides with; the local end of a connection takes a number from the same range.
    listeners = [s for s in held if s.listening]
    chosen = listeners or held
    pid = next((s.pid for s in chosen if s.pid is not None), None)
    if pid is None:
        return Holder(None, None, not listeners)
    return Holder(pid, _command_line(pid), not listeners)


@dataclass(frozen=True)
class _Socket:
    pid: int | None  # None: not ours to look into
    listening: bool  # a TCP listener, or a bound (not connected) UDP socket


def _on_port(
    sockets: Iterable[tuple[int | None, sconn | pconn]], port: int, *, udp: bool
) -> list[_Socket]:
    return [
        _Socket(pid, not conn.raddr if udp else conn.status == "LISTEN")
        for pid, conn in sockets
        # A socket in TIME_WAIT belongs to no process and does not stop a server binding.
        if conn.laddr and conn.laddr.port == port and conn.status != "TIME_WAIT"
    ]


def _sockets_of_each_process(kind: str) -> Iterator[tuple[int | None, pconn]]:
    import psutil

    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):  # gone meanwhile, or not ours to see
            for conn in process.net_connections(kind):
                yield process.pid, conn


def _command_line(pid: int) -> str | None:
    from branchline.processes import command_line

    words = command_line(pid) or []
    return " ".join(words)[:200] or None
