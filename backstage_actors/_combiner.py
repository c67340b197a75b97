"""In-process dispatch from many threads: one queue into the actor system, answers by slot.

On ``simpleSystemBase`` the actors run inside the caller's ``tell()``, so only one thread at a
time may be inside the actor system. Rather than each caller taking turns with its own command
(one round, one commit and one flush each), callers put their commands in one queue; whichever
caller finds nobody serving it becomes the server: it takes **everything** queued, sends it into
the actor system as one batch (so the shard decides it in one round and commits it in one
transaction), and hands each caller its answers. Then every caller, the server included, waits
outside any lock for the flush of the commit its answers counted on (``durable_at``, see
``_writer``): one fdatasync covers the whole batch, and the next batch is decided meanwhile.

Invariants, one sentence each:

- one thread at a time runs the actor system (the server, holding the running system's lock);
- every queued command is in exactly one batch, and its caller gets exactly its own answers;
- no caller returns before the flush that covers the commit its answers counted on has ended
  (the caller does that wait itself, in ``RunningSystem._send``).

A call made from inside the actor system (a handler that dispatches, on the serving thread or
on a thread that holds the running system's lock for another reason, such as ``wait_for``) is
run at once, not queued: it would otherwise wait for itself, or for a server that waits for
its lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .command import CommandItem

__all__ = ["Combiner"]

#: Sends ``items`` into the actor system and gathers them: (answers in order, durable_at).
Run = Callable[[list[CommandItem], float, int], tuple[list[Any], int]]


class _Slot:
    """One caller's commands in the queue, and once served, their answers."""

    __slots__ = ("answers", "done", "durable_at", "error", "items", "timeout")

    def __init__(self, items: list[CommandItem], timeout: float) -> None:
        self.items = items
        self.timeout = timeout
        self.answers: list[Any] = []
        self.durable_at = 0
        self.error: BaseException | None = None
        self.done = False


class Combiner:
    """The queue of one in-process running system (see the module's docstring)."""

    def __init__(self, run: Run, inside: Callable[[], bool] = lambda: False) -> None:
        self._run = run
        self._inside = inside  # True on a thread that is inside the actor system already
        self._ready = threading.Condition(threading.Lock())
        self._queue: list[_Slot] = []
        self._server: int | None = None  # the thread serving the queue now, if any
        self.batches = 0  # served so far (for tests: fewer batches than calls means shared)

    def submit(
        self, items: list[CommandItem], timeout: float, batch_size: int
    ) -> tuple[list[Any], int]:
        """``items``' answers, in order, and the commit number they count on (0: none)."""
        me = threading.get_ident()
        if self._server == me or self._inside():  # from inside the actor system: run it now
            return self._run(items, timeout, batch_size)
        slot = _Slot(items, timeout)
        with self._ready:
            self._queue.append(slot)
            while self._server is not None and not slot.done:
                self._ready.wait()
            if not slot.done:
                self._server = me
                batch, self._queue = self._queue, []
        if not slot.done:
            try:
                self._serve(batch, batch_size)
            finally:
                with self._ready:
                    self._server = None
                    self._ready.notify_all()
        if slot.error is not None:
            raise slot.error
        return slot.answers, slot.durable_at

    def _serve(self, batch: list[_Slot], batch_size: int) -> None:
        """Run ``batch`` as one call; give each slot its share of the answers."""
        items = [item for slot in batch for item in slot.items]
        try:
            answers, durable_at = self._run(items, max(s.timeout for s in batch), batch_size)
        except BaseException as exc:  # (SystemNotRunning, ...): every caller hears of it
            for slot in batch:
                slot.error, slot.done = exc, True
            raise
        self.batches += 1
        start = 0
        for slot in batch:
            slot.answers = answers[start : start + len(slot.items)]
            slot.durable_at = durable_at
            slot.done = True
            start += len(slot.items)
