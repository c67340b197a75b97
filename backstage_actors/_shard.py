"""The shard actor: one supervised Thespian actor hosting many aggregates (see ``_cells``).

The router maps each stream id to one of a fixed pool of shards (:func:`shard_of`, a stable
hash); on multiproc each shard is a process, in-process there is one. A shard queues every
command it gets in its aggregate's cell. For commands that came by message it sends itself a
:class:`Round`: Thespian delivers it after every message that arrived before it, so the commands
that arrive together are decided together and their appends committed in one transaction
(``_writer``), before any answer leaves. Commands read from its lanes in one wake-up run their
round at once (unless a ``Round`` is on its way, which takes them too).

Clients that know where a stream lives send its commands straight to its shard, by message or
by the shard's lane (a local socket, see ``_lane``; one per shard), with the stream id: a shard
hands a command that is not its own to the router.

In a cluster a shard serves only the streams its member owns (the router's latest
:class:`~._placement.Placement`): a command that comes straight to it, by message or by lane,
for a stream it does not own goes back to the router (which forwards it to the owner), and on a
new placement it passivates every aggregate it no longer owns at once, handing their queued
commands to the router, the way a stopping shard does. A cell it serves for a stream it does
not own (forwarded by a member whose view differs) is passivated after its round. So a cell
never outlives its member's ownership: when the stream comes back, it is rebuilt from the store.

SIGKILL of a shard: its supervisor (the router) starts it again; its aggregates rebuild from the
store on their next command. Nothing acknowledged is lost: an answer leaves only after its
commit.
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from typing import Any

import attrs
from thespian.actors import WakeupMessage, WatchMessage

from supervisors import SupervisedActor

from . import _lane, _thespian
from ._cells import Answer, Cells, Work
from ._placement import Placement
from ._protocol import Appended, CommandStats, Execute, Executed, Listeners, Settings, ShardLoad
from ._shared import shared_store
from .router import Router

__all__ = ["ShardActor", "shard_name", "shard_of"]

REPORT_EVERY = 1.0  # seconds, at least, between two reports of a busy shard to the router


def log() -> logging.Logger:
    return logging.getLogger(__name__)


def shard_of(stream_id: str, shards: int) -> int:
    """The index of the shard that hosts ``stream_id`` (stable across processes and runs)."""
    return zlib.crc32(stream_id.encode()) % shards if shards > 1 else 0


def shard_name(index: int) -> str:
    """The router's name for its shard ``index`` (also the lane's stream name)."""
    return f"shard-{index}"


@attrs.frozen
class Round:
    """Sent by a shard to itself: decide, commit and answer what its cells have queued."""


class _Due:
    """Wakeup payload: a report or a sweep is due."""


class ShardActor(SupervisedActor):
    kind = "shard"

    def on_start(self) -> None:
        self.lanes: _lane.LaneServer | None = None
        self.settings: Settings = self.args["settings"]
        self.router: Router = self.args["router"]
        self.index: int = self.args["index"]
        self.listeners: list[Any] = list(self.args.get("listeners", []))
        self.placement: Placement | None = None  # a cluster member's (see _cluster)
        per_shard = -(-self.settings.max_live // max(1, self.settings.shards))
        self.cells = Cells(
            shared_store(self.settings),
            self.router,
            self.settings.max_retries,
            per_shard,
            self.settings.lifespan,
            limits=self.settings.limits,
            stops=self.settings.stops,
        )
        self.round_due = False
        self.wakeup_due = False
        self.reported = time.monotonic()
        self.rounds = 0
        self.lanes = self._open_lanes()
        self.lane_name = self.lanes.name if self.lanes is not None else None

    def _open_lanes(self) -> _lane.LaneServer | None:
        """Multiproc: a local socket for clients that know a stream of this shard."""
        if self.settings.base == "simple" or not _lane.available():
            return None
        try:
            system = _thespian.system_key(self)
            name = system and _lane.name_for(system, self.settings.database, shard_name(self.index))
            return _lane.LaneServer(name)
        except OSError as exc:
            log().warning("shard %d: no lane (%s); clients send by message", self.index, exc)
            return None

    def watched(self) -> list[int]:
        return self.lanes.filenos() if self.lanes is not None else []

    def on_exit(self) -> None:
        if self.lanes is not None:
            self.lanes.hang_up()

    def on_stop(self) -> None:
        """Stopped in order: what is queued is decided and answered first."""
        while self.cells.ready:
            self._round()
        if self.lanes is not None:
            self.lanes.hang_up()
        self._report()

    def describe(self) -> dict[str, Any]:
        node = {"shard": self.index, "rounds": self.rounds, **self.cells.describe()}
        # Where each aggregate's commands go, and the process that hosts it: its shard's.
        address, pid = str(self.myAddress), os.getpid()
        for aggregate in node["children"]:
            aggregate.update(address=address, pid=pid)
        node["telemetry"] = self.cells.stats.summary()
        if self.lanes is not None:
            node["lane"] = self.lanes.describe()
        return node

    # -- messages ---------------------------------------------------------------------------

    def receive(self, message: Any, sender: Any) -> None:
        if isinstance(message, Execute):
            self._take(message, message.reply_to or sender)
        elif isinstance(message, Round):
            self.round_due = False
            self._round()
        elif isinstance(message, WatchMessage):
            self._on_lanes(message.ready)
        elif isinstance(message, Listeners):
            self.listeners = list(message.listeners)
        elif isinstance(message, Placement):
            self._placed(message)
        elif isinstance(message, WakeupMessage) and isinstance(message.payload, _Due):
            self.wakeup_due = False
            self.cells.sweep(time.monotonic())
            self._report()
            self._schedule_wakeup()

    def _take(self, execute: Execute, reply_to: Any, by_lane: bool = False) -> None:
        """Queue the commands in their cells (a stream of another shard goes to the router);
        the round is for the caller to start when they came ``by_lane`` (see ``_on_lanes``)."""
        if execute.stream_id is not None and (
            shard_of(execute.stream_id, self.settings.shards) != self.index
            or (self.placement is not None and not self.placement.owns(execute.stream_id))
        ):
            if isinstance(reply_to, _lane.LaneConnection):
                self._not_here(reply_to)
            else:
                self.send(self.supervisor, Execute(execute.items, reply_to, execute.grouped))
            return
        errors = self.cells.submit(execute.items, reply_to)
        if errors:
            self._send_answers(errors)
        if by_lane:
            return
        if self.settings.base == "simple" and not self.round_due:
            # In-process a caller's whole message is here: its round needs no message more.
            self._round()
        elif self.cells.ready and not self.round_due:
            self.round_due = True
            self.send(self.myAddress, Round())

    def _on_lanes(self, ready: list[int]) -> None:
        """Take every request the lanes hold now, then run their round at once (unless a
        :class:`Round` is already on its way, which takes them too): the requests read in one
        go are what arrived together, and a message to itself would cost the round a trip
        through Thespian's transport."""
        if self.lanes is None:
            return
        for connection, request in self.lanes.ready(ready):
            if isinstance(request, Execute) and request.stream_id is not None:
                self._take(request, connection, by_lane=True)
            else:
                self._not_here(connection)
        if self.cells.ready and not self.round_due:
            self._round()

    def _not_here(self, connection: _lane.LaneConnection) -> None:
        """Answer a lane's request with nothing: its caller asks the router instead (and learns
        this system's shard count, see ``Executed.shards``)."""
        if self.lanes is not None:
            self.lanes.answer(connection, Executed([], shards=self.settings.shards))

    # -- a round ----------------------------------------------------------------------------

    def _round(self) -> None:
        """Decide, commit, answer (see ``_cells``); tell the event bus; go on if work is left."""
        self.rounds += 1
        before = self.cells.last_position
        answers = self.cells.run_round()
        if self.settings.base != "simple":  # (in-process its callers flush: see _courier)
            answers = self.cells.writer.on_disk(answers)
        self._send_answers(answers)
        if self.placement is not None:  # cells of streams not owned go once idle
            placement, cells = self.placement, self.cells.cells
            guests = {a[3] for a in answers if a[3] is not None and not placement.owns(a[3])}
            self.cells.drop([s for s in guests if s in cells and not cells[s].mailbox])
        if self.cells.last_position > before:
            for listener in self.listeners:
                self.send(listener, Appended(self.cells.last_position))
        if self.cells.ready and not self.round_due:
            self.round_due = True
            self.send(self.myAddress, Round())
        self._schedule_wakeup()

    def _placed(self, placement: Placement) -> None:
        """A new view: keep the cells this member still owns, unless its lease was lost
        meanwhile (a new epoch: others may have written any of them); an older view that
        arrives late is ignored."""
        old = self.placement
        if old is not None and placement.sent_at < old.sent_at:
            return
        self.placement = placement
        lost = old is not None and placement.epoch != old.epoch
        self._hand_over([s for s in self.cells.cells if lost or not placement.owns(s)])

    def _hand_over(self, stream_ids: list[str]) -> None:
        """Passivate these aggregates (no longer this member's); their queued commands go to
        the router, which forwards them to the owner (by lane: the caller asks the router)."""
        by_caller: dict[int, tuple[Any, list[Work]]] = {}
        for work in self.cells.drop(stream_ids):
            by_caller.setdefault(id(work.reply_to), (work.reply_to, []))[1].append(work)
        for reply_to, works in by_caller.values():
            if isinstance(reply_to, _lane.LaneConnection):
                self._not_here(reply_to)
            elif self.supervisor is not None:
                items = [work.item for work in works]
                self.send(self.supervisor, Execute(items, reply_to, len(items) > 1))
        if stream_ids:
            log().info("shard %d: %d aggregates moved away", self.index, len(stream_ids))

    def _send_answers(self, answers: list[Answer]) -> None:
        """One :class:`Executed` per caller; it names the shard as the stream's home when all
        its answers are of one stream, and by message as the home of a batch's streams."""
        callers: list[tuple[Any, list[tuple[str, Any]], set[str | None]]] = []
        for reply_to, request_id, answer, stream_id in answers:
            for caller in callers:
                if caller[0] is reply_to or caller[0] == reply_to:
                    break
            else:
                caller = (reply_to, [], set())
                callers.append(caller)
            caller[1].append((request_id, answer))
            caller[2].add(stream_id)
        for reply_to, results, streams in callers:
            stream = next(iter(streams)) if len(streams) == 1 else None
            by_lane = isinstance(reply_to, _lane.LaneConnection)
            # A lane's caller reaches the stream by the lane again; the shard's Thespian
            # address (a third of the answer's unpickling) is for callers by message.
            address = None if by_lane else self.myAddress
            if stream is not None:
                source: tuple[str, Any, str | None] | None = (stream, address, self.lane_name)
            else:  # (in-process, where the one shard hosts every stream, a batch comes here)
                source = None if by_lane else ("", address, None)
            message = Executed(results, source, self.cells.writer.durable_at, self.settings.shards)
            if by_lane:
                if self.lanes is not None:
                    self.lanes.answer(reply_to, message)
            elif reply_to is not None:
                self.send(reply_to, message)

    # -- reports ----------------------------------------------------------------------------

    def _schedule_wakeup(self) -> None:
        if self.wakeup_due:
            return
        lifespan = self.cells.shortest_lifespan
        wait = REPORT_EVERY if lifespan is None else min(REPORT_EVERY, max(0.05, lifespan / 2))
        if any(self.cells.meters.values()) or lifespan is not None:
            self.wakeup_due = True
            self.wakeupAfter(wait, _Due())

    def _report(self) -> None:
        """Tell the router this shard's counts (by aggregate type) and how many are live."""
        self.reported = time.monotonic()
        if self.supervisor is None:
            return
        for name, meter in self.cells.meters.items():
            if meter:
                self.send(self.supervisor, CommandStats(name, meter.take()))
        self.send(
            self.supervisor,
            ShardLoad(
                shard_name(self.index), self.cells.live, self.cells.passivated, self.cells.restarts
            ),
        )
