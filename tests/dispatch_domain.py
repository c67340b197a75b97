"""The domain the dispatch tests run: counters that misbehave on request, a snapshotting tally,
and middleware that records or halts.

Module-level on purpose: on multiprocTCPBase every actor is a forked process that unpickles these
classes by reference (module path + name), so they must be importable, never defined in a test.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import attrs

from backstage_actors import (
    Aggregate,
    Application,
    BackstageError,
    Middleware,
    Pipeline,
    Router,
)

# -- commands -------------------------------------------------------------------------------


@attrs.frozen
class Add:
    counter_id: str
    amount: int


@attrs.frozen
class Reject:
    """``execute`` raises: a rejection."""

    counter_id: str
    reason: str


@attrs.frozen
class Explode:
    """Produces an event that ``apply`` cannot take: a crash of the aggregate."""

    counter_id: str


@attrs.frozen
class Nothing:
    """Accepted, but produces no event."""

    counter_id: str


@attrs.frozen
class AddTwice:
    """Two events from one command."""

    counter_id: str
    amount: int


@attrs.frozen
class Smuggle:
    """Produces an event with a field cattrs/JSON cannot hold (an arbitrary object)."""

    counter_id: str


@attrs.frozen
class Stall:
    """``execute`` blocks for ``seconds`` before accepting."""

    counter_id: str
    seconds: float


@attrs.frozen
class Unrouted:
    """An attrs command no route knows."""

    counter_id: str


@attrs.frozen
class Count:
    tally_id: str
    amount: int


class NotACommand:
    """Neither attrs nor a dataclass."""

    def __init__(self, counter_id: str) -> None:
        self.counter_id = counter_id


# -- events ---------------------------------------------------------------------------------


@attrs.frozen
class Added:
    counter_id: str
    amount: int
    total: int


@attrs.frozen
class Exploded:
    counter_id: str


class Opaque:
    """An arbitrary object: picklable, but nothing JSON can represent."""


@attrs.frozen
class Line:
    label: str
    blob: Any


@attrs.frozen
class Smuggled:
    counter_id: str
    lines: list[Line]


@attrs.frozen
class Counted:
    tally_id: str
    amount: int
    total: int


# -- aggregates -----------------------------------------------------------------------------


class Counter(Aggregate):
    def __init__(self) -> None:
        self.total = 0

    def execute(self, command: Any) -> Any:
        match command:
            case Add(counter_id, amount):
                return Added(counter_id, amount, self.total + amount)
            case AddTwice(counter_id, amount):
                return [
                    Added(counter_id, amount, self.total + amount),
                    Added(counter_id, amount, self.total + 2 * amount),
                ]
            case Reject(_, reason):
                raise ValueError(reason)
            case Explode(counter_id):
                return Exploded(counter_id)
            case Nothing():
                return []  # no events, on purpose
            case Smuggle(counter_id):
                return Smuggled(counter_id, [Line("fine", 1), Line("bad", Opaque())])
            case Stall(counter_id, seconds):
                time.sleep(seconds)
                return Added(counter_id, 0, self.total)
        raise TypeError(f"Counter cannot handle {type(command).__name__}")

    def apply(self, event: Any) -> None:
        match event:
            case Added(amount=amount):
                # From the amount, not the event's total: a foreign event must change the state.
                self.total += amount
            case Exploded():
                raise RuntimeError("Exploded cannot be applied")


class Tally(Aggregate):
    snapshot_every = 5
    snapshot_version = 1

    def __init__(self) -> None:
        self.total = 0

    def execute(self, command: Any) -> Any:
        if isinstance(command, Count):
            return Counted(command.tally_id, command.amount, self.total + command.amount)
        raise TypeError(f"Tally cannot handle {type(command).__name__}")

    def apply(self, event: Any) -> None:
        if isinstance(event, Counted):
            self.total += event.amount


# -- middleware -----------------------------------------------------------------------------


class Denied(BackstageError):
    """What :class:`Gate` halts with."""


class Recorder(Middleware):
    """Records every hook call: ``(hook, command class name, result or error)``.

    Middleware runs in the dispatching process, so a plain list is enough on every base.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self._lock = threading.Lock()

    def before_dispatch(self, pipeline: Pipeline) -> None:
        pipeline.metadata["seen_by"] = "recorder"
        with self._lock:
            self.calls.append(("before", type(pipeline.command).__name__, None))

    def after_dispatch(self, pipeline: Pipeline) -> None:
        with self._lock:
            self.calls.append(("after", type(pipeline.command).__name__, pipeline.result))

    def after_failure(self, pipeline: Pipeline) -> None:
        with self._lock:
            self.calls.append(("failure", type(pipeline.command).__name__, pipeline.error))


class Gate(Middleware):
    """Halts any command dispatched with ``metadata={"user": "mallory"}``."""

    def before_dispatch(self, pipeline: Pipeline) -> None:
        if pipeline.metadata.get("user") == "mallory":
            pipeline.halt(Denied(f"mallory may not {type(pipeline.command).__name__}"))


# -- the application ------------------------------------------------------------------------


def make_router(tally_lifespan: float | None = None) -> Router:
    router = Router()
    router.dispatch(
        [Add, Reject, Explode, Nothing, AddTwice, Smuggle, Stall],
        to=Counter,
        identity="counter_id",
    )
    router.dispatch(Count, to=Tally, identity="tally_id", lifespan=tally_lifespan)
    return router


def make_app(
    name: str = "dispatch", tally_lifespan: float | None = None, **options: Any
) -> Application:
    return Application(name, router=make_router(tally_lifespan), **options)


# -- helpers shared by the dispatch tests ---------------------------------------------------


def router_node(system: Any) -> dict[str, Any]:
    """The router's node in the running application's supervision tree."""
    return next(c for c in system.tree()["children"] if c["name"] == "router")


def aggregate_nodes(system: Any) -> dict[str, dict[str, Any]]:
    """The aggregates the shards show (their most recently used ones), by stream id; each with
    its shard's process id."""
    return {
        aggregate["name"]: {**aggregate, "pid": shard.get("pid")}
        for shard in router_node(system)["children"]
        for aggregate in shard["children"]
    }


def stored(system: Any, stream_id: str) -> list[Any]:
    """The stream's recorded events, read from the database in the test process."""
    return list(system.store.read_stream(stream_id))
