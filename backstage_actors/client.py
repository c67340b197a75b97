"""``RunningSystem``: the caller's side of a running application (public: what every user calls).

``Application.start()`` returns one that owns its actor system (``stop()`` ends it);
``Application.attach()`` returns one on a system started elsewhere (a daemon), which ``stop()``
leaves running. Dispatch commands, wait for consistency, look at the tree, rebuild projections.


Commands go to the router as :class:`Execute` messages; each shard answers the caller directly
with an :class:`Executed`, matched to its request by id (Thespian's ``ask`` returns whatever comes
next, stale answers of timed-out requests included). On simpleSystemBase the actors run inside
these calls: threads put their commands in one queue, and one of them at a time sends all that
is queued as one batch (``_combiner``); on multiproc each thread gets its own endpoint and
commands from many threads are in flight at once.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import attrs
from thespian.actors import PoisonMessage

import supervisors

from . import _async, _combiner, _lane, _shared, _thespian, history, telemetry
from ._event_bus import rebuild_projection, retry_dead_letters, wait_for_position
from ._names import ROUTER
from ._protocol import Execute, Executed, Settings
from ._shard import shard_name, shard_of
from .aggregate import Aggregate
from .command import CommandItem, DispatchResult, new_item
from .errors import (
    BackstageError,
    CommandRejected,
    DispatchTimeout,
    SystemNotRunning,
    UnhandledCommand,
)
from .middleware import Pipeline
from .store import EventStore

__all__ = ["RunningSystem"]

CONSISTENCIES = ("eventual", "strong")
MAX_REMEMBERED = 10_000  # aggregate addresses a client keeps, most recently used
DIRECT_PATIENCE = 1.0  # seconds to wait for an aggregate addressed directly before the detour
MAX_UNCLAIMED = 10_000  # in-process answers read by another call, kept for their own


class _SystemLock:
    """The running system's re-entrant lock, knowing which thread holds it: a thread inside the
    actor system (a handler that dispatches while its thread waits in ``wait_for``) must run its
    dispatch at once, not queue it behind a server that waits for this very lock."""

    __slots__ = ("_depth", "_lock", "owner")

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._depth = 0
        self.owner: int | None = None

    def acquire(self) -> None:
        self._lock.acquire()
        self.owner = threading.get_ident()
        self._depth += 1

    def release(self) -> None:
        self._depth -= 1
        if not self._depth:
            self.owner = None
        self._lock.release()

    def held_here(self) -> bool:
        return self.owner == threading.get_ident()

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class _Locked:
    """``endpoint`` while holding ``lock`` (a class: it runs for every command)."""

    __slots__ = ("endpoint", "lock")

    def __init__(self, lock: Any, endpoint: Any) -> None:
        self.lock = lock
        self.endpoint = endpoint

    def __enter__(self) -> Any:
        self.lock.acquire()
        return self.endpoint

    def __exit__(self, *exc_info: object) -> None:
        self.lock.release()


class _Call:
    """One ``_send``: its items, their answers so far, and its clock."""

    __slots__ = (
        "answers",
        "deadline",
        "detour_at",
        "direct",
        "durable_at",
        "items",
        "timeout",
        "waiting",
    )

    def __init__(self, items: list[CommandItem], timeout: float) -> None:
        self.items = items
        self.timeout = timeout
        self.waiting = {item.request_id: index for index, item in enumerate(items)}
        self.answers: list[Any] = [None] * len(items)
        self.deadline = time.monotonic() + timeout
        self.direct: str | None = None  # sent straight to this stream's shard, by message
        self.detour_at = 0.0  # when to ask the router instead
        self.durable_at = 0  # in-process: the commit to see flushed first (see _writer)


def _timeout(item: CommandItem, timeout: float, sent: bool) -> DispatchTimeout:
    name = type(item.command).__name__
    telemetry.emit("timeout", {"count": 1.0}, {"command": name})
    if not sent:
        return DispatchTimeout(
            f"{name}: not sent within {timeout}s (the callers ahead of it took that long); "
            "it was not executed"
        )
    return DispatchTimeout(
        f"{name}: no answer within {timeout}s; it may or may not have been executed"
    )


class RunningSystem:
    """A handle on a running application: dispatch commands through it, inspect and stop it.

    Get one from :meth:`Application.start` (use it as a context manager: leaving the block stops
    the application) or :meth:`Application.attach`; do not construct it yourself. It is safe to
    share between threads.
    """

    def __init__(
        self,
        app: Any,
        actor_system: Any,
        root: Any,
        base: str,
        settings: Settings,
        owns_system: bool = True,
    ) -> None:
        self.app = app
        self.actor_system = actor_system
        self.root = root
        self.base = base
        self.settings = settings
        self.owns_system = owns_system
        self._router: Any = None
        self._lock = _SystemLock()
        self._local = threading.local()
        self._contexts: list[Any] = []
        # Every thread's lane connections (a thread's go when it ends; see _lane_client).
        self._lane_clients: weakref.WeakSet[_lane.LaneClient] = weakref.WeakSet()
        # Lanes of aggregates not heard from yet are named after the system (multiproc only).
        self._system_key = (
            _thespian.system_key(actor_system) if base != "simple" and _lane.available() else None
        )
        self._stopped = False
        self._store: Any = None
        self._sent = 0
        # stream id -> (actor address, lane name or None) of the aggregates that answered
        self._aggregates: OrderedDict[str, tuple[Any, str | None]] = OrderedDict()
        self._home: Any = None  # the shard that answered last (in-process: the only one)
        # In-process callers' one queue (a thread already inside the actor system skips it).
        self._combiner = _combiner.Combiner(
            self._send_now, self._await_flush, self._late, self._lock.held_here
        )
        # Answers that reached a call they were not for (in-process, a dispatch made inside
        # another call's wait may read that call's reply): kept for their own call to claim.
        self._unclaimed: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self.metrics: Any = None  # the /metrics server this process runs for it, if any
        self.async_pool: Any = None  # the threads of dispatch_async (see _async)
        self.waker: Any = None  # in-process on PostgreSQL: other hosts' commits (see _bus_waker)

    # -- context management -----------------------------------------------------------------

    def __enter__(self) -> RunningSystem:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def _check_running(self) -> None:
        if self._stopped:
            raise SystemNotRunning(f"application {self.app.name!r} is stopped")

    def _endpoint(self) -> contextlib.AbstractContextManager[Any]:
        """The actor-system handle this thread may use."""
        self._check_running()
        if self.base == "simple" or threading.current_thread() is threading.main_thread():
            return _Locked(self._lock, self.actor_system)
        context = getattr(self._local, "context", None)
        if context is None:
            context = _thespian.external_context(self.actor_system)
            self._local.context = context
            with self._lock:
                self._contexts.append(context)
        return contextlib.nullcontext(context)

    def router_address(self, refresh: bool = False) -> Any:
        """The router actor's address (looked up once; ``refresh`` looks again). For tools that
        talk to the actors themselves; dispatching needs none of it."""
        if self._router is None or refresh:
            with self._endpoint() as endpoint:
                self._router = _shared.locate(
                    endpoint, self.root, ROUTER, 10.0, "the router is not running"
                )
        return self._router

    # -- dispatch ---------------------------------------------------------------------------

    def dispatch(
        self,
        command: Any,
        consistency: str = "eventual",
        metadata: Mapping[str, Any] | None = None,
        timeout: float = 5.0,
        handlers: Sequence[str] | None = None,
    ) -> DispatchResult:
        """Send ``command`` to its aggregate and return what it recorded.

        Raises :class:`CommandRejected` when the aggregate refused it, :class:`DispatchTimeout`
        when no answer came in ``timeout`` seconds (it may or may not have run), and with
        ``consistency="strong"`` waits until the (named, or all strongly consistent) handlers
        have processed its events (:class:`ConsistencyTimeout` otherwise).
        """
        if consistency not in CONSISTENCIES:
            raise ValueError(f"consistency must be 'eventual' or 'strong', not {consistency!r}")
        pipeline = Pipeline(command, dict(metadata or {}), consistency)
        for middleware in self.app.middleware:
            middleware.before_dispatch(pipeline)
            if pipeline.halted:
                return self._failed(pipeline)
        try:
            with telemetry.span(
                "dispatch", command=type(command).__name__, consistency=consistency
            ):
                item = self._item(command, pipeline.metadata)
                [answer] = self._send([item], timeout)
                if isinstance(answer, BaseException):
                    raise answer
                if consistency == "strong" and answer.position:
                    self.wait_for(answer.position, handlers, deadline_in=timeout)
        except BaseException as exc:
            pipeline.error = exc
            return self._failed(pipeline)
        pipeline.result = answer
        for middleware in self.app.middleware:
            middleware.after_dispatch(pipeline)
        return answer

    async def dispatch_async(
        self,
        command: Any,
        consistency: str = "eventual",
        metadata: Mapping[str, Any] | None = None,
        timeout: float = 5.0,
        handlers: Sequence[str] | None = None,
    ) -> DispatchResult:
        """:meth:`dispatch` for asyncio: awaits the answer without blocking the event loop.

        ``timeout`` counts from the call. Cancelling the awaiting task raises ``CancelledError``
        there at once; a command already sent may still run (name it with
        ``metadata={"command_id": ...}`` to send it again safely). See ``_async``.
        """
        return await _async.dispatch_async(self, command, consistency, metadata, timeout, handlers)

    async def dispatch_many_async(
        self,
        commands: Sequence[Any],
        metadata: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        batch_size: int = 1000,
    ) -> list[DispatchResult | BaseException]:
        """:meth:`dispatch_many` for asyncio, as :meth:`dispatch_async` is for :meth:`dispatch`."""
        return await _async.dispatch_many_async(self, commands, metadata, timeout, batch_size)

    def _failed(self, pipeline: Pipeline) -> Any:
        for middleware in self.app.middleware:
            middleware.after_failure(pipeline)
        assert pipeline.error is not None
        raise pipeline.error

    def dispatch_many(
        self,
        commands: Sequence[Any],
        metadata: Mapping[str, Any] | Sequence[Mapping[str, Any] | None] | None = None,
        timeout: float | None = None,
        batch_size: int = 1000,
    ) -> list[DispatchResult | BaseException]:
        """Send many commands in few messages; their appends are group-committed.

        Returns one entry per command, in order: its :class:`DispatchResult`, or the error it met
        (rejections do not stop the others). Middleware runs for each command. ``metadata`` is
        one mapping for every command, or a sequence of one per command (a ``command_id`` in it
        names the command: sent again, it is answered, not run again).
        """
        answers: list[DispatchResult | BaseException | None] = [None] * len(commands)
        items: list[tuple[int, CommandItem, Pipeline | None]] = []
        chain = self.app.middleware
        each = metadata if isinstance(metadata, Sequence) else [metadata] * len(commands)
        if len(each) != len(commands):
            raise ValueError(f"{len(each)} metadata for {len(commands)} commands")
        for index, command in enumerate(commands):
            given = each[index]
            if not chain:  # nothing to tell: no pipeline either
                try:
                    items.append((index, self._item(command, given), None))
                except BaseException as exc:
                    answers[index] = exc
                continue
            pipeline = Pipeline(command, dict(given or {}), "eventual")
            try:
                for middleware in chain:
                    middleware.before_dispatch(pipeline)
                    if pipeline.halted:
                        raise pipeline.error or BackstageError("halted")
                items.append((index, self._item(command, pipeline.metadata), pipeline))
            except BaseException as exc:
                pipeline.error = exc
                answers[index] = exc
                for middleware in chain:
                    middleware.after_failure(pipeline)
        limit = timeout if timeout is not None else max(30.0, len(items) / 200)
        results = self._send([item for _, item, _ in items], limit, batch_size)
        for (index, _, sent), result in zip(items, results, strict=True):
            answers[index] = result
            if sent is None:
                continue
            if isinstance(result, BaseException):
                sent.error = result
                hooks = "after_failure"
            else:
                sent.result = result
                hooks = "after_dispatch"
            for middleware in chain:
                getattr(middleware, hooks)(sent)
        return [answer for answer in answers if answer is not None]

    def _item(self, command: Any, metadata: Mapping[str, Any] | None) -> CommandItem:
        """``command`` wrapped for sending, once checked against the application's limits (every
        way in comes here: the API, the CLI, the shell, ``send --file``)."""
        route = self.app.router.routes.get(type(command))
        identity = route.identity if route is not None else None
        return new_item(command, metadata, self.settings.limits, identity)

    def _send(self, items: list[CommandItem], timeout: float, batch_size: int = 1000) -> list[Any]:
        """Send ``items`` in ``Execute`` messages and gather one answer per item, in four steps:
        by lane, by message, the wait for the flush, the timeouts.

        A single command for a stream this system has heard from goes straight to its shard
        (two messages instead of three: on multiproc every hop is a TCP round trip), by the
        shard's lane when it has one (see ``_lane``); in-process everything goes straight to the
        one shard once it has answered; anything else, and anything whose shard moved, goes
        through the router.
        """
        if not items:
            return []
        self._check_running()
        if self.base == "simple":
            # One queue for every thread; its server flushes outside it (see _combiner).
            return self._combiner.submit(items, timeout, batch_size)
        answers, _ = self._send_now(items, timeout, batch_size)
        return answers

    def _send_now(
        self, items: list[CommandItem], timeout: float, batch_size: int
    ) -> tuple[list[Any], int]:
        """Send ``items`` at once; their answers and the commit they count on (in-process:
        the caller flushes it, see ``_await_flush``; 0 if none)."""
        call = _Call(items, timeout)
        direct = self._direct_address(items)
        if direct is not None and self.base != "simple":
            # Named, so that a detour through the router can never run it twice. (In-process
            # the answer is there when tell() returns: no detour, no need.)
            call.items = [attrs.evolve(item, idempotent=True) for item in items]
            direct = self._by_lane(call, direct)
            if not call.waiting:
                return call.answers, 0
        self._by_message(call, direct, batch_size)
        self._time_out(call)
        return call.answers, call.durable_at

    def _by_lane(
        self, call: _Call, direct: tuple[Any, str, str | None]
    ) -> tuple[Any, str, str | None] | None:
        """Try the shard's lane, if it has one; what is left to send by message, and where."""
        _, stream_id, lane = direct
        if lane is None:
            return direct
        lanes = self._lane_client()
        request = Execute(call.items, None, False, stream_id)
        reply = lanes.call(lane, request, min(DIRECT_PATIENCE, call.timeout / 2))
        if isinstance(reply, Executed):
            self._take(reply, call.waiting, call.answers)
        if call.waiting:
            # It stopped, crashed, moved or is slow: the router knows the way.
            self._forget(stream_id)
            lanes.forget(lane)  # (a failed call closed it already; an empty answer did not)
        return None

    def _by_message(
        self, call: _Call, direct: tuple[Any, str, str | None] | None, batch_size: int
    ) -> None:
        """Send by Thespian message (to the shard ``direct`` names, or the router) and listen
        for the answers until the deadline."""
        router = self.router_address()
        with self._endpoint() as endpoint:
            me = _thespian.own_address(endpoint)
            if direct is not None and me is not None:
                address, stream_id, _ = direct
                for start in range(0, len(call.items), batch_size):
                    batch = call.items[start : start + batch_size]
                    endpoint.tell(address, Execute(batch, me, False, stream_id or None))
                call.detour_at = time.monotonic() + min(DIRECT_PATIENCE, call.timeout / 2)
                call.direct = stream_id
            else:
                pending = [item for item in call.items if item.request_id in call.waiting]
                for start in range(0, len(pending), batch_size):
                    endpoint.tell(router, Execute(pending[start : start + batch_size], me))
            self._listen(endpoint, call, router, me)
            if self.base == "simple":
                self._sent += len(call.items)
                if self._sent >= 10_000:  # (under the lock: no actor runs meanwhile)
                    self._sent = 0
                    _thespian.compact_registry(self.actor_system)

    def _listen(self, endpoint: Any, call: _Call, router: Any, me: Any) -> None:
        while call.waiting:
            if self._unclaimed:
                self._claim(call)
                if not call.waiting:
                    return
            remaining = call.deadline - time.monotonic()
            if remaining <= 0:
                return
            if call.direct is not None and time.monotonic() >= call.detour_at:
                # The shard may have been stopping as the command reached it: ask the router,
                # which starts it again if need be.
                self._forget(call.direct)
                waiting = [call.items[i] for i in call.waiting.values()]
                endpoint.tell(router, Execute(waiting, me))
                call.direct = None
                continue
            reply = _thespian.ready_response(endpoint) if self.base == "simple" else None
            if reply is None:
                step = remaining if call.direct is None else call.detour_at - time.monotonic()
                reply = endpoint.listen(self._wait_step(max(0.0, step)))
            if isinstance(reply, Executed):
                self._take(reply, call.waiting, call.answers, reply.durable_at)
                call.durable_at = max(call.durable_at, reply.durable_at)
            elif isinstance(reply, PoisonMessage):
                self._router = None  # the router moved; the next call looks it up again
                return

    def _time_out(self, call: _Call) -> None:
        """What is still waiting gets :class:`DispatchTimeout`."""
        if not call.waiting:
            return
        self._router = None  # the router may live elsewhere now; look it up again next time
        for index in call.waiting.values():
            call.answers[index] = _timeout(call.items[index], call.timeout, True)

    @staticmethod
    def _late(items: list[CommandItem], timeout: float, sent: bool) -> list[Any]:
        """In-process: the answers of a caller whose deadline passed in the queue."""
        return [_timeout(item, timeout, sent) for item in items]

    def _await_flush(self, commit: int, answers: list[Any]) -> None:
        """In-process: the answers count on commit number ``commit``; flush it to disk (or
        find it flushed by another caller) now that other callers may go on (see ``_writer``).
        If the flush fails, no answer is given: each becomes the storage error."""
        recorder: Any = _shared.shared_store(self.settings).recorder
        try:
            recorder.flush_through(commit)
        except BackstageError as exc:
            answers[:] = [exc if answer is not None else None for answer in answers]

    def _claim(self, call: _Call) -> None:
        """Take the answers for ``call`` that another call read first."""
        for request_id in [r for r in call.waiting if r in self._unclaimed]:
            answer, durable_at = self._unclaimed.pop(request_id)
            call.answers[call.waiting.pop(request_id)] = answer
            call.durable_at = max(call.durable_at, durable_at)

    def _take(
        self, reply: Executed, waiting: dict[str, int], answers: list[Any], durable_at: int = 0
    ) -> None:
        """Fill in the answers ``reply`` brings; learn where its aggregate lives. In-process,
        answers for another call are kept for it (see ``_unclaimed``)."""
        if reply.source is not None and all(
            isinstance(answer, (DispatchResult, CommandRejected, UnhandledCommand))
            for _, answer in reply.results
        ):
            self._remember(*reply.source)  # it answered and is alive
        for request_id, answer in reply.results:
            index = waiting.pop(request_id, None)
            if index is not None:
                answers[index] = answer
            elif self.base == "simple":
                self._unclaimed[request_id] = (answer, durable_at)
                if len(self._unclaimed) > MAX_UNCLAIMED:  # (a call that timed out never claims)
                    self._unclaimed.popitem(last=False)

    def _direct_address(self, items: list[CommandItem]) -> tuple[Any, str, str | None] | None:
        """``(address, stream id, lane)`` of the shard a single command may go straight to: the
        one that answered for its stream before, in-process the one shard, or on multiproc the
        lane its shard's name gives (``address`` is then None, and a refused connection means:
        ask the router)."""
        if len(items) != 1:
            # In-process one shard hosts every stream: a batch goes straight to it too.
            home = self._home
            return (home, "", None) if home is not None and self.base == "simple" else None
        try:
            _, stream_id, _ = self.app.router.stream_of(items[0].command)
        except BackstageError:
            return None  # the router will say what is wrong
        known = self._aggregates.get(stream_id)
        if known is not None:
            return (known[0], stream_id, known[1])
        if self.base == "simple" and self._home is not None:
            return (self._home, stream_id, None)  # in-process one shard hosts every stream
        if self._system_key is not None:
            shard = shard_name(shard_of(stream_id, self.settings.shards))
            name = _lane.name_for(self._system_key, self.settings.database, shard)
            return (None, stream_id, name)
        return None

    def _remember(self, stream_id: str, address: Any, lane: str | None = None) -> None:
        self._home = address
        with self._lock:
            self._aggregates[stream_id] = (address, lane)
            self._aggregates.move_to_end(stream_id)
            while len(self._aggregates) > MAX_REMEMBERED:
                self._aggregates.popitem(last=False)

    def _forget(self, stream_id: str) -> None:
        self._home = None
        with self._lock:
            self._aggregates.pop(stream_id, None)

    def _lane_client(self) -> _lane.LaneClient:
        """This thread's lane connections; a forked child closes its copies of its parent's."""
        client: _lane.LaneClient | None = getattr(self._local, "lanes", None)
        if client is not None and client.pid == os.getpid():
            return client
        if client is not None:
            client.close()
        client = _lane.LaneClient()
        with self._lock:
            self._check_running()
            self._lane_clients.add(client)
        self._local.lanes = client
        return client

    def _wait_step(self, remaining: float) -> float:
        # simpleSystemBase runs every actor inside tell(): the answers are there already, and a
        # long listen() would only sleep until the next timer. Poll briefly instead.
        return min(remaining, 0.01) if self.base == "simple" else remaining

    # -- consistency ------------------------------------------------------------------------

    def wait_for(
        self, position: int, handlers: Sequence[str] | None = None, deadline_in: float = 5.0
    ) -> None:
        """Return once the handlers (named, or all strongly consistent ones) reached ``position``."""
        if not self.app.subscribers:
            return
        with self._endpoint() as endpoint:
            wait_for_position(endpoint, self.root, position, handlers, deadline_in)

    @property
    def store(self) -> Any:
        """The event store, opened in this process (read it freely; write through commands)."""
        if self._store is None:
            self._store = EventStore(self.settings.database, self.settings.synchronous)
        return self._store

    def state_of(
        self,
        cls: type[Aggregate],
        identity: str,
        version: int | None = None,
        at: datetime | None = None,
    ) -> Aggregate:
        """``cls``'s state after ``version`` (or at time ``at``), rebuilt from the store without
        asking the live aggregate: :func:`backstage_actors.history.state_of`."""
        return history.state_of(self.store, cls, identity, version=version, at=at)

    def trace(self, ident: str) -> dict[str, Any]:
        """The commands and events one request caused: :func:`backstage_actors.history.trace`."""
        return history.trace(self.store, ident)

    def settle(self, timeout: float = 10.0) -> int:
        """Wait until every subscriber processed every stored event, including the events that
        process managers dispatch meanwhile; returns the last position."""
        deadline = time.monotonic() + timeout
        while True:
            position = self.store.last_position()
            self.wait_for(position, deadline_in=max(0.1, deadline - time.monotonic()))
            if self.store.last_position() == position:
                return int(position)

    def rebuild(self, projection: str, progress: Any = None, timeout: float = 600.0) -> int:
        """Drop projection's tables and checkpoint and replay it from the origin.

        ``progress(done, total)`` is called as it goes (positions); returns the events replayed.
        """
        with self._endpoint() as endpoint:
            return rebuild_projection(endpoint, self.root, projection, progress, timeout)

    def retry_dead_letters(self, ids: Sequence[int] | None = None) -> dict[int, str]:
        """Give parked events (all, or those ``ids``) to their subscribers again."""
        with self._endpoint() as endpoint:
            return retry_dead_letters(endpoint, self.root, self.store, list(ids) if ids else None)

    # -- introspection and shutdown ---------------------------------------------------------

    def tree(self, timeout: float = 5.0) -> dict[str, Any]:
        """The live supervision tree as nested dicts."""
        with self._endpoint() as endpoint:
            try:
                return supervisors.tree(endpoint, self.root, timeout=timeout)
            except supervisors.SupervisionError as exc:
                raise SystemNotRunning(
                    f"the application's root supervisor does not answer: {exc}"
                ) from None

    def stop(self, timeout: float = 30.0) -> None:
        """Orderly shutdown: the tree stops in reverse start order, then the actor system.

        A handle from :meth:`Application.attach` only lets go of the running application (it
        does not own it); ``shutdown()`` there stops the application for everyone.
        """
        if self._stopped:
            return
        if not self.owns_system:
            self._release()
            return
        self.shutdown(timeout)

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the application's tree in order, and the actor system if this handle started it."""
        if self._stopped:
            return
        if self.waker is not None:
            self.waker.close()
        try:
            with self._endpoint() as endpoint:
                supervisors.stop_supervisor(endpoint, self.root, timeout=timeout)
        except (supervisors.SupervisionError, BackstageError):
            pass
        finally:
            if self.owns_system:
                self.actor_system.shutdown()
            self._release()

    def _release(self) -> None:
        self._stopped = True
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if self.async_pool is not None:
            _async.close_pool(self)
        with self._lock:
            lane_clients = list(self._lane_clients)
        for lanes in lane_clients:
            if lanes.pid == os.getpid():
                lanes.close()
        for context in self._contexts:
            with contextlib.suppress(Exception):
                context.exit_clone()
        _shared.close_shared(self.settings.database)
        if self._store is not None:
            self._store.close()
