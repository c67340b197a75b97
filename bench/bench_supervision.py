"""Supervision benchmarks: restart latency after SIGKILL and restart throughput, each against raw
Thespian on the same actor system. Run as ``python -m bench.bench_supervision [--quick]``."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from thespian.actors import Actor, ActorExitRequest, ActorSystem

import supervisors as sv

from ._report import Row, main

__all__ = ["Pinger", "PlainActor", "rows"]

log = logging.getLogger(__name__)
LOG_FILE = os.path.join(tempfile.gettempdir(), f"bench-supervision-{os.getpid()}.log")


class Pinger(sv.SupervisedActor):
    """Answers ``"pid"`` with its process id and ``"ping"`` with ``"pong"``; ``"crash"`` raises."""

    def receive(self, message: Any, sender: Any) -> None:
        if message == "crash":
            raise RuntimeError("asked to crash")
        if message == "pid":
            self.send(sender, os.getpid())
        elif message == "ping":
            self.send(sender, "pong")


class PlainActor(Actor):
    """A bare Thespian actor: the floor a supervised restart is compared with."""

    def receiveMessage(self, message: Any, sender: Any) -> None:
        if message == "ping":
            self.send(sender, "pong")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _system(base: str) -> Iterator[Any]:
    # Crash tracebacks go to the file: in this process (simpleSystemBase) or via Thespian's logger.
    supervision = logging.getLogger("supervisors")
    handler = logging.FileHandler(LOG_FILE)
    supervision.addHandler(handler)
    supervision.propagate = False
    if base == "simpleSystemBase":
        system = ActorSystem(base, transientUnique=True)
    else:
        to_file = {"class": "logging.FileHandler", "filename": LOG_FILE}
        log_defs = {"version": 1, "handlers": {"file": to_file}, "root": {"handlers": ["file"]}}
        system = ActorSystem(base, {"Admin Port": _free_port()}, log_defs, transientUnique=True)
    try:
        yield system
    finally:
        system.shutdown()
        supervision.removeHandler(handler)
        handler.close()
        supervision.propagate = True


def _ask(system: Any, address: Any, message: Any) -> Any:
    if (reply := system.ask(address, message, 5.0)) is None:
        raise RuntimeError(f"no reply to {message!r} from {address}")
    return reply


def _one_worker(max_restarts: int, within: float) -> sv.SupervisorSpec:
    return sv.SupervisorSpec("one_for_one", max_restarts, within, [sv.ChildSpec("w", Pinger)])


def _restart_after_kill(n: int) -> Row:
    timings: list[float] = []
    floor: list[float] = []
    with _system("multiprocTCPBase") as system:
        root = sv.start_supervisor(system, _one_worker(n + 1, 3600.0))
        for _ in range(n):
            old = sv.whereis(system, root, "w")
            os.kill(_ask(system, old, "pid"), signal.SIGKILL)
            start = time.perf_counter()
            deadline = start + 30.0
            while True:
                new = sv.whereis(system, root, "w")
                if new not in (None, old) and _ask(system, new, "ping") == "pong":
                    break
                if time.perf_counter() > deadline:
                    raise RuntimeError("the worker was not restarted within 30s")
                time.sleep(0.001)
            timings.append((time.perf_counter() - start) * 1000)
        for _ in range(n):
            start = time.perf_counter()
            plain = system.createActor(PlainActor)
            _ask(system, plain, "ping")
            floor.append((time.perf_counter() - start) * 1000)
            system.tell(plain, ActorExitRequest())
        sv.stop_supervisor(system, root)
    log.info("restart after SIGKILL: min %.1f max %.1f ms", min(timings), max(timings))
    figure = f"restart after SIGKILL (multiproc, median of {n})"
    peer = "raw Thespian createActor + ask"
    median = statistics.median
    return Row(figure, median(timings), "ms", peer, median(floor), higher_is_better=False)


def _restart_rate(m: int) -> Row:
    with _system("simpleSystemBase") as system:
        root = sv.start_supervisor(system, _one_worker(10**9, 1.0))
        start = time.perf_counter()
        for _ in range(m):
            system.tell(root, sv.Forward("w", "crash"))
        # Each crash answered its sender (us) with a Failure. Drain them with listen(0): a listen
        # that finds no pending send sleeps until the next wakeup (tree's 30s timer) even when
        # replies are already queued, so tree() behind 2000 stale replies would take 30s.
        failures = 0
        while system.listen(0) is not None:
            failures += 1
        # simpleSystemBase runs every send inside tell(): the restarts are all done by now.
        restarts = sv.tree(system, root, timeout=30.0)["children"][0]["restarts"]
        elapsed = time.perf_counter() - start
        if restarts != m or failures != m:
            raise RuntimeError(f"{restarts} restarts and {failures} failures for {m} crashes")
        start = time.perf_counter()
        for _ in range(m):
            system.tell(system.createActor(PlainActor), ActorExitRequest())
        peer_elapsed = time.perf_counter() - start
        sv.stop_supervisor(system, root)
    figure = "restarts per second (simpleSystemBase)"
    peer = "raw Thespian createActor + ActorExitRequest"
    return Row(figure, m / elapsed, "restarts/s", peer, m / peer_elapsed, higher_is_better=True)


def rows(quick: bool = False) -> list[Row]:
    """Both figures; ``quick`` runs fewer iterations."""
    log.info(
        "actor logs (crash tracebacks included) go to %s (kept only if a figure fails)", LOG_FILE
    )
    found = [_restart_after_kill(10 if quick else 50), _restart_rate(300 if quick else 2000)]
    with contextlib.suppress(FileNotFoundError):
        os.remove(LOG_FILE)
    return found


if __name__ == "__main__":
    main(rows, __doc__)
