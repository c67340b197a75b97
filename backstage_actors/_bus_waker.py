"""Commits of other processes and hosts wake the subscribers of an in-process application.

On the multiproc bases the event bus LISTENs on PostgreSQL itself: Thespian watches the
connection's socket for it (``EventsSupervisor.watched``). On simpleSystemBase nothing runs
between the caller's calls, so nobody would watch that socket: another host's appends would wait
for the caller's next call and the subscribers' slow poll. :class:`BusWaker` is a thread of the
caller's process that watches it instead and, on a commit, tells the bus ``Appended(position)``
through the running system (taking its turn like any calling thread).

It skips the NOTIFYs of this process's own shared store: the shards append through that store and
announce their commits to the bus themselves (a second announcement would cost a lock and a
query per commit and change nothing). Any other writer wakes it, in this process or elsewhere.
A broken listening connection is opened again every second; once it is back the bus hears the
last position, which covers the commits made while nobody listened.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from typing import Any

from ._names import EVENTS
from ._protocol import Appended
from ._shared import locate, shared_store
from .errors import BackstageError, SystemNotRunning
from .store import listen

__all__ = ["BusWaker"]

log = logging.getLogger(__name__)

RELISTEN_INTERVAL = 1.0  # seconds between attempts to open a broken listening connection


class BusWaker:
    """Tells the event bus of ``system`` (a ``RunningSystem`` on simpleSystemBase and a
    PostgreSQL store) about every commit other writers make; :meth:`close` stops it."""

    def __init__(self, system: Any) -> None:
        self.system = system
        self.database: str = system.settings.database
        self.ignore: str | None = getattr(shared_store(system.settings).recorder, "origin", None)
        self.listener: Any = None
        self.bus: Any = None
        self._stop_read, self._stop_write = os.pipe()
        self._closed = False
        self._listen()
        self.thread = threading.Thread(target=self._run, name="backstage-bus-waker", daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop the thread and close its connection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        os.write(self._stop_write, b"x")
        if self.thread is not threading.current_thread():
            self.thread.join(10.0)
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        os.close(self._stop_read)
        os.close(self._stop_write)

    def _listen(self) -> bool:
        try:
            self.listener = listen(self.database)
        except BackstageError as exc:
            log.warning("cannot listen for commits (%s); trying again in 1s", exc)
            return False
        return True

    def _run(self) -> None:
        missed = False  # listening again: commits may have happened meanwhile
        while True:
            watched = [self._stop_read]
            if self.listener is not None:
                watched.append(self.listener.fileno())
            timeout = RELISTEN_INTERVAL if self.listener is None else None
            ready, _, _ = select.select(watched, [], [], timeout)
            if self._stop_read in ready:
                return
            if self.listener is None:
                missed = self._listen()
                if not missed:
                    continue
            try:
                position = self.listener.drain(self.ignore)
                if missed and not position:
                    position = self.listener.last_position()
            except Exception as exc:
                log.warning("the listening connection broke (%s); listening again", exc)
                self.listener.close()
                self.listener = None
                continue
            missed = False
            if position and not self._tell(position):
                return

    def _tell(self, position: int) -> bool:
        """Tell the bus ``Appended(position)``; False once the system is gone."""
        try:
            with self.system._endpoint() as endpoint:
                if self.bus is None:
                    self.bus = locate(
                        endpoint, self.system.root, EVENTS, 5.0, "the application has no event bus"
                    )
                endpoint.tell(self.bus, Appended(position))
        except SystemNotRunning:
            return False
        except Exception as exc:  # the bus restarting, a system shutting down: the poll covers it
            log.warning("cannot tell the event bus of a commit: %s", exc)
            self.bus = None
        return True
