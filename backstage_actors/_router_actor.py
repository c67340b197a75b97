"""The router actor: the supervisor whose dynamic children are the aggregate actors, one per stream.

It starts an aggregate on its first command, forwards each command to it (a restarting aggregate
gets the command when it is back), and stops the idle and the least recently used ones so that a
few hundred processes, not one per aggregate ever seen, stay alive. Which aggregate a command goes
to is the :class:`~backstage_actors.router.Router`'s answer.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from thespian.actors import DeadEnvelope, WakeupMessage

from supervisors import Child, ChildAddress, ChildSpec, Envelope, Supervisor, WatchChildren

from . import telemetry
from ._aggregate_actor import TOUCH_EVERY, AggregateActor
from ._names import EVENTS, STORE
from ._protocol import (
    AppendFailed,
    CommandStats,
    Execute,
    Executed,
    Listeners,
    Settings,
    Touched,
)
from .command import CommandItem
from .errors import AggregateFailed, InvalidCommand, UnregisteredCommand
from .router import Route, Router

__all__ = ["RouterActor"]


class RouterActor(Supervisor):
    """Supervises one actor per live aggregate; ``self.args`` holds the router and settings."""

    kind = "router"
    tree_window = 50
    describe_aggregates = False  # the router knows enough; asking hundreds of actors is slow

    def on_start(self) -> None:
        super().on_start()
        self.router: Router = self.args["router"]
        self.settings: Settings = self.args["settings"]
        self.listeners = Listeners([], None)
        self.recent: OrderedDict[str, float] = OrderedDict()
        self.lifespans: dict[str, float] = {}
        self.passivated = 0
        self.meters: dict[str, telemetry.CommandMeter] = {}  # aggregate type -> its counts
        self.sweep_due = False
        if self.supervisor is not None:
            self.send(self.supervisor, WatchChildren())
        # A command forwarded to an aggregate whose process just died (before the router heard
        # of it) comes back as a dead letter: route it again instead of losing it.
        self.handleDeadLetters(startHandling=True)

    def describe(self) -> dict[str, Any]:
        return {
            "live": sum(1 for c in self.children.values() if c.status in ("starting", "running")),
            "max_live": self.settings.max_live,
            "passivated": self.passivated,
            "aggregate_restarts": sum(c.restarts for c in self.children.values()),
            "commands": {name: meter.summary() for name, meter in self.meters.items()},
        }

    def describe_child(self, child: Child) -> bool:
        return self.describe_aggregates

    def tree_children(self) -> list[Child]:
        names = list(self.recent)[-self.tree_window :]
        return [self.children[n] for n in reversed(names) if n in self.children]

    # -- messages ---------------------------------------------------------------------------

    def handle(self, message: Any, sender: Any) -> None:
        if isinstance(message, Execute):
            self._execute(
                message
                if message.reply_to is not None
                else Execute(message.items, sender, message.grouped)
            )
        elif isinstance(message, Touched):
            if message.stream_id in self.recent:
                # In use, as far as the router can know, until its next Touched is due: an
                # aggregate busy by lane must not look older than one used once since.
                lifespan = self.lifespans.get(message.stream_id)
                every = min(TOUCH_EVERY, lifespan / 4) if lifespan else TOUCH_EVERY
                self.recent[message.stream_id] = time.monotonic() + every
                self.recent.move_to_end(message.stream_id)
        elif isinstance(message, CommandStats):
            self.meters.setdefault(message.aggregate, telemetry.CommandMeter()).add(message.delta)
        elif isinstance(message, ChildAddress):
            self._sibling_moved(message)
        elif isinstance(message, WakeupMessage):
            self._sweep()
        elif isinstance(message, DeadEnvelope):
            self._dead_letter(message.deadMessage)
        else:
            super().handle(message, sender)

    def lost(self, message: Any, sender: Any) -> None:
        """Handed back by an aggregate that is gone (passivated meanwhile): route it again."""
        again = _commands_of(message, sender)
        if again is not None:
            self._dead_letter(again)
        else:
            super().lost(message, sender)

    def _dead_letter(self, message: Any) -> None:
        if self._mode not in ("running", "starting"):
            return  # stopping: no aggregate is started again
        again = _commands_of(message.message if isinstance(message, Envelope) else message)
        if again is not None and all(
            type(item.command) in self.router.routes for item in again.items
        ):
            self._execute(again)

    def _execute(self, execute: Execute) -> None:
        groups: dict[str, list[CommandItem]] = {}
        routes: dict[str, tuple[Route, str]] = {}
        errors: list[tuple[str, Any]] = []
        for item in execute.items:
            try:
                route, stream_id, identity = self.router.stream_of(
                    item.command, self.settings.limits
                )
            except (UnregisteredCommand, InvalidCommand) as exc:
                errors.append((item.request_id, exc))
                continue
            groups.setdefault(stream_id, []).append(item)
            routes[stream_id] = (route, identity)
        if errors:
            self.send(execute.reply_to, Executed(errors))
        now = time.monotonic()
        for stream_id, items in groups.items():
            route, identity = routes[stream_id]
            self._ensure(stream_id, route, identity)
            # (a Touched may have told of use until later: keep the later of the two)
            self.recent[stream_id] = max(now, self.recent.get(stream_id, now))
            self.recent.move_to_end(stream_id)
            grouped = execute.grouped or len(execute.items) > 1
            message = Execute(items, execute.reply_to, grouped)
            child = self.children[stream_id]
            if child.status == "running":
                self.send(child.address, message)  # the hot path: no envelope, nothing held
            else:
                self.forward(stream_id, message, self.myAddress)

    def _ensure(self, stream_id: str, route: Route, identity: str) -> None:
        child = self.children.get(stream_id)
        if child is not None and child.status != "stopped":
            return
        self._make_room()
        lifespan = route.lifespan if route.lifespan is not None else self.settings.lifespan
        spec = ChildSpec(
            stream_id,
            AggregateActor,
            restart="transient",
            args={
                "settings": self.settings,
                "aggregate": route.aggregate,
                "stream_id": stream_id,
                "identity": identity,
                "store_actor": self.listeners.store_actor,
                "listeners": self.listeners.listeners,
                "lifespan": lifespan,
            },
        )
        self.start_child(spec)
        if lifespan:
            self.lifespans[stream_id] = lifespan
            self._schedule_sweep(lifespan)

    def _make_room(self) -> None:
        """Stop least recently used aggregates until one more fits under ``max_live``."""
        live = [n for n, c in self.children.items() if c.status in ("starting", "running")]
        excess = len(live) + 1 - self.settings.max_live
        if excess <= 0:
            return
        for name in sorted(self.recent, key=self.recent.__getitem__):  # least recent first
            if excess <= 0:
                break
            child = self.children.get(name)
            if child is not None and child.status in ("starting", "running"):
                self._passivate(name)
                excess -= 1

    def _passivate(self, name: str) -> None:
        self.passivated += 1
        self.recent.pop(name, None)
        self.lifespans.pop(name, None)
        self.terminate_child(name)

    # -- idle passivation -------------------------------------------------------------------

    def _schedule_sweep(self, lifespan: float) -> None:
        if not self.sweep_due:
            self.sweep_due = True
            self.wakeupAfter(min(5.0, max(0.05, lifespan / 2)))

    def _sweep(self) -> None:
        self.sweep_due = False
        now = time.monotonic()
        for name, last in list(self.recent.items()):
            lifespan = self.lifespans.get(name)
            if lifespan and now - last >= lifespan:
                child = self.children.get(name)
                if child is not None and child.status == "running" and not child.pending:
                    self._passivate(name)
        if self.lifespans:
            self._schedule_sweep(min(self.lifespans.values()))

    # -- lifecycle of aggregates ------------------------------------------------------------

    def child_ended(self, child: Child) -> None:
        """An aggregate stopped (passivated or crashed for good): commands that were waiting
        for it start a fresh instance instead of being lost."""
        self.recent.pop(child.name, None)
        self.lifespans.pop(child.name, None)
        waiting = child.bounced + child.pending
        child.bounced, child.pending = [], []
        if child.gave_up:
            # It crashed in its start twice in a row: its commands fail, rather than start it
            # again and again (a later command tries once more).
            failure = child.last_failure
            error = AggregateFailed(
                f"{child.name} cannot start: "
                + (f"{failure.error_type}: {failure.message}" if failure else "it crashed")
            )
            for message, sender in waiting:
                failed = _commands_of(message, sender)
                if failed is not None and failed.reply_to is not None:
                    self.send(
                        failed.reply_to, Executed([(i.request_id, error) for i in failed.items])
                    )
            return
        if waiting and self._mode in ("running", "starting"):
            for message, sender in waiting:
                again = _commands_of(message, sender)
                if again is not None:
                    self._execute(again)

    def _sibling_moved(self, message: ChildAddress) -> None:
        if message.name == EVENTS:
            self.listeners = Listeners(
                [message.address] if message.address else [], self.listeners.store_actor
            )
        elif message.name == STORE:
            self.listeners = Listeners(self.listeners.listeners, message.address)
        else:
            return
        for child in self.children.values():
            if child.status in ("starting", "running"):
                self.send(child.address, self.listeners)


def _commands_of(message: Any, sender: Any = None) -> Execute | None:
    """The commands a message for an aggregate that is gone carries, to be routed again: an
    ``Execute``, or pipelined appends that failed after their aggregate stopped (run afresh)."""
    if isinstance(message, Execute):
        return Execute(message.items, message.reply_to or sender, message.grouped)
    if isinstance(message, AppendFailed):
        return Execute([item for item, _, _ in message.failures], message.reply_to, True)
    return None
