"""A multiproc handle's endpoints and its look at the admin (``_courier``): each thread keeps one
guarded endpoint; the look at whether the admin still runs is one connection. Real daemons of the bank, a real listener on the port."""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from backstage_actors import _courier
from examples.bank.domain import OpenAccount

from .test_cli import attached_bank

pytestmark = pytest.mark.process


def _accepted(listener: socket.socket) -> int:
    """How many connections wait in ``listener``'s queue (each accepted and closed)."""
    listener.setblocking(False)
    count = 0
    with contextlib.suppress(BlockingIOError):
        while True:
            listener.accept()[0].close()
            count += 1
    return count


def test_the_look_at_the_admin_is_one_connection(tmp_path: Path) -> None:
    """``check_admin`` (after every second a call waits without an answer) connected twice:
    once to see whether anything listens, once more to probe the secret. A listener that
    accepts and says nothing (an admin too busy to read) is not taken for a gone system."""
    with attached_bank(tmp_path) as (backstage, system):
        assert system.dispatch(OpenAccount("ep1", "E"), timeout=30).version == 1
        assert backstage.run("stop").returncode == 0
        with socket.socket() as silent:
            silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            silent.bind(("127.0.0.1", backstage.port))
            silent.listen(16)

            system._courier.check_admin()  # no answer in time: busy, not gone (no error)

            assert _accepted(silent) == 1


def test_each_thread_keeps_one_guarded_endpoint(tmp_path: Path) -> None:
    """``endpoint()`` runs for every command: it built a new guard of the endpoint each time."""
    with attached_bank(tmp_path) as (_, system):
        courier = system._courier
        with courier.endpoint() as first, courier.endpoint() as second:
            assert first is second
            assert isinstance(first, _courier._Guarded)
        seen: list[Any] = []

        def twice() -> None:
            for _ in range(2):
                with courier.endpoint() as endpoint:
                    seen.append(endpoint)

        worker = threading.Thread(target=twice)
        worker.start()
        worker.join()
        assert seen[0] is seen[1]
        assert seen[0] is not first
