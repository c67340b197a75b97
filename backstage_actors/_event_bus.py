"""The event bus: the supervisor of every subscriber, and the one that tells them there is more.

Writers announce ``Appended(position)``; the bus passes a :class:`Notify` to each subscriber that
is idle, and remembers the rest for when they report back (:class:`Progress`), so a busy
subscriber gets one notice however many appends happened meanwhile. It also tracks every
subscriber's checkpoint, which is what a strongly consistent dispatch waits on (:class:`WaitFor`).
Merging the bus with the handlers' supervisor saves a hop per notice: the supervisor already
knows where each subscriber lives, restarts included.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

import attrs
from thespian.actors import ActorSystemFailure, WatchMessage

import supervisors
from supervisors import (
    Backoff,
    Child,
    ChildAddress,
    ChildSpec,
    Supervisor,
    SupervisorSpec,
    WatchChildren,
)

from ._handler_actor import HandlerActor
from ._names import EVENTS, ROUTER
from ._process_manager_actor import ProcessManagerActor
from ._projection_actor import ProjectionActor
from ._protocol import Appended, Settings
from ._shared import locate
from ._subscriber import (
    LettersRetried,
    Notify,
    Progress,
    Rebuild,
    RebuildProgress,
    RetryLetters,
    RouterAt,
    SubscriberActor,
)
from .errors import BackstageError, ConsistencyTimeout, SystemNotRunning
from .handler import EventHandler
from .process_manager import ProcessManager
from .projection import Projection
from .store import listen

log = logging.getLogger(__name__)

__all__ = [
    "RUNTIMES",
    "EventsSupervisor",
    "events_supervisor_spec",
    "rebuild_projection",
    "retry_dead_letters",
    "runtime_of",
    "wait_for_position",
]


#: Which runtime runs which kind of subscriber: the one place that tells the kinds apart.
RUNTIMES: tuple[tuple[type, type[SubscriberActor]], ...] = (
    (Projection, ProjectionActor),
    (ProcessManager, ProcessManagerActor),
    (EventHandler, HandlerActor),
)


def runtime_of(cls: type) -> type[SubscriberActor]:
    """The actor class that runs subscriber class ``cls``."""
    for kind, runtime in RUNTIMES:
        if issubclass(cls, kind):
            return runtime
    raise TypeError(
        f"{cls.__name__} is not an EventHandler, a Projection or a ProcessManager subclass"
    )


@attrs.frozen
class WaitFor:
    request_id: str
    position: int
    names: tuple[str, ...] | None
    #: Seconds the asker waits; after that nobody listens for the answer.
    patience: float = 3600.0


@attrs.frozen
class Reached:
    request_id: str
    error: str = ""


@attrs.frozen
class RebuildRequest:
    name: str
    request_id: str


@attrs.frozen
class _Tracked:
    position: int = 0
    idle: bool = False
    notified: int = 0
    stopped: bool = False
    strong: bool = True


class EventsSupervisor(Supervisor):
    kind = "events"

    def on_start(self) -> None:
        super().on_start()
        self.strong: dict[str, bool] = dict(self.args["strong"])
        self.tracked: dict[str, _Tracked] = {
            name: _Tracked(strong=s) for name, s in self.strong.items()
        }
        self.latest = 0
        self.waiters: list[tuple[WaitFor, Any, float]] = []  # (request, asker, given up at)
        self.router: Any = None
        if self.supervisor is not None:
            self.send(self.supervisor, WatchChildren())
        # PostgreSQL tells of every commit, this application's or another host's (LISTEN): on
        # the multiproc bases Thespian watches the connection for the bus. (On simpleSystemBase
        # a thread of the caller's process watches it: _bus_waker.)
        self.listener: Any = None
        self.listen_again_at = 0.0
        settings: Settings | None = self.args.get("settings")
        self.listen_to = settings.database if settings and settings.base != "simple" else None
        self._listen()

    def _listen(self) -> None:
        if self.listen_to is None or time.monotonic() < self.listen_again_at:
            return
        try:
            self.listener = listen(self.listen_to)
        except BackstageError as exc:
            log.warning("events: cannot listen for commits (%s); trying again in 5s", exc)
            self.listen_again_at = time.monotonic() + 5.0
            return
        if self.listener is None:  # a store that does not tell of its commits
            self.listen_to = None

    def watched(self) -> list[int]:
        return [self.listener.fileno()] if self.listener is not None else []

    def on_stop(self) -> None:
        if self.listener is not None:
            self.listener.close()
        super().on_stop()

    def _notified(self) -> None:
        """The listening connection is readable: commits happened (or it broke)."""
        try:
            position = self.listener.drain()
            if position:
                self._appended(position)
        except Exception as exc:
            log.warning("events: the listening connection broke (%s); listening again", exc)
            self.listener.close()
            self.listener = None
            self._listen()

    def describe(self) -> dict[str, Any]:
        return {
            "latest": self.latest,
            "subscribers": len(self.tracked),
            "waiting": len(self.waiters),
        }

    def handle(self, message: Any, sender: Any) -> None:
        if self.listener is None and self.listen_to is not None:
            self._listen()
        if isinstance(message, Appended):
            self._appended(message.position)
        elif isinstance(message, WatchMessage):
            if self.listener is not None and self.listener.fileno() in message.ready:
                self._notified()
        elif isinstance(message, Progress):
            self._progress(message)
        elif isinstance(message, WaitFor):
            self._wait(message, sender)
        elif isinstance(message, ChildAddress):
            if message.name == ROUTER:
                self.router = message.address
                for child in self.children.values():
                    if child.status in ("starting", "running"):
                        self.send(child.address, RouterAt(message.address))
        elif isinstance(message, RebuildRequest):
            self.forward(message.name, Rebuild(message.request_id, sender), sender)
        else:
            super().handle(message, sender)

    def child_started(self, child: Child) -> None:
        if self.router is not None:
            self.send(child.address, RouterAt(self.router))
        if self.latest:
            self.send(child.address, Notify(self.latest))

    def _appended(self, position: int) -> None:
        if position <= self.latest:
            return
        self.latest = position
        for name, tracked in self.tracked.items():
            if tracked.idle and tracked.position < position:
                self._notify(name, tracked)

    def _notify(self, name: str, tracked: _Tracked) -> None:
        child = self.children.get(name)
        if child is not None and child.status in ("starting", "running"):
            self.send(child.address, Notify(self.latest))
            self.tracked[name] = attrs.evolve(tracked, idle=False, notified=self.latest)

    def _progress(self, progress: Progress) -> None:
        tracked = attrs.evolve(
            self.tracked.get(progress.name, _Tracked()),
            position=progress.position,
            idle=progress.idle,
            stopped=progress.stopped,
        )
        self.tracked[progress.name] = tracked
        if progress.idle and not progress.stopped and tracked.position < self.latest:
            self._notify(progress.name, tracked)
        self._release_waiters()

    def _wait(self, request: WaitFor, sender: Any) -> None:
        unknown = [n for n in request.names or () if n not in self.tracked]
        if unknown:
            self.send(
                sender, Reached(request.request_id, f"no subscriber named {', '.join(unknown)}")
            )
            return
        self.waiters.append((request, sender, time.monotonic() + request.patience))
        self._release_waiters()

    def _release_waiters(self) -> None:
        still = []
        now = time.monotonic()
        for request, sender, given_up_at in self.waiters:
            if now >= given_up_at:
                continue  # the asker timed out (ConsistencyTimeout): nobody to answer
            names = request.names or tuple(n for n, t in self.tracked.items() if t.strong)
            # (one stopped past the position reached it: only one stopped short of it fails)
            stopped = [
                n
                for n in names
                if self.tracked[n].stopped and self.tracked[n].position < request.position
            ]
            if stopped:
                self.send(
                    sender,
                    Reached(request.request_id, f"subscriber {', '.join(stopped)} is stopped"),
                )
            elif all(self.tracked[n].position >= request.position for n in names):
                self.send(sender, Reached(request.request_id))
            else:
                still.append((request, sender, given_up_at))
        self.waiters = still


def events_supervisor_spec(app: Any, settings: Settings) -> ChildSpec:
    """The ``events`` child of the application: the bus and its subscribers."""
    children = []
    strong = {}
    names: set[str] = set()
    for cls in app.subscribers:
        name = cls.subscriber_name()
        if name in names:
            raise ValueError(
                f"two subscribers are named {name!r}; names key checkpoints and must be unique"
            )
        names.add(name)
        strong[name] = cls.consistency == "strong"
        children.append(
            ChildSpec(
                name,
                runtime_of(cls),
                # (a process manager finds the stream of its commands, to send them straight to
                # the aggregates it heard from)
                args={"settings": settings, "subscriber": cls, "routes": app.router},
                kind=cls.kind,
            )
        )
    spec = SupervisorSpec(
        strategy="one_for_one",
        # A subscriber that keeps crashing backs off; it must not take its siblings down.
        max_restarts=100,
        within=10.0,
        backoff=Backoff(base=0.1, cap=5.0, jitter=0.1),
        kind="events",
        children=children,
    )
    return ChildSpec(
        EVENTS,
        EventsSupervisor,
        args={"spec": spec, "strong": strong, "settings": settings},
        kind="events",
    )


def _bus(endpoint: Any, root: Any, timeout: float = 5.0) -> Any:
    return locate(endpoint, root, EVENTS, timeout, "the application has no running event bus")


def _told(endpoint: Any, address: Any, message: Any) -> bool:
    """``endpoint.tell``; False where Thespian found the target dead as it sent (it raises)."""
    try:
        endpoint.tell(address, message)
    except ActorSystemFailure:
        return False
    return True


#: Seconds of a strong wait without an answer before the root is asked where the bus is: a bus
#: restarted meanwhile (its process killed) lost its waiters, and the wait moves to the new one.
RECHECK_BUS = 1.0


def wait_for_position(
    endpoint: Any,
    root: Any,
    position: int,
    names: Sequence[str] | None,
    timeout: float,
    asked: float | None = None,
) -> None:
    """Block until the subscribers reached ``position``, at most ``timeout`` seconds (what is
    left of the caller's ``asked``, which the error names); :class:`ConsistencyTimeout`
    otherwise. Every :data:`RECHECK_BUS` seconds without an answer the root is asked where the
    bus is, and a new instance (the bus restarted: its waiters went with the old one) is asked
    again."""
    request = WaitFor(str(uuid.uuid4()), position, tuple(names) if names else None, timeout)
    deadline = time.monotonic() + timeout
    try:
        # (the events are stored whatever happens here: a bus that cannot be found, stopping
        # or behind a root that does not answer, is a consistency timeout, within the timeout)
        bus = _bus(endpoint, root, min(5.0, timeout))
        check_at = time.monotonic() + RECHECK_BUS
        try:  # (ask: what the simple base answers fastest, as it runs its actors in it)
            reply = endpoint.ask(bus, request, max(0.0, min(deadline, check_at) - time.monotonic()))
        except ActorSystemFailure:
            reply, check_at = None, 0.0  # (it died as it was told: ask where the next one is)
        where = ""  # the id of the last question to the root: where the bus is
        while not (isinstance(reply, Reached) and reply.request_id == request.request_id):
            if isinstance(reply, supervisors.Failure) and reply.request == request:
                check_at = 0.0  # the bus crashed on it: ask where its next instance is
            elif isinstance(reply, supervisors.ChildAddress) and reply.request_id == where:
                where = ""
                if reply.address is not None and reply.address != bus:
                    bus = reply.address  # restarted: the old one's waiters went with it
                    left = max(0.05, deadline - time.monotonic())
                    if not _told(endpoint, bus, attrs.evolve(request, patience=left)):
                        check_at = 0.0
            now = time.monotonic()
            if now >= deadline:
                raise supervisors.SupervisionError("no answer in time")
            if now >= check_at:
                alive = getattr(endpoint, "check", None)  # (a client's: SystemGone once it ended)
                if alive is not None:
                    alive()
                where = f"{request.request_id}-where-{now}"
                if not _told(endpoint, root, supervisors.WhereIs(EVENTS, where)):
                    raise SystemNotRunning("the application's root supervisor is gone")
                check_at = now + RECHECK_BUS
            # (steps of 0.1 s at most, a look without waiting first: simpleSystemBase's
            # listen() runs its actors, and sleeps until its next timer before handing over
            # an answer already there; see supervisors.request)
            reply = endpoint.listen(0)
            if reply is None:
                reply = endpoint.listen(max(0.0, min(deadline, check_at, now + 0.1) - now))
    except SystemNotRunning as exc:
        raise ConsistencyTimeout(
            f"the events were stored (up to position {position}), but the handlers cannot "
            f"be asked whether they processed them: {exc}"
        ) from None
    except supervisors.SupervisionError:
        raise ConsistencyTimeout(
            f"the events were stored (up to position {position}), but "
            f"{'handlers ' + ', '.join(names) if names else 'the strongly consistent handlers'} "
            f"did not process them within {timeout if asked is None else asked}s"
        ) from None
    if reply.error:
        raise ConsistencyTimeout(
            f"the events were stored (up to position {position}), but {reply.error}"
        )


def rebuild_projection(
    endpoint: Any, root: Any, name: str, progress: Any = None, timeout: float = 600.0
) -> int:
    """Reset projection ``name`` and replay it from the origin; returns the events replayed.

    A projection restarted in the middle (its process killed) has lost who waits for it: after
    a quiet spell the bus is asked where it is, and a new instance is asked for the rebuild
    again (it starts over from the origin: the same end, and the caller hears of it)."""
    request_id = str(uuid.uuid4())
    bus = _bus(endpoint, root)
    # Where first: the bus answers in order, so the first address it gives is of the instance
    # the request went to or of one before it, and a restart in between is seen as a change.
    endpoint.tell(bus, supervisors.WhereIs(name, asked := f"{request_id}-where"))
    endpoint.tell(bus, RebuildRequest(name, request_id))
    deadline = time.monotonic() + timeout
    instance: Any = None  # the projection's address, once the bus said it
    # (asked: the id of an unanswered question to the bus, where the projection is)
    quiet_since = time.monotonic()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BackstageError(f"rebuild of {name!r} did not finish within {timeout}s")
        reply = endpoint.listen(min(remaining, 0.5))
        if isinstance(reply, supervisors.ChildAddress) and reply.request_id == asked:
            asked = ""
            if instance is not None and reply.address not in (None, instance):
                endpoint.tell(bus, RebuildRequest(name, request_id))  # its new instance
            instance = reply.address or instance
            continue
        if isinstance(reply, supervisors.Failure):
            raise BackstageError(f"cannot rebuild {name!r}: {reply.message}")
        if not isinstance(reply, RebuildProgress) or reply.request_id != request_id:
            if not asked and time.monotonic() - quiet_since > QUIET_REBUILD:
                quiet_since = time.monotonic()
                asked = f"{request_id}-where-{quiet_since}"
                endpoint.tell(bus, supervisors.WhereIs(name, asked))
            continue
        quiet_since = time.monotonic()
        if reply.error:
            raise BackstageError(f"cannot rebuild {name!r}: {reply.error}")
        if progress is not None:
            progress(reply.done, reply.total)
        if reply.finished:
            return reply.done


#: Seconds without a word of a rebuild before the bus is asked whether its projection restarted.
QUIET_REBUILD = 2.0


def retry_dead_letters(
    endpoint: Any, root: Any, store: Any, ids: list[int] | None, timeout: float = 60.0
) -> dict[int, str]:
    """Hand parked events (all, or ``ids``) back to their subscribers; ``{id: outcome}``."""
    letters = [d for d in store.dead_letters() if ids is None or d.id in ids]
    outcome: dict[int, str] = {i: "failed: no such parked dead letter" for i in ids or []}
    by_subscriber: dict[str, list[int]] = {}
    for letter in letters:
        by_subscriber.setdefault(letter.subscriber, []).append(letter.id)
    bus = _bus(endpoint, root)
    for name, letter_ids in by_subscriber.items():
        request = RetryLetters(str(uuid.uuid4()), letter_ids)
        endpoint.tell(bus, supervisors.Forward(name, request))
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                outcome.update({i: "failed: no answer in time" for i in letter_ids})
                break
            reply = endpoint.listen(min(remaining, 0.5))
            if isinstance(reply, LettersRetried) and reply.request_id == request.request_id:
                outcome.update(reply.outcome)
                break
            if isinstance(reply, supervisors.Failure):
                outcome.update({i: f"failed: {reply.message}" for i in letter_ids})
                break
    return outcome
