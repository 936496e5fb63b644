"""tests/servers.py's own promises, where a broken helper would make other tests flaky rather than fail."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests import servers


def test_free_port_skips_a_port_the_kernel_offers_again(monkeypatch: pytest.MonkeyPatch) -> None:
    first = servers.free_port()
    real = servers.unused_port

    def kernel() -> Iterator[int]:
        yield first  # released, so the kernel may well pick it again
        yield first
        while True:
            yield real()

    offers = kernel()
    monkeypatch.setattr(servers, "unused_port", lambda: next(offers))

    assert servers.free_port() != first


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = [servers.free_port() for _ in range(100)]

    assert len(set(ports)) == len(ports)
    for port in ports[-3:]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_xdist_workers_take_ports_from_ranges_of_their_own() -> None:
    ranges = [servers.own_ports(n, 3) for n in range(3)]
    assert sum(len(r) for r in ranges) == len(set().union(*ranges))  # no port in two ranges
    assert min(r.start for r in ranges) >= 1024
    assert max(r.stop for r in ranges) <= 32768  # no ephemeral port
    if servers.XDIST_WORKER is not None:  # this run is a worker: what it hands out is in its range
        assert all(servers.free_port() in servers._OWN_PORTS for _ in range(20))
