"""Messages between the client, the router and the shards (internal)."""

from __future__ import annotations

from typing import Any

import attrs

from .command import CommandItem
from .limits import DEFAULT_LIMITS, Limits

__all__ = [
    "Appended",
    "CommandStats",
    "Execute",
    "Executed",
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
    limits: Limits = DEFAULT_LIMITS  # what commands and events may hold (see limits.py)
    # One running application per database and host (see _owner): who this one is.
    exclusive: bool = True
    app_name: str = ""
    admin_port: int | None = None
    member: str | None = None  # "host:port" of this cluster member's admin (see _cluster)

    @property
    def stops(self) -> tuple[type[BaseException], ...]:
        """What the application's code may raise that stops the work under way rather than
        failing one command or event (every other exception does that). In-process the
        application's own process runs it, where Ctrl-C and a signal handler's ``sys.exit()``
        (a web server's worker told to stop) arrive as exceptions in whatever code runs; an
        actor process of a daemon is stopped only by its actor system, so nothing raised there
        is more than its command's or event's failure (else one command could take down its
        shard, and again when it is sent to the restarted one)."""
        return (KeyboardInterrupt, SystemExit) if self.base == "simple" else ()


@attrs.frozen
class Execute:
    """Commands for one or more aggregates; each answer goes to ``reply_to`` in an :class:`Executed`."""

    items: list[CommandItem]
    reply_to: Any
    # Part of a larger batch (several commands sent together).
    grouped: bool = False
    # Set when a client sends straight to the aggregate it believes owns this stream: the
    # aggregate checks it, and hands a misdelivered message to the router.
    stream_id: str | None = None
    # Sent on by another member's router (or handed back): served here, never forwarded again.
    forwarded: bool = False


@attrs.frozen
class Executed:
    """Answers: ``(request_id, DispatchResult | BackstageError)`` pairs."""

    results: list[tuple[str, Any]]
    # ``(stream_id, address, lane)`` of the shard that answered for that one stream: where to
    # send its next commands (``lane``: the name of its local socket, or None; see ``_lane``).
    # An answer by lane leaves the address out: its caller goes by the lane again. A batch's
    # answers by message name no stream (""): in-process its shard hosts them all.
    source: tuple[str, Any, str | None] | None = None
    # In-process: the commit the caller must see flushed to disk before it takes these answers
    # as given (see ``_writer``; 0: nothing to wait for).
    durable_at: int = 0
    # How many shards the answering system runs (0: not said). A client names a new stream's
    # lane after its own count: one whose application says otherwise (configured apart, or
    # another machine's core count) takes this one, or every new stream would detour.
    shards: int = 0


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
class Listeners:
    """Where shards announce new events (the event bus)."""

    listeners: list[Any]


@attrs.frozen
class Appended:
    """New events are stored up to ``position``: subscribers have something to read."""

    position: int
