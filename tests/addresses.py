"""This machine's addresses for tests of listeners bound beyond loopback."""

from __future__ import annotations

import contextlib
import functools
import socket


@functools.cache
def machine_address() -> str | None:
    """An IPv4 address of this machine other than loopback that a socket can bind
    (its primary interface's, say); None on a machine with loopback only."""
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        stats = psutil.net_if_stats().get(name)
        if stats is not None and not stats.isup:
            continue
        for address in addresses:
            ours = address.family == socket.AF_INET and not address.address.startswith("127.")
            if ours and can_bind(address.address):
                return str(address.address)
    return None


@functools.cache
def can_bind(host: str) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return True
    return False
