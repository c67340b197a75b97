"""What authenticating every Thespian frame costs: P2-like traffic with it on and off, and the
cost per message in microseconds.

The same application on ``multiprocTCPBase`` twice in one run, once authenticated (as Backstage
always runs) and once on Thespian's own transport; 8 client processes each ask an echo actor
(every message a Thespian TCP frame and its ACK) and then dispatch commands (by lane where the
client knows the aggregate, as in P2). The per-message figure signs and checks a typical
command's frame against pickling it alone. Run as ``python -m bench.bench_auth [--quick]``.
"""

from __future__ import annotations

import logging
import multiprocessing
import pickle
import queue
import time
import timeit
from pathlib import Path
from typing import Any

from backstage_actors import _thespian
from backstage_actors._daemon import log_defs
from backstage_actors._thespian.auth import HEAD, FrameCodec
from backstage_actors.client import RunningSystem
from supervisors import start_supervisor

from . import _domain
from ._common import check, tempdir
from ._report import Row, main

__all__ = ["rows"]

log = logging.getLogger(__name__)
ECHO = "bench-auth-echo"


def client(
    port: int, database: str, authenticate: bool, index: int, count: int, barrier: Any, results: Any
) -> None:
    """One client process: ``count`` asks to the echo actor, then ``count`` commands."""
    try:
        actor_system = _thespian.attach(port, authenticate=authenticate)
        echo = actor_system.createActor(_domain.Echo, globalName=ECHO)
        system = _domain.make_app(database).attach(actor_system, database=database)
        actor_system.ask(echo, 0, 10.0)
        system.dispatch(_domain.Credit(f"a{index}", 1), timeout=30.0)
        barrier.wait(120)
        report = []
        start = time.time()
        for i in range(count):
            if actor_system.ask(echo, i, 10.0) != i:
                raise RuntimeError("the echo actor answered something else")
        report.append(("echo", count, start, time.time()))
        barrier.wait(120)
        start = time.time()
        for i in range(count):
            system.dispatch(_domain.Credit(f"a{(index + i) % 8}", 1), timeout=30.0)
        report.append(("dispatch", count, start, time.time()))
        results.put((index, report))
    except BaseException as exc:
        barrier.abort()
        results.put((index, f"{type(exc).__name__}: {exc}"))
        raise


def _run(directory: Path, authenticate: bool, clients: int, count: int) -> dict[str, float]:
    database = str(directory / f"auth-{authenticate}-{time.monotonic_ns()}.db")
    app = _domain.make_app(database)
    actor_system = _thespian.start_actor_system(
        "multiproc",
        log_defs=log_defs(str(directory / "auth.log")),
        authenticate=authenticate,
    )
    port = actor_system.capabilities["Admin Port"]
    settings = app.settings("multiproc", database)
    root = start_supervisor(actor_system, app.supervisor_spec(settings), name=app.root_name)
    system = RunningSystem(app, actor_system, root, "multiproc", settings, owns_system=True)
    context = multiprocessing.get_context("spawn")
    processes = []
    try:
        check(system.dispatch_many([_domain.OpenWallet(f"a{i}") for i in range(8)]))
        actor_system.createActor(_domain.Echo, globalName=ECHO)
        barrier, results = context.Barrier(clients), context.Queue()
        for index in range(clients):
            args = (port, database, authenticate, index, count, barrier, results)
            processes.append(context.Process(target=client, args=args))
            processes[-1].start()
        reports = []
        for _ in range(clients):
            try:
                index, report = results.get(timeout=300)
            except queue.Empty:
                raise RuntimeError("a client did not report within 300s") from None
            if isinstance(report, str):
                raise RuntimeError(f"client {index} failed: {report}")
            reports.append(report)
    finally:
        for process in processes:
            process.join(30)
            if process.is_alive():
                process.kill()
                process.join()
        system.stop()
    spans: dict[str, float] = {}
    for phase in ("echo", "dispatch"):
        entries = [entry for report in reports for entry in report if entry[0] == phase]
        total = sum(entry[1] for entry in entries)
        spans[phase] = total / (max(e[3] for e in entries) - min(e[2] for e in entries))
    log.info("authenticate=%s: %s", authenticate, spans)
    return spans


def _per_message(number: int = 20_000) -> tuple[float, float]:
    """µs that signing and checking add to a command's frame, and µs to pickle and unpickle it
    (the best of 5 rounds each: the machine is shared)."""
    codec = FrameCodec(bytes(32))
    message = ("ActorAddr-(T|:40000)", _domain.Credit("a1", 1))
    body = codec.dumps(message)

    def signed() -> None:
        codec.authentic(codec.dumps(message))

    def plain() -> None:
        pickle.loads(pickle.dumps(message))

    def unpickle() -> None:
        pickle.loads(memoryview(body)[HEAD:])

    def best(step: Any) -> float:
        return min(timeit.repeat(step, number=number, repeat=5)) / number * 1e6

    return best(signed) + best(unpickle) - best(plain), best(plain)


def rows(quick: bool = False) -> list[Row]:
    count = 100 if quick else 200
    # Off and on alternately, twice, the better of each: the machine is shared, and its load
    # drifts over a run more than authentication costs.
    best: dict[bool, dict[str, float]] = {False: {}, True: {}}
    with tempdir() as directory:
        for authenticate in (False, True, False, True):
            for phase, rate in _run(directory, authenticate, 8, count).items():
                best[authenticate][phase] = max(rate, best[authenticate].get(phase, 0.0))
    off, on = best[False], best[True]
    signed, plain = _per_message()
    return [
        Row(
            "P2-like dispatch, 8 client processes, authenticated",
            on["dispatch"],
            "commands/s",
            "the same without authentication",
            off["dispatch"],
            target="≥ 0.9x",
        ),
        Row(
            "ask to an echo actor, 8 client processes, authenticated",
            on["echo"],
            "asks/s",
            "the same without authentication",
            off["echo"],
            target="≥ 0.9x",
        ),
        Row(
            "authentication per frame (HMAC signed, then checked)",
            signed,
            "µs",
            "pickling and unpickling the same command",
            plain,
            higher_is_better=False,
        ),
    ]


if __name__ == "__main__":
    main(rows, __doc__)
