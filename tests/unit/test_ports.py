"""Who holds a port: a listener, a bound UDP socket, or a connection's local end."""

from __future__ import annotations

import os
import socket

from branchline import ports


def test_a_listener_is_named_with_its_pid() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert not ports.is_free(port)
        held = ports.holder(port)
        assert held is not None and held.pid == os.getpid() and not held.connection
        assert held.describe().startswith(f"pid {os.getpid()} (")


def test_a_connections_local_end_is_named_as_a_connection() -> None:
    # A client's local port comes from the same numbers a server may be set to use:
    # binding it fails although nothing listens there.
    with socket.socket() as server, socket.socket() as client:
        server.bind(("127.0.0.1", 0))
        server.listen()
        client.connect(server.getsockname())
        accepted, _ = server.accept()
        with accepted:
            local = client.getsockname()[1]
            assert not ports.is_free(local)
            held = ports.holder(local)
            assert held is not None and held.connection and held.pid == os.getpid()
            assert held.describe().startswith(f"a connection of pid {os.getpid()} (")


def test_a_bound_udp_socket_is_named() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        assert not ports.is_free(port, udp=True)
        held = ports.holder(port, udp=True)
        assert held is not None and held.pid == os.getpid() and not held.connection


def test_a_free_port_has_no_holder() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert ports.is_free(port)
    assert ports.holder(port) is None
