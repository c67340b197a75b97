"""Review helper-33: the daemon's operations under faults (real daemons of the bank)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from .conftest import process_alive, wait_until
from .test_cli import Backstage, finish, session_processes, shut_down

pytestmark = pytest.mark.process


def _kill_session(sid: int | None) -> None:
    if sid:
        for pid in session_processes(sid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _sids(home: Path) -> set[int]:
    sids = set()
    for path in home.glob("daemon-*.json"):
        with contextlib.suppress(OSError, ValueError):
            sids.add(int(json.loads(path.read_text())["sid"]))
    return sids


def test_two_starts_at_once_on_one_home_leave_one_daemon_running(tmp_path: Path) -> None:
    """Two `backstage start` at once on one home and port: one starts, the other is refused,
    and the one that said it runs does run afterwards (the loser must not end it)."""
    for round_ in range(3):
        home = tmp_path / f"home-{round_}"
        home.mkdir(mode=0o700)
        backstage = Backstage(home)
        sids: set[int] = set()
        try:
            processes = [
                backstage.popen("start", "examples.bank:app", "--db", str(home / "bank.db"))
                for _ in range(2)
            ]
            results = [finish(p) for p in processes]
            sids = _sids(home)
            said = [(r.returncode, r.stdout, r.stderr) for r in results]
            assert sorted(r.returncode for r in results)[0] == 0, said
            assert sorted(r.returncode for r in results)[1] != 0, said
            state = backstage.state()
            assert process_alive(int(state["admin_pid"])), f"the daemon said to run is gone: {said}"
            loser = next(r for r in results if r.returncode != 0)
            assert (loser.returncode, "already runs" in loser.stderr) == (3, True), said
            opened = backstage.send("OpenAccount", {"account_id": "ann", "owner": "Ann"})
            assert opened["version"] == 1
        finally:
            shut_down(backstage) if (home / f"daemon-{backstage.port}.json").exists() else None
            for sid in sids:
                _kill_session(sid)
