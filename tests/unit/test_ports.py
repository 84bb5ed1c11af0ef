"""Who holds a port: a listener, a bound UDP socket, or a connection's local end."""

from __future__ import annotations

import os
import socket

import pytest

from branchline import ports
from tests.addresses import can_bind, machine_address

EVERY_INTERFACE = "0.0.0.0"  # noqa: S104 (what is checked here)


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


def test_where_a_listener_is_reached_and_how_a_url_spells_it() -> None:
    assert ports.reachable(EVERY_INTERFACE) == "127.0.0.1" and ports.reachable("::") == "::1"
    assert ports.reachable("192.0.2.7") == "192.0.2.7" and ports.reachable("::1") == "::1"
    assert ports.url_host("::1") == "[::1]" and ports.url_host("127.0.0.1") == "127.0.0.1"
    assert ports.is_loopback("127.0.0.1") and ports.is_loopback("::1")
    assert not ports.is_loopback(EVERY_INTERFACE) and not ports.is_loopback("192.0.2.7")
    assert ports.is_every_interface(EVERY_INTERFACE) and ports.is_every_interface("::")
    assert not ports.is_every_interface("127.0.0.1")


def test_a_port_is_free_on_one_address_while_held_on_another() -> None:
    other = machine_address()
    if other is None:
        pytest.skip("this machine has no address other than loopback")
    with socket.socket() as server:
        server.bind((other, 0))
        server.listen()
        port = server.getsockname()[1]
        assert not ports.is_free(port, host=other)
        assert not ports.is_free(port, host=EVERY_INTERFACE)  # every interface includes it
        assert ports.is_free(port)  # loopback is another address
        held = ports.holder(port, host=other)
        assert held is not None and held.pid == os.getpid()


def test_an_ipv6_port_is_checked_on_ipv6() -> None:
    if not can_bind("::1"):
        pytest.skip("no IPv6 loopback here")
    with socket.socket(socket.AF_INET6) as server:
        server.bind(("::1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert not ports.is_free(port, host="::1")
