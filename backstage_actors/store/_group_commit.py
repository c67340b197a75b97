"""Group commit across the threads of one process, for the PostgreSQL recorder.

Appends that arrive while a commit is under way wait; the first of them then leads: it commits
them all in one transaction (one lock, one flush) and wakes the others with their outcomes.

A leader also **gathers** before it commits: the callers of the last group, and those that
were already waiting when it ended, are about; those not back yet are most likely encoding
their next append (the Python work of a caller, which the GIL serialises, takes longer than a
fast commit). Committing at once would send one append alone and the rest one commit later; so
the leader waits for that many, at most as long as the last commit took (never more than a
commit it saves) and never past :data:`MAX_GATHER`. Counting the ones already waiting matters:
a caller left out of a group once (it came back a moment late) would otherwise be left out for
good, every group one short of all of them. A lone caller never waits: it is all there is.
PostgreSQL's ``commit_delay`` with ``commit_siblings`` makes the same bet.

A commit's error is every member's; an interruption of the leader (``KeyboardInterrupt``) is
the leader's own, and the others of its group hear that their appends' outcome is unknown (a
:class:`StorageError`), as the in-process queue of ``_combiner`` tells its callers. A caller
interrupted while it waits leaves the queue, and passes on a lead handed to it. The leader
takes its group inside the block that hands it on, so no interruption leaves a group taken
and nobody leading.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime

from ..errors import StorageError
from ._appending import Prepared, Results

__all__ = ["MAX_GATHER", "GroupCommit"]

#: Seconds a leader waits at most for the callers of the last group to come back.
MAX_GATHER = 0.002

Commit = Callable[[Prepared, Results, datetime, str], None]

_INTERRUPTED = (
    "the thread leading this append's group commit was interrupted; it may or may not have "
    "been stored"
)


class _Waiting:
    """An append waiting for a group commit."""

    __slots__ = ("done", "error", "lead", "prepared", "results")

    def __init__(self, prepared: Prepared, results: Results) -> None:
        self.prepared = prepared
        self.results = results
        self.done = threading.Event()
        self.lead = False
        self.error: BaseException | None = None


class GroupCommit:
    """One per recorder: :meth:`write` commits the caller's append together with every other
    one waiting, through ``commit(prepared, results, recorded_at, stamp)``; a leader gathers
    for at most ``max_gather`` seconds."""

    def __init__(self, commit: Commit, max_gather: float = MAX_GATHER) -> None:
        self.commit = commit
        self.max_gather = max_gather
        self._changed = threading.Condition(threading.Lock())
        self._waiting: list[_Waiting] = []
        self._leading = False
        self._about = 1  # callers expected back: the last group, and who waited meanwhile
        self._last_took = 0.0
        self.groups = 0  # commits made (for benchmarks and tests)
        self.appends = 0  # appends they held
        self.gathers = 0  # times a leader waited for callers to come back

    def write(
        self, prepared: Prepared, results: Results, recorded_at: datetime, stamp: str
    ) -> None:
        mine = _Waiting(prepared, results)
        with self._changed:
            self._waiting.append(mine)
            if self._leading:
                if len(self._waiting) >= self._about:
                    self._changed.notify()  # a gathering leader has its group
            else:
                self._leading = mine.lead = True
        group: list[_Waiting] | None = None  # what this caller took to commit, as leader
        handed_out = False  # each member of it has its outcome
        started = time.monotonic()
        try:
            if not mine.lead:
                mine.done.wait()
                if not mine.lead:  # committed by another thread's transaction
                    if mine.error is not None:
                        raise mine.error
                    return
            self._gather()
            started = time.monotonic()
            with self._changed:
                group, self._waiting = self._waiting, []
            self._commit(group, recorded_at, stamp)
            handed_out = True
        finally:
            # One rule whatever interrupted it (KeyboardInterrupt) and where: a caller that took
            # no group leaves the queue; a group taken is handed on, and a member its leader
            # gave no outcome hears that it is unknown.
            if group is None:
                self._withdraw(mine)
            else:
                self._hand_out(group, handed_out, time.monotonic() - started)
        if mine.error is not None:
            raise mine.error

    def _hand_out(self, group: list[_Waiting], handed_out: bool, took: float) -> None:
        with self._changed:
            # (Before the group is woken: none of it can be waiting again, counted twice.)
            self._about, self._last_took = len(group) + len(self._waiting), took
            self.groups += 1
            self.appends += len(group)
            self._hand_on()
        for member in group:
            if not member.lead:
                if not handed_out and member.error is None:
                    member.error = StorageError(_INTERRUPTED)
                member.done.set()

    def _hand_on(self) -> None:
        """(Under the lock.) The lead goes to the first waiting, if any."""
        if self._waiting:  # the next leader: the first that arrived meanwhile
            self._waiting[0].lead = True
            self._waiting[0].done.set()
        else:
            self._leading = False

    def _withdraw(self, mine: _Waiting) -> None:
        """``mine``'s caller stopped waiting: out of the queue if no leader took it yet (one
        that did commits it for nobody); a lead handed to it goes to the next caller."""
        with self._changed:
            if mine in self._waiting:
                self._waiting.remove(mine)
                if mine.lead:
                    self._hand_on()

    def _gather(self) -> None:
        """(The leader.) Wait until the callers about have queued, or the gathering time ends."""
        with self._changed:
            if len(self._waiting) < self._about:
                self.gathers += 1
                deadline = time.monotonic() + min(self._last_took, self.max_gather)
                while len(self._waiting) < self._about:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._changed.wait(left)

    def _commit(self, group: list[_Waiting], recorded_at: datetime, stamp: str) -> None:
        prepared = [item for member in group for item in member.prepared]
        results = [result for member in group for result in member.results]
        error: Exception | None = None
        try:
            self.commit(prepared, results, recorded_at, stamp)
        except Exception as exc:  # every member's (an interruption is the leader's own: write)
            error = exc
        at = 0
        for member in group:
            member.results[:] = results[at : at + len(member.results)]
            at += len(member.results)
            member.error = error
