"""The router: which aggregate handles which command, and the actor that gets it there.

``Router`` is the one-line DSL of Commanded: ``router.dispatch([OpenAccount, Deposit], to=Account,
identity="account_id")``. ``RouterActor`` is a supervisor whose dynamic children are the aggregate
actors, one per stream: it starts them on first use, forwards each command to its aggregate (a
restarting aggregate gets the command when it is back), and stops the idle and the least recently
used ones so that a few hundred processes, not one per aggregate ever seen, stay alive.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import attrs
from thespian.actors import DeadEnvelope, WakeupMessage

from supervisors import Child, ChildAddress, ChildSpec, Envelope, Supervisor, WatchChildren

from ._aggregate_actor import TOUCH_EVERY, AggregateActor
from ._protocol import AppendFailed, Execute, Executed, Listeners, Settings, Touched
from .aggregate import Aggregate
from .command import CommandItem
from .errors import AggregateFailed, InvalidCommand, UnregisteredCommand
from .limits import DEFAULT_LIMITS, Limits, check_identity

__all__ = ["Route", "Router", "RouterActor"]


@attrs.frozen
class Route:
    command: type
    aggregate: type[Aggregate]
    identity: str
    lifespan: float | None = None


def _field_names(cls: type) -> list[str]:
    if attrs.has(cls):
        return [f.name for f in attrs.fields(cls)]
    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls)]
    raise TypeError(f"{cls.__name__} is not a command: use an attrs class or a dataclass")


class Router:
    """Command type → aggregate class and identity field."""

    def __init__(self) -> None:
        self.routes: dict[type, Route] = {}

    def dispatch(
        self,
        commands: type | Iterable[type],
        to: type[Aggregate],
        identity: str,
        lifespan: float | None = None,
    ) -> Router:
        """Route ``commands`` to aggregates of class ``to``, one per value of field ``identity``.

        ``lifespan`` is how many idle seconds an aggregate actor lives before it is stopped
        (passivated); None takes the application's default.
        """
        if not (isinstance(to, type) and issubclass(to, Aggregate)):
            raise TypeError(f"to= must be an Aggregate subclass, not {to!r}")
        for command in [commands] if isinstance(commands, type) else list(commands):
            if identity not in _field_names(command):
                raise ValueError(
                    f"{command.__name__} has no field {identity!r} to identify its {to.__name__}"
                )
            if command in self.routes:
                raise ValueError(
                    f"{command.__name__} is already routed to {self.routes[command].aggregate.__name__}"
                )
            self.routes[command] = Route(command, to, identity, lifespan)
        return self

    def route(self, command: Any) -> Route:
        route = self.routes.get(type(command))
        if route is None:
            raise UnregisteredCommand(f"no route for command {type(command).__name__}")
        return route

    def stream_of(self, command: Any, limits: Limits = DEFAULT_LIMITS) -> tuple[Route, str, str]:
        """``(route, stream_id, identity)`` for ``command``; errors name the field (an identity
        no database can store, or too long for ``limits``, is an :class:`InvalidCommand`)."""
        route = self.route(command)
        value = getattr(command, route.identity, None)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise InvalidCommand(
                f"{type(command).__name__}: identity field {route.identity!r} is missing or empty"
            )
        identity = str(value)
        check_identity(identity, f"{type(command).__name__}: $.{route.identity}", limits)
        return route, f"{route.aggregate.__name__}-{identity}", identity

    def command_class(self, name: str) -> type | None:
        """The routed command class called ``name`` (``Class`` or ``module:Class``), if any."""
        for command in self.routes:
            if name in (command.__name__, f"{command.__module__}:{command.__qualname__}"):
                return command
        return None

    @property
    def aggregates(self) -> list[type[Aggregate]]:
        return list(dict.fromkeys(route.aggregate for route in self.routes.values()))


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
        if message.name == "events":
            self.listeners = Listeners(
                [message.address] if message.address else [], self.listeners.store_actor
            )
        elif message.name == "store":
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
