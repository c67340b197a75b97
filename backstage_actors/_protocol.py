"""Messages between the client, the router, aggregate actors and the store actor (internal)."""

from __future__ import annotations

from typing import Any

import attrs

from .command import CommandItem
from .store.records import AppendRequest

__all__ = [
    "AppendBatch",
    "AppendFailed",
    "AppendResults",
    "Appended",
    "CommandStats",
    "Execute",
    "Executed",
    "Flush",
    "Listeners",
    "Settings",
    "ShardLoad",
]


@attrs.frozen
class Settings:
    """What every actor of one application needs to know, passed in its args."""

    database: str
    synchronous: str = "FULL"
    base: str = "multiproc"  # the Thespian base: "simple" or "multiproc"
    max_retries: int = 3
    lifespan: float | None = None
    max_live: int = 1000  # live aggregates, all shards together
    page_size: int = 1000
    shards: int = 1  # shard actors hosting the aggregates (see _shard)

    @property
    def append_via(self) -> str:
        """Who commits a batch's appends: ``"actor"`` (in-process: the store actor, in one group
        commit) or ``"direct"`` (multiproc: each aggregate process, a hop saved)."""
        return "actor" if self.base == "simple" else "direct"


@attrs.frozen
class Execute:
    """Commands for one or more aggregates; each answer goes to ``reply_to`` in an :class:`Executed`."""

    items: list[CommandItem]
    reply_to: Any
    # Part of a larger batch: other aggregates are appending at the same moment, so the appends
    # go through the store actor's group commit (in-process; see _aggregate_actor).
    grouped: bool = False
    # Set when a client sends straight to the aggregate it believes owns this stream: the
    # aggregate checks it, and hands a misdelivered message to the router.
    stream_id: str | None = None


@attrs.frozen
class Executed:
    """Answers: ``(request_id, DispatchResult | BackstageError)`` pairs."""

    results: list[tuple[str, Any]]
    # ``(stream_id, address, lane)`` of the shard that answered for that one stream: where to
    # send its next commands (``lane``: the name of its local socket, or None; see ``_lane``).
    source: tuple[str, Any, str | None] | None = None
    # In-process: the commit the caller must see flushed to disk before it takes these answers
    # as given (see ``_writer``; 0: nothing to wait for).
    durable_at: int = 0


@attrs.frozen
class Touched:
    """An aggregate was used directly by a client: the router keeps its idle clock right."""

    stream_id: str


@attrs.frozen
class CommandStats:
    """An aggregate's counts since its last report (a ``CommandMeter.take()``), for the router,
    which adds them up per aggregate type (sent at most every second, and when it stops)."""

    aggregate: str
    delta: dict[str, Any]


@attrs.frozen
class ShardLoad:
    """A shard's live aggregates and its totals so far, for the router (``tree``, ``top``)."""

    shard: str
    live: int
    passivated: int
    restarts: int


@attrs.frozen
class AppendBatch:
    """Appends for the store actor's next group commit.

    Without ``reply_to`` the sender waits for an :class:`AppendResults` with its ``tag``. With
    it the sender did not wait (pipelined): the store actor answers ``reply_to`` for each
    request's command (``items``: the command and its attempt, one per request) and tells the
    sender only of failures (:class:`AppendFailed`); ``tag`` is then the sender's epoch.
    """

    requests: list[AppendRequest]
    tag: Any
    reply_to: Any = None
    items: list[tuple[CommandItem, int]] | None = None


@attrs.frozen
class AppendFailed:
    """Pipelined appends of one epoch that failed, each with its command, attempt and error.
    With none, the aggregate only rebuilds: a command of that epoch was run on a state that
    already held its first attempt."""

    epoch: int
    failures: list[tuple[CommandItem, int, Any]]
    reply_to: Any


@attrs.frozen
class AppendResults:
    tag: Any
    results: list[Any]


@attrs.frozen
class Flush:
    pass


@attrs.frozen
class Listeners:
    """Where aggregates announce new events (the event bus), and the store actor's address."""

    listeners: list[Any]
    store_actor: Any = None


@attrs.frozen
class Appended:
    """New events are stored up to ``position``: subscribers have something to read."""

    position: int
