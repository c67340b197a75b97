"""In-process dispatch from many threads: one queue into the actor system, answers by slot.

On ``simpleSystemBase`` the actors run inside the caller's ``tell()``, so only one thread at a
time may be inside the actor system. Rather than each caller taking turns with its own command
(one round, one commit and one flush each), callers put their commands in one queue; whichever
caller finds nobody serving it becomes the server: it takes **everything** queued, sends it into
the actor system as one batch (so the shard decides it in one round and commits it in one
transaction), hands the serving to the oldest caller queued meanwhile, and then, outside any
lock the other callers wait on, waits for the flush of the commit the batch's answers counted on
(``durable_at``, see ``_writer``; one fdatasync covers every commit written before it began).
Only then does it hand each caller of its batch its answers: the next batch is decided while
this one is flushed.

Each caller waits on a lock of its own and is woken once: to serve, or with durable answers
(a shared condition would wake every waiting thread at every step, and on two cores those
wake-ups cost more than the work).

Invariants, one sentence each:

- one thread at a time runs the actor system (the server, holding the running system's lock);
- every queued command is in exactly one batch, and its caller gets exactly its own answers;
- no caller of a batch is woken before the flush that covers the commit its answers counted on
  has ended (or the answers became the flush's error);
- when a server is done serving, the oldest queued caller, if any, serves next (a caller
  interrupted while it waits leaves the queue, and passes on a serving handed to it);
- a waiting caller returns by its own deadline: still queued, it leaves the queue unsent (its
  commands "never ran"); taken into a batch meanwhile, it hears that they may or may not have
  run (``late``), unless that batch's answers are already there. Only a serving caller can
  overrun its deadline: it runs the actors on its own thread.

A call made from inside the actor system (a handler that dispatches, on the serving thread or
on a thread that holds the running system's lock for another reason, such as ``wait_for``) is
run at once, not queued: it would otherwise wait for itself, or for a server that waits for
its lock. It flushes before it returns, holding that lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .command import CommandItem
from .errors import BackstageError

__all__ = ["Combiner"]

#: Sends ``items`` into the actor system and gathers them: (answers in order, durable_at).
Run = Callable[[list[CommandItem], float, int], tuple[list[Any], int]]
#: Waits until commit ``durable_at`` is on disk; on failure, turns the answers into its error.
Flush = Callable[[int, list[Any]], None]
#: The answers of items whose caller's deadline passed: ``sent`` tells whether they were sent.
Late = Callable[[list[CommandItem], float, bool], list[Any]]


class _Slot:
    """One caller's commands in the queue, and once served and flushed, their answers."""

    __slots__ = ("answers", "error", "items", "serve", "serving", "timeout", "wake")

    def __init__(self, items: list[CommandItem], timeout: float) -> None:
        self.items = items
        self.timeout = timeout
        self.answers: list[Any] | None = None  # set once durable (or failed)
        self.error: BaseException | None = None
        self.serve = False  # this caller serves (it found nobody serving, or was handed it)
        self.serving = False  # its serve began: from then on the serve hands the serving on
        self.wake = threading.Lock()  # held until its caller may go on
        self.wake.acquire()


class Combiner:
    """The queue of one in-process running system (see the module's docstring)."""

    def __init__(
        self,
        run: Run,
        flush: Flush,
        late: Late,
        inside: Callable[[], bool] = lambda: False,
    ) -> None:
        self._run = run
        self._flush = flush
        self._late = late
        self._inside = inside  # True on a thread that is inside the actor system already
        self._mutex = threading.Lock()
        self._queue: list[_Slot] = []
        self._busy = False  # the serving is taken (by a thread, or handed to a queued slot)
        self._server: int | None = None  # the thread serving the queue now, if any
        self.batches = 0  # served so far (for tests: fewer batches than calls means shared)

    def submit(self, items: list[CommandItem], timeout: float, batch_size: int) -> list[Any]:
        """``items``' answers, in order, once the commit they count on is on disk."""
        me = threading.get_ident()
        if self._server == me or self._inside():  # from inside the actor system: run it now
            answers, durable_at = self._run(items, timeout, batch_size)
            if durable_at:
                self._flush(durable_at, answers)
            return answers
        slot = _Slot(items, timeout)
        try:
            with self._mutex:
                self._queue.append(slot)
                slot.serve = not self._busy
                self._busy = True
            # Woken once: to serve, or with its answers; unless its deadline passes first.
            wait = min(max(0.0, timeout), threading.TIMEOUT_MAX)
            if not slot.serve and not slot.wake.acquire(timeout=wait):
                late = self._give_up(slot)
                if late is not None:
                    return late
            if slot.serve:
                self._serve(me, slot, batch_size)
        except BaseException:  # (KeyboardInterrupt) before it served: leave the queue
            if not slot.serving:
                self._withdraw(slot)
            raise
        if slot.error is not None:
            raise slot.error
        assert slot.answers is not None
        return slot.answers

    def _serve(self, me: int, mine: _Slot, batch_size: int) -> None:
        """Run everything queued as one call, hand the serving on, flush, wake the batch (the
        last two whatever happens before them)."""
        batch = [mine]
        answers: list[Any] = []
        error: BaseException | None = None
        try:
            try:
                mine.serving = True  # (interrupted before this, the caller withdraws instead)
                with self._mutex:
                    batch, self._queue = self._queue, []
                self._server = me
                items = [item for slot in batch for item in slot.items]
                answers, durable_at = self._run(items, max(s.timeout for s in batch), batch_size)
                self.batches += 1
            finally:
                self._server = None
                self._hand_on(mine)  # (still queued only if interrupted before the batch)
            if durable_at:
                self._flush(durable_at, answers)
        except BaseException as exc:  # (SystemNotRunning, ...): every caller hears of it
            error = exc
        finally:
            self._settle(batch, mine, answers, error)

    @staticmethod
    def _settle(
        batch: list[_Slot], mine: _Slot, answers: list[Any], error: BaseException | None
    ) -> None:
        """Give each slot its answers (or the error) and wake every caller but the server. An
        interruption of the server (not an ``Exception``) is its own: the others hear that
        their commands' outcome is unknown."""
        unknown = None
        if error is not None and not isinstance(error, Exception):
            unknown = BackstageError(
                f"the thread serving this command was interrupted ({type(error).__name__}); "
                "it may or may not have been executed"
            )
        start = 0
        for slot in batch:
            if error is not None:
                slot.error = error if slot is mine or unknown is None else unknown
            else:
                slot.answers = answers[start : start + len(slot.items)]
                start += len(slot.items)
            if slot is not mine:
                slot.wake.release()

    def _give_up(self, slot: _Slot) -> list[Any] | None:
        """``slot``'s deadline passed while it waited: its answers if they came after all,
        None if it was handed the serving meanwhile (it serves), else late answers."""
        with self._mutex:
            if slot.serve:
                return None
            queued = slot in self._queue
            if queued:
                self._queue.remove(slot)
        if slot.error is not None:
            raise slot.error
        if slot.answers is not None:
            return slot.answers
        return self._late(slot.items, slot.timeout, not queued)

    def _withdraw(self, slot: _Slot) -> None:
        """``slot``'s caller stopped waiting: out of the queue if no server took it yet (a
        server that did answers nobody); a serving handed to it goes to the next caller."""
        with self._mutex:
            if slot in self._queue:
                self._queue.remove(slot)
            handed = slot.serve
        if handed:
            self._hand_on()

    def _hand_on(self, leaving: _Slot | None = None) -> None:
        """The serving goes to the oldest queued caller, if any (not ``leaving``)."""
        with self._mutex:
            if leaving is not None and leaving in self._queue:
                self._queue.remove(leaving)
            if not self._queue:
                self._busy = False
                return
            nxt = self._queue[0]
            nxt.serve = True
        nxt.wake.release()
