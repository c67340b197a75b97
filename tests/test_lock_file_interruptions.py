"""An interruption (Ctrl-C: a KeyboardInterrupt) that lands as a process takes one of the lock
file's locks (its turn to append, the flush lock) lets go of it: the process lives on, and every
other process's appends or flushes would otherwise wait for that lock for good (found by
helper-45's review of the write path: a stress run's rival writers hung on the flush lock)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from typing import Any

import pytest

from backstage_actors.store import EventStore

from .competing_writer_domain import CwrOpened


class LockInterrupted(KeyboardInterrupt):
    """Stands for Ctrl-C reaching the thread just as the lock was granted."""


# Another process: exit 0 if it can take the lock now, 1 if this test's process still holds it.
_PROBE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    if sys.argv[2] == "turn":
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    else:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 8, 16)
except BlockingIOError:
    sys.exit(1)
"""


@pytest.mark.parametrize("lock", ["turn", "flush"])
def test_an_interruption_as_a_lock_is_granted_leaves_it_to_the_other_processes(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, lock: str
) -> None:
    database = str(tmp_path / "events.db")
    with EventStore(database, shared_flush=True) as store:
        store.append("CwrAccount-a", [CwrOpened("a")], expected_version=0)
        name = "flock" if lock == "turn" else "lockf"
        real = getattr(fcntl, name)

        def granted_then_interrupted(fd: int, operation: int, *args: Any) -> Any:
            real(fd, operation, *args)
            if operation == fcntl.LOCK_EX:
                monkeypatch.setattr(fcntl, name, real)
                raise LockInterrupted

        monkeypatch.setattr(fcntl, name, granted_then_interrupted)
        with pytest.raises(LockInterrupted):
            store.append("CwrAccount-b", [CwrOpened("b")], expected_version=0)
        probe = subprocess.run(
            [sys.executable, "-c", _PROBE, os.path.realpath(database) + ".lock", lock],
            timeout=60,
            check=False,
        )
        assert probe.returncode == 0, f"this process kept the {lock} lock: the others wait for good"
        store.append("CwrAccount-c", [CwrOpened("c")], expected_version=0)  # (it goes on too)
