"""What a peer without the secret can make a running daemon do (found by helper-30's review;
each test failed before its fix): idle connections that used up the admin's or a shard's
descriptors, a claimed frame buffered before its MAC could be checked, and processes that start
at once in a new home reading the secret file empty."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import re
import resource
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backstage_actors import _daemon, _security

from .conftest import wait_until
from .test_cli import APP, BACKSTAGE, ROOT, Backstage, shut_down

pytestmark = pytest.mark.process

FD_LIMIT = 1024  # the usual default soft limit of a login session on Linux


def _low_fd_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, hard))


@pytest.fixture
def daemon_1024(tmp_path: Path) -> Iterator[Backstage]:
    """A bank daemon started from a shell with the usual ``ulimit -n 1024``."""
    backstage = Backstage(tmp_path / "home")
    try:
        started = subprocess.run(
            [
                BACKSTAGE,
                "start",
                APP,
                "--db",
                str(backstage.database),
                "--port",
                str(backstage.port),
            ],
            cwd=ROOT,
            env=backstage.env(),
            preexec_fn=_low_fd_limit,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert started.returncode == 0, started.stderr
        backstage.send("OpenAccount", {"account_id": "rva", "owner": "A"})
        yield backstage
    finally:
        shut_down(backstage)


def hold_connections(port: int, count: int) -> list[socket.socket]:
    """Open ``count`` TCP connections to ``port`` and send nothing (no secret, no frame);
    stop early when the port refuses (nothing listens any longer)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 200), hard))
    held: list[socket.socket] = []
    for _ in range(count):
        sock = socket.socket()
        sock.settimeout(10)
        try:
            sock.connect(("127.0.0.1", port))
        except OSError:
            sock.close()
            break
        held.append(sock)
    return held


def closed_by_peer(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def admin_pid(backstage: Backstage) -> int:
    return int(
        json.loads((backstage.home / f"daemon-{backstage.port}.json").read_text())["admin_pid"]
    )


def test_idle_connections_without_the_secret_do_not_kill_the_daemon(
    daemon_1024: Backstage,
) -> None:
    """Idle TCP connections to the admin's port from a process that has no secret (a slow
    loris: connect, send nothing) used to pile up until the admin ran out of descriptors, failed
    to make a socket and exited: every process of the daemon died with it."""
    pid = admin_pid(daemon_1024)
    state = _daemon.DaemonState(daemon_1024.state())
    held = hold_connections(daemon_1024.port, FD_LIMIT + 100)
    try:
        assert _daemon.admin_alive(state), (
            f"the admin (pid {pid}) died of {len(held)} idle connections"
        )
        deposit = daemon_1024.send("Deposit", {"account_id": "rva", "amount": 5})
        assert deposit["version"] == 2
        # It closed the connections that never sent an authentic frame (all but a few).
        wait_until(
            lambda: sum(map(closed_by_peer, held)) >= len(held) - 100,
            what="the admin closing idle connections",
        )
    finally:
        for sock in held:
            sock.close()
    assert _daemon.admin_alive(state)


def shard_node(backstage: Backstage) -> dict[str, Any]:
    def find(node: dict[str, Any]) -> dict[str, Any] | None:
        if node.get("name") == "shard-0":
            return node
        return next((n for c in node.get("children", []) if (n := find(c))), None)

    node = find(backstage.json("tree"))
    assert node is not None, "no shard-0 in the tree"
    return node


def test_idle_connections_without_the_secret_do_not_kill_a_shard(daemon_1024: Backstage) -> None:
    """The same against a shard's own port: the shard process died (and was restarted)."""
    before = shard_node(daemon_1024)
    port = int(re.search(r":(\d+)\)", before["address"]).group(1))  # type: ignore[union-attr]
    held = hold_connections(port, FD_LIMIT + 100)
    try:
        deposit = daemon_1024.send("Deposit", {"account_id": "rva", "amount": 5})
        assert deposit["version"] == 2
        after = shard_node(daemon_1024)
        assert after["pid"] == before["pid"], f"the shard died of {len(held)} idle connections"
    finally:
        for sock in held:
            sock.close()


def test_a_peer_without_the_secret_cannot_make_the_admin_buffer_a_large_frame(
    daemon_1024: Backstage,
) -> None:
    """A frame's MAC can only be checked once the whole frame is in, so a peer that claims a
    frame of 200 MB used to make the admin buffer (and copy, chunk after chunk) all of it, on
    each of as many connections as it liked: memory and CPU of every process with a port."""
    claimed = 200 << 20
    chunk = b"\x80" * (1 << 20)
    sent = 0
    with socket.create_connection(("127.0.0.1", daemon_1024.port), 10) as sock:
        sock.settimeout(10)
        sock.sendall(b"%d>" % claimed)
        with contextlib.suppress(OSError):  # reset or broken pipe: refused
            while sent < 48 << 20:
                sock.sendall(chunk)
                sent += len(chunk)
        wait_until(lambda: closed_by_peer(sock), timeout=10, what="the admin closing it")
    assert sent < 16 << 20, (
        f"the admin took {sent >> 20} MiB of a frame from a peer without the secret"
    )
    assert daemon_1024.send("Deposit", {"account_id": "rva", "amount": 5})["version"] == 2


def _first_secret(home: str, barrier: Any, answers: Any) -> None:
    os.environ["BACKSTAGE_HOME"] = home
    os.environ.pop("BACKSTAGE_SECRET", None)
    os.environ.pop("BACKSTAGE_SECRET_FILE", None)
    barrier.wait()
    try:
        answers.put(_security.secret().hex())
    except Exception as exc:
        answers.put(f"error: {exc}")


def test_processes_that_start_at_once_in_a_new_home_all_get_the_one_secret(tmp_path: Path) -> None:
    """The first process creates the secret file; one that started at the same moment used to
    read it empty ("has 0 bytes; it needs at least 32") and fail to start or attach."""
    context = multiprocessing.get_context("fork")
    for round_ in range(60):
        home = tmp_path / f"home-{round_}"
        home.mkdir(mode=0o700)
        barrier, answers = context.Barrier(4), context.Queue()
        processes = [
            context.Process(target=_first_secret, args=(str(home), barrier, answers))
            for _ in range(4)
        ]
        for process in processes:
            process.start()
        got = [answers.get(timeout=30) for _ in processes]
        for process in processes:
            process.join(30)
        assert len(set(got)) == 1 and not got[0].startswith("error"), got
        assert bytes.fromhex((home / "secret").read_text()).hex() == got[0]
        assert stat.S_IMODE((home / "secret").stat().st_mode) == 0o600
        assert sorted(p.name for p in home.iterdir()) == ["secret"]
