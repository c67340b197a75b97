"""The metrics endpoint on other hosts than 127.0.0.1: an IPv6 address, a host name, one that does
not resolve. The endpoint itself binds any address family (as prometheus_client's did); the check
at start that its port is free must too, and must say what is wrong with a host it cannot use."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest

from backstage_actors import BackstageError, _thespian
from examples.bank import make_app

pytestmark = pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 here")


def ipv6_listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET6)
    sock.bind(("::1", 0))
    sock.listen()
    return sock


def free_ipv6_port() -> int:
    with socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::1", 0))
        return int(sock.getsockname()[1])


def test_the_port_probe_knows_ipv6() -> None:
    with ipv6_listener() as taken:
        port = taken.getsockname()[1]
        assert _thespian.port_in_use(port, "::1")
    assert not _thespian.port_in_use(port, "::1")


def test_metrics_served_on_an_ipv6_address(tmp_path: Path) -> None:
    port = free_ipv6_port()
    app = make_app(str(tmp_path / "bank.db"))
    with (
        app.start(metrics_port=port, metrics_host="::1"),
        urllib.request.urlopen(f"http://[::1]:{port}/metrics", timeout=10) as response,
    ):
        assert b"backstage_up 1.0" in response.read()


def test_a_taken_ipv6_metrics_port_is_refused_at_start(tmp_path: Path) -> None:
    with ipv6_listener() as taken:
        port = taken.getsockname()[1]
        with pytest.raises(BackstageError, match=r"the metrics port ::1:\d+ is in use"):
            make_app(str(tmp_path / "bank.db")).start(metrics_port=port, metrics_host="::1")


def test_a_metrics_host_that_does_not_resolve_is_named(tmp_path: Path) -> None:
    with pytest.raises(BackstageError, match=r"no-such-host\.invalid") as refused:
        make_app(str(tmp_path / "bank.db")).start(
            metrics_port=free_ipv6_port(), metrics_host="no-such-host.invalid"
        )
    assert "metrics" in str(refused.value)
