"""``backstage stop --timeout T`` ends within T (plus the command's own start-up), whatever
hangs: T is a deadline for the whole stop, not for each of its phases. Before, the drain
waited T, Thespian's shutdown 10 s more, the wait for the processes T more and the kills
5 s more: ``--timeout 4`` with a frozen shard took 19 s."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from supervisors import walk

from .conftest import process_alive
from .test_cli import Backstage, port_open, session_processes, shut_down

pytestmark = pytest.mark.process

STARTUP = 2.5  # seconds: the `backstage` command's own start-up on a loaded 2-core machine


@pytest.mark.parametrize("frozen", [("shard",), ("supervisor", "shard", "bus", "store")])
def test_stop_timeout_bounds_the_whole_stop(tmp_path: Path, frozen: tuple[str, ...]) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    backstage = Backstage(home)
    try:
        assert backstage.start().returncode == 0
        sid = backstage.state()["sid"]
        # Processes that answer nothing and ignore SIGTERM until SIGKILL ends them.
        pids = [n["pid"] for n in walk(backstage.json("tree")) if n["kind"] in frozen]
        assert pids
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)

        began = time.monotonic()
        stopped = backstage.run("stop", "--timeout", "4")
        took = time.monotonic() - began

        assert stopped.returncode == 0, stopped.stderr
        assert took < 4 + STARTUP, took
        assert session_processes(sid) == []
        assert not any(process_alive(pid) for pid in pids)
        assert not port_open(backstage.port)
    finally:
        shut_down(backstage)


def test_stop_refuses_a_timeout_that_is_not_positive(tmp_path: Path) -> None:
    backstage = Backstage(tmp_path)
    for bad in ("0", "-1", "nan"):
        refused = backstage.run("stop", "--timeout", bad)
        assert refused.returncode == 2, refused.stderr
        assert "--timeout must be a positive number of seconds" in refused.stderr
