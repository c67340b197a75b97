"""``backstage top`` against a real daemon: driven in a pseudo-terminal, and as a plain snapshot
when its output is not a terminal."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisors import walk

from .conftest import wait_until
from .test_cli import BACKSTAGE, ROOT, Backstage, frozen, one_error_line, shut_down

pytestmark = pytest.mark.process

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-B]|\x1b[=>78]")


class Terminal:
    """``backstage top`` on the slave side of a pty; everything it draws, ANSI removed."""

    def __init__(self, backstage: Backstage) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 60, 160, 0, 0))
        env = backstage.env() | {"TERM": "xterm-256color", "COLUMNS": "160", "LINES": "60"}
        self.process = subprocess.Popen(
            [BACKSTAGE, "top", "--port", str(backstage.port)],
            cwd=ROOT,
            env=env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )
        os.close(slave)
        self.master = master
        self._raw = bytearray()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: the other side is closed
                return
            if not chunk:
                return
            self._raw.extend(chunk)

    def text(self, since: int = 0) -> str:
        return ANSI.sub("", bytes(self._raw[since:]).decode("utf-8", "replace"))

    def mark(self) -> int:
        return len(self._raw)

    def shows(self, pattern: str, since: int = 0) -> bool:
        return re.search(pattern, self.text(since)) is not None

    def press(self, key: bytes) -> None:
        os.write(self.master, key)

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self._reader.join(5)
        os.close(self.master)


@contextlib.contextmanager
def daemon(home: Path) -> Iterator[Backstage]:
    backstage = Backstage(home)
    try:
        started = backstage.start()
        assert started.returncode == 0, started.stderr
        yield backstage
    finally:
        shut_down(backstage)


def shard_of(backstage: Backstage, stream_id: str) -> tuple[str, int]:
    """The name and process id of the shard hosting ``stream_id``."""
    shard = next(
        n
        for n in walk(backstage.json("tree"))
        if n["kind"] == "shard" and any(c["name"] == stream_id for c in n["children"])
    )
    return shard["name"], int(shard["pid"])


def test_top_in_a_terminal_shows_the_tree_counts_restarts_and_quits(tmp_path: Path) -> None:
    with daemon(tmp_path) as backstage:
        backstage.send("OpenAccount", {"account_id": "ada", "owner": "Ada"})
        for amount in (1, 2, 3):
            backstage.send("Deposit", {"account_id": "ada", "amount": amount})
        assert backstage.run("send", "Withdraw", '{"account_id": "ada", "amount": 99}').returncode
        terminal = Terminal(backstage)
        try:
            # The tree, the aggregate, the subscribers, and the counts: 4 ok, 1 rejected.
            wait_until(lambda: terminal.shows(r"Account-ada \[aggregate\] running"), 30)
            assert terminal.shows(r"router \[router\] running\s+live 1\s+passivated 0")
            wait_until(lambda: terminal.shows(r"Account\s*│[^│]*│\s*4\s*│\s*1\s*│\s*0\s*│"), 30)
            # The projection reads on its own schedule: wait for it to reach the 4 events.
            wait_until(
                lambda: terminal.shows(r"balances\s*│\s*projection\s*│\s*running\s*│\s*4\s*│\s*0"),
                30,
                what="the projection at position 4 in top",
            )

            # A killed shard is restarted by the router: top says so.
            mark = terminal.mark()
            shard, pid = shard_of(backstage, "Account-ada")
            os.kill(pid, signal.SIGKILL)
            wait_until(
                lambda: terminal.shows(shard + r"[^\n]*restarts 1 \(restarted just now\)", mark),
                20,
                what="the restart in top",
            )

            # The daemon goes away: top says so and keeps waiting.
            assert backstage.run("stop").returncode == 0
            mark = terminal.mark()
            wait_until(lambda: terminal.shows(r"no daemon answers on port", mark), 20)
            assert terminal.process.poll() is None

            terminal.press(b"q")
            assert terminal.process.wait(10) == 0
        finally:
            terminal.close()


def test_top_without_a_terminal_prints_one_snapshot(tmp_path: Path) -> None:
    with daemon(tmp_path) as backstage:
        backstage.send("OpenAccount", {"account_id": "bo", "owner": "Bo"})

        def snapshot() -> subprocess.CompletedProcess[str] | None:
            # A shard reports its command counts to the router up to a second after the command:
            # an earlier snapshot has no row for it yet.
            taken = backstage.run("top")
            assert taken.returncode == 0, taken.stderr
            counted = re.search(r"Account\s*│[^│]*│\s*1\s*│\s*0\s*│\s*0\s*│", taken.stdout)
            return taken if counted else None

        result = wait_until(snapshot, 30, interval=0.5, what="the command's count in top")
        assert "Account-bo [aggregate] running" in result.stdout
        assert "\x1b[" not in result.stdout  # plain: no colours, no cursor movement


def test_top_without_a_daemon_is_one_error_line(tmp_path: Path) -> None:
    result = Backstage(tmp_path).run("top")
    assert result.returncode == 3
    assert "no backstage daemon runs on port" in one_error_line(result)


def test_top_names_a_part_that_does_not_answer_keeps_drawing_and_quits_at_once(
    tmp_path: Path,
) -> None:
    # Before, with the event bus stopped (SIGSTOP) top said "running" and "(no subscribers)",
    # drew once every 6 s (each sample waited out the tree's 5 s), and `q` pressed meanwhile
    # took 2.5 to 4 s to quit.
    with daemon(tmp_path) as backstage:
        bus = next(n["pid"] for n in walk(backstage.json("tree")) if n["kind"] == "events")
        with frozen(bus):
            terminal = Terminal(backstage)
            try:
                wait_until(lambda: terminal.shows(r"backstage:bank degraded"), 30)
                assert terminal.shows(
                    rf"not answering: events \[events\] pid {bus} \(its subscribers are not shown\)"
                )
                assert terminal.shows(r"\(the event bus does not answer\)")
                # The next sample waits on the bus: the view is drawn meanwhile, and q quits.
                mark = terminal.mark()
                wait_until(lambda: terminal.shows(r"asking the tree again \([1-4]s\)", mark), 20)
                began = time.monotonic()
                terminal.press(b"q")
                assert terminal.process.wait(10) == 0
                assert time.monotonic() - began < 2.0  # (it took 2.5 to 4 s)
            finally:
                terminal.close()

            snapshot = backstage.run("top", "--json")
        assert snapshot.returncode == 0, snapshot.stderr
        report = json.loads(snapshot.stdout)
        assert report["status"] == "degraded"
        assert report["not_answering"] == [{"name": "events", "kind": "events", "pid": bus}]
        assert json.loads(backstage.run("top", "--json").stdout)["status"] == "running"
