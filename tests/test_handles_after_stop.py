"""A program or a shell that still holds a handle on a daemon after ``backstage stop``: every
call fails at once with :class:`SystemNotRunning` saying the system is not running, instead of
waiting out its timeout (10 s for a dispatch, then "no answer; it may or may not have been
executed"). Real daemons of the bank, a real attached handle, a real shell session."""

from __future__ import annotations

import os
import socketserver
import threading
import time
from pathlib import Path
from unittest import mock

import pytest

from backstage_actors import SystemNotRunning
from backstage_actors.cli import EXIT_NOT_RUNNING, Session, run
from examples.bank.domain import Deposit, OpenAccount

from .test_cli import Backstage, attached_bank, shut_down

pytestmark = pytest.mark.process

PROMPT = 3.0  # seconds: "at once", on a loaded 2-core machine (the timeouts asked are 15 s)


def test_an_attached_handle_fails_at_once_after_backstage_stop(tmp_path: Path) -> None:
    with attached_bank(tmp_path) as (backstage, system):
        assert system.dispatch(OpenAccount("hs1", "H"), timeout=30).version == 1
        assert backstage.run("stop").returncode == 0

        calls = {
            "dispatch": lambda: system.dispatch(Deposit("hs1", 1), timeout=15),
            "new stream": lambda: system.dispatch(OpenAccount("hs2", "H"), timeout=15),
            "strong": lambda: system.dispatch(Deposit("hs1", 1), "strong", timeout=15),
            "tree": lambda: system.tree(timeout=15),
        }
        for what, call in calls.items():
            began = time.monotonic()
            with pytest.raises(SystemNotRunning, match="is not running") as raised:
                call()
            assert time.monotonic() - began < PROMPT, (what, raised.value)
            assert str(backstage.port) in str(raised.value)
        began = time.monotonic()
        [answer] = system.dispatch_many([Deposit("hs1", 1)], timeout=15)
        assert isinstance(answer, SystemNotRunning), answer
        assert time.monotonic() - began < PROMPT


def test_a_shell_session_fails_at_once_after_backstage_stop(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    backstage = Backstage(home)
    session = Session()
    port = str(backstage.port)
    try:
        assert backstage.start().returncode == 0
        with mock.patch.dict(os.environ, {"BACKSTAGE_HOME": str(home)}):
            opened = ["send", "OpenAccount", '{"account_id": "hs3", "owner": "S"}']
            assert run([*opened, "--port", port], session) == 0
            assert backstage.run("stop").returncode == 0

            deposit = ["send", "Deposit", '{"account_id": "hs3", "amount": 2}', "--timeout", "15"]
            for verb in (deposit, ["status"], ["tree"]):
                began = time.monotonic()
                assert run([*verb, "--port", port], session) == EXIT_NOT_RUNNING, verb
                assert time.monotonic() - began < PROMPT, verb
    finally:
        for _, system in session.attached.values():
            system.stop()
        shut_down(backstage)


class _Stranger(socketserver.ThreadingTCPServer):
    allow_reuse_address = True  # (the admin's port may still be in TIME_WAIT)
    daemon_threads = True


class _Banner(socketserver.BaseRequestHandler):
    """Another service on the port: greets every connection, then hangs up (as SSH does)."""

    def handle(self) -> None:
        self.request.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")


@pytest.mark.parametrize("stranger", ["banner", "hang-up"])
def test_a_handle_fails_at_once_when_another_process_took_the_port(
    tmp_path: Path, stranger: str
) -> None:
    """After ``backstage stop``, something else listens on the admin's port: a handle's calls
    fail at once too (before, whatever listened there passed for the admin, and each call waited
    out its whole timeout: tree() 14 s for timeout=8)."""
    handler = _Banner if stranger == "banner" else socketserver.BaseRequestHandler
    server: socketserver.TCPServer | None = None
    with attached_bank(tmp_path) as (backstage, system):
        try:
            assert system.dispatch(OpenAccount("hs4", "H"), timeout=30).version == 1
            assert backstage.run("stop").returncode == 0
            server = _Stranger(("127.0.0.1", backstage.port), handler)
            threading.Thread(target=server.serve_forever, daemon=True).start()

            calls = {
                "dispatch": lambda: system.dispatch(Deposit("hs4", 1), timeout=15),
                "new stream": lambda: system.dispatch(OpenAccount("hs5", "H"), timeout=15),
                "tree": lambda: system.tree(timeout=15),
            }
            for what, call in calls.items():
                began = time.monotonic()
                with pytest.raises(
                    SystemNotRunning, match="another process took the port"
                ) as raised:
                    call()
                assert time.monotonic() - began < PROMPT, (what, raised.value)
                assert str(backstage.port) in str(raised.value)
        finally:
            if server is not None:
                server.shutdown()
                server.server_close()
