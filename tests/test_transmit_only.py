"""Wakeups while an actor process only transmits.

Thespian's transports hold at most 20 messages in flight per process and queue the rest; at 950
queued the process enters "transmit-only" mode: it reads nothing and only waits for its
transmits to finish, until the queue is down to 780 (or the oldest message's 5 minutes are up).
A wakeup that came due meanwhile was handed to that loop, which has no use for it: it was lost.
A subscriber's slow poll and its next page are wakeups that arm the next one when they fire, so
one lost was a chain ended for good."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import pytest

from backstage_actors import EventStore, _thespian
from supervisors import walk

from .conftest import thespian_log_defs, wait_until
from .test_cli import frozen
from .transmit_only_domain import TxoFlooder, TxoSink, TxoTicked, TxoTicks, make_app

pytestmark = pytest.mark.process

#: More progress reports than the 20 in flight and the 950 queued that start transmit-only mode.
BACKLOG = 1_200


def _entered_transmit_only(pid: int, log: Path | None = None) -> bool:
    log = log or Path(os.environ["BACKSTAGE_HOME"]) / "thespian.log"
    try:
        text = log.read_text(errors="replace")
    except FileNotFoundError:
        return False
    return any(
        f" p{pid} " in line and "Entering tx-only mode" in line for line in text.splitlines()
    )


def test_a_subscriber_keeps_its_poll_after_transmit_only_mode(tmp_path: Path) -> None:
    # The bus is stopped (SIGSTOP) while the handler catches up, one event per page: its
    # reports to the bus pile up until its process enters transmit-only mode, and stays there
    # while the bus is stopped, past the handler's next slow poll. Before, that poll was lost,
    # and with it every later one: events stored without a notice to the bus (by another
    # process, here) were never handled.
    database = str(tmp_path / "txo.db")
    app = make_app(database)
    system = app.start(base="multiproc", log_defs=thespian_log_defs(str(tmp_path / "a.log")))
    store = EventStore(database)
    try:
        nodes = list(walk(system.tree()))
        bus = next(n["pid"] for n in nodes if n["kind"] == "events")
        handler = next(n["pid"] for n in nodes if n["name"] == TxoTicks.name)
        with frozen(bus):
            for start in range(0, BACKLOG, 100):
                store.append("txo-1", [TxoTicked(n) for n in range(start, start + 100)])
            wait_until(
                lambda: _entered_transmit_only(handler), timeout=60, what="transmit-only mode"
            )
            # The fault under test: the bus stays stopped past the handler's next poll (1 s).
            stopped_until = time.monotonic() + 1.5
            wait_until(lambda: time.monotonic() >= stopped_until, what="the stop's end")
        wait_until(
            lambda: store.checkpoint(TxoTicks.name) == BACKLOG, timeout=60, what="the backlog"
        )
        # Stored by another process, with no notice to the bus: only the poll finds it.
        [late] = store.append("txo-2", [TxoTicked(-1)])
        wait_until(
            lambda: store.checkpoint(TxoTicks.name) == late.position,
            timeout=10,
            what="the event only the poll finds",
        )
    finally:
        store.close()
        system.stop()


def test_a_wakeup_armed_before_transmit_only_mode_in_a_handler_comes_after_it(
    tmp_path: Path,
) -> None:
    # A handler arms a wakeup, then sends more than 970 messages to a stopped actor: its
    # process enters transmit-only mode inside that handler. Once the target runs again and the
    # handler returns, the wakeup (overdue by then) comes at once. Before, the transmit-only
    # runs left the transport's deadline at theirs: the loop that runs the handlers waited for
    # that, not for the wakeup (it came 300 s late, a transmit's limit).
    log = tmp_path / "t.log"
    system = _thespian.start_actor_system("multiproc", thespian_log=str(log))
    try:
        sink = system.createActor(TxoSink)
        sink_pid = system.ask(sink, "pid", 10)
        flooder = system.createActor(TxoFlooder)
        flooder_pid = system.ask(flooder, "pid", 10)
        assert isinstance(sink_pid, int) and isinstance(flooder_pid, int)
        with frozen(sink_pid):
            system.tell(flooder, ("flood", sink, 1_000))
            wait_until(
                lambda: _entered_transmit_only(flooder_pid, log),
                timeout=60,
                what="transmit-only mode",
            )
        answer = system.listen(timedelta(seconds=20))
    finally:
        system.shutdown()
    assert answer == "woke", "the wakeup did not come once the handler had returned"
