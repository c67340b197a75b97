"""What the processes of a daemon started by ``backstage start`` hold: their own descriptors,
none of the starting command's (its transport's listening socket, its start lock, the log
and /dev/null it pointed fds 0-2 at). Read from /proc of every process of a real daemon."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from .conftest import free_port
from .test_cli import Backstage, shut_down

pytestmark = pytest.mark.process


def _descriptors(pid: int) -> dict[int, str]:
    """fd -> what it is (``readlink`` of /proc/PID/fd/N), for one process."""
    found = {}
    with contextlib.suppress(OSError):
        for entry in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                found[int(entry.name)] = os.readlink(entry)
    return found


def _listening_inodes() -> set[str]:
    """Socket inodes of every listening TCP socket of this machine."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A":  # LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    return inodes


def test_each_daemon_process_holds_only_its_own_listening_socket_and_files(
    tmp_path: Path,
) -> None:
    """Before: every process of the daemon (admin, logger, every actor) held the listening
    socket of the `backstage start` that forked the admin (the transport it waits on for the
    admin's answer), its `.start` lock file, and another descriptor of the log: the starter's
    port stayed bound for the daemon's life, and any of its processes could accept
    connections meant for the starter. Thespian's logger also held the admin's listening
    socket (Thespian closes it in the actors it forks, not in its logger)."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    backstage = Backstage(home)
    try:
        started = backstage.start("--metrics-port", str(free_port()))
        assert started.returncode == 0, started.stderr
        pids = backstage.processes()
        assert len(pids) >= 5, pids
        listening = _listening_inodes()
        holders: dict[str, list[int]] = {}
        log = str(home / f"daemon-{backstage.port}.log")
        logging: list[int] = []  # processes with the log open on more than fds 1 and 2
        for pid in pids:
            held = _descriptors(pid)
            for what in held.values():
                if what in listening:
                    holders.setdefault(what, []).append(pid)
            assert not any(what.endswith(".start") for what in held.values()), (pid, held)
            if [fd for fd, what in held.items() if what == log] != [1, 2]:
                logging.append(pid)

        assert len(logging) <= 1, logging  # Thespian's logger process: its file handler
        shared = {inode: owners for inode, owners in holders.items() if len(owners) > 1}
        assert not shared, f"listening sockets held by several processes: {shared}"
        # Each process listens on its transport's port (the metrics actor on its port too).
        assert len(holders) >= len(pids), (holders, pids)
    finally:
        shut_down(backstage)
