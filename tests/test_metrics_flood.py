"""The Prometheus endpoint under a flood of connections, with real sockets against a real
application: at most ``MAX_CONNECTIONS`` are served at once (the rest are closed at once), a
client has ``READ_TIMEOUT`` seconds in all to send its request, and the application keeps
serving meanwhile. Before, every idle connection held a descriptor and a thread of the
process hosting the endpoint for ever, until that process ran out of descriptors."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backstage_actors.metrics import MAX_CONNECTIONS, READ_TIMEOUT
from examples.bank import make_app
from examples.bank.domain import OpenAccount

from .conftest import free_port, wait_until
from .test_metrics import scrape, value


def _accepted(port: int) -> int:
    """Connections this process accepted on ``port`` and still holds (from /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                inodes.add(f"socket:[{fields[9]}]")
    held = 0
    for entry in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            held += os.readlink(f"/proc/self/fd/{entry}") in inodes
    return held


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (its end of file, or a reset), waiting at most a
    little longer than the read deadline."""
    sock.settimeout(READ_TIMEOUT + 5.0)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@contextlib.contextmanager
def _bank(tmp_path: Path) -> Iterator[tuple[Any, int]]:
    port = free_port()
    with make_app(str(tmp_path / "bank.db")).start(metrics_port=port) as system:
        yield system, port


def test_a_flood_of_idle_connections_is_capped_timed_out_and_the_system_serves(
    tmp_path: Path,
) -> None:
    with _bank(tmp_path) as (system, port):
        threads = threading.active_count()
        flood = [socket.create_connection(("127.0.0.1", port)) for _ in range(4 * MAX_CONNECTIONS)]
        try:
            # The endpoint has taken every connection off its queue: served, or closed at once.
            wait_until(
                lambda: _accepted(port) <= MAX_CONNECTIONS and threading.active_count() > threads,
                timeout=10,
                what="the endpoint to take the flood",
            )
            assert _accepted(port) <= MAX_CONNECTIONS
            assert threading.active_count() <= threads + MAX_CONNECTIONS
            # The application itself keeps serving.
            assert system.dispatch(OpenAccount("flo", "Flo"), timeout=10).version == 1
            began = time.monotonic()
            assert all(_closed_by_server(sock) for sock in flood)
            assert time.monotonic() - began < READ_TIMEOUT + 5.0
        finally:
            for sock in flood:
                sock.close()
        wait_until(lambda: _accepted(port) == 0, timeout=10, what="the endpoint to let go")
        assert value(scrape(port), "backstage_up") == 1


def test_a_client_sending_a_byte_now_and_then_is_closed_at_the_read_deadline(
    tmp_path: Path,
) -> None:
    """A timeout per read would let it hold its connection (and its thread) for ever."""
    with _bank(tmp_path) as (_, port), socket.create_connection(("127.0.0.1", port)) as slow:
        began = time.monotonic()
        closed = False
        for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200:
            try:
                slow.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            slow.settimeout(0.5)
            try:
                if slow.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
            except ConnectionResetError:
                closed = True
                break
            if time.monotonic() - began > READ_TIMEOUT + 5.0:
                break
        assert closed, "the slow client still holds its connection"
        assert READ_TIMEOUT - 0.5 <= time.monotonic() - began < READ_TIMEOUT + 3.0


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_the_endpoint_still_answers_a_scrape_on_either_family(tmp_path: Path, host: str) -> None:
    from backstage_actors.metrics import serve

    if host == "::1" and not socket.has_ipv6:
        pytest.skip("no IPv6")
    with make_app(str(tmp_path / "bank.db")).start() as system:
        try:
            server = serve(system, 0, host)
        except OSError as exc:  # (a machine without ::1)
            pytest.skip(f"cannot bind {host}: {exc}")
        try:
            with socket.create_connection((host, server.port), timeout=10) as sock:
                sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
            assert answer.startswith(b"HTTP/1.0 200"), answer[:100]
            assert b"backstage_up 1.0" in answer
        finally:
            server.close()
