"""How a running system's commands travel and their answers come back (``RunningSystem``'s
courier): by a shard's lane, by Thespian message to the shard or the router, in-process through
the one queue of ``_combiner``; answers matched to their requests by id, the shard that answered
remembered for the next command of its stream, and the timeouts.

It owns the running system's lock and every thread's actor-system handle (``endpoint``), which
the running system's other calls (``wait_for``, ``tree``, ...) borrow.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import attrs
from thespian.actors import ActorSystemFailure, PoisonMessage

from . import _combiner, _lane, _shared, _thespian, telemetry
from ._names import ROUTER
from ._protocol import Execute, Executed, Settings
from ._shard import shard_name, shard_of
from .command import MAX_SENDABLE, CommandItem, DispatchResult
from .errors import (
    BackstageError,
    CommandRejected,
    DispatchTimeout,
    SystemNotRunning,
    UnhandledCommand,
)

__all__ = ["Courier"]


def log() -> logging.Logger:
    return logging.getLogger(__name__)


MAX_REMEMBERED = 10_000  # aggregate addresses a client keeps, most recently used
DIRECT_PATIENCE = 1.0  # seconds to wait for an aggregate addressed directly before the detour
MAX_UNCLAIMED = 10_000  # in-process answers read by another call, kept for their own
# On multiproc a wait for an answer is cut in slices this long: after a slice without one,
# whether the system's admin still accepts connections (a stopped or crashed system: the
# caller hears so at once, instead of waiting out its timeout).
PROBE_EVERY = 1.0
# How long that look waits for the admin's answer to its probe: no answer by then is a busy
# (or stopped) admin, not a gone one.
ADMIN_PATIENCE = 0.5


NO_ROUTER = "the router is not running"


class SystemGone(SystemNotRunning):
    """The actor system a running system's handle talks to is not running any more."""


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
        "sent",
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
        self.sent = False  # something of it went out already (by a lane)


def _tell(endpoint: Any, address: Any, message: Any) -> bool:
    """``endpoint.tell``; False where Thespian found the target dead as it sent (it raises)."""
    try:
        endpoint.tell(address, message)
    except ActorSystemFailure as exc:
        log().info("could not send to %s: %s", address, exc)
        return False
    return True


MAX_WAIT = 10.0**6  # what "no timeout" waits (see client.MAX_TIMEOUT)


class _Guarded:
    """A multiproc endpoint whose waits (``ask``, ``listen``) are cut in slices of at most
    :data:`PROBE_EVERY` seconds; after a slice without an answer, ``check()`` raises
    :class:`SystemGone` if the system is gone. Everything else is the endpoint's."""

    __slots__ = ("check", "endpoint")

    def __init__(self, endpoint: Any, check: Callable[[], None]) -> None:
        self.endpoint = endpoint
        self.check = check

    def __getattr__(self, name: str) -> Any:
        return getattr(self.endpoint, name)

    def listen(self, timeout: float | None = None) -> Any:
        deadline = time.monotonic() + (MAX_WAIT if timeout is None else timeout)
        while True:
            left = deadline - time.monotonic()
            reply = self.endpoint.listen(max(0.0, min(left, PROBE_EVERY)))
            if reply is not None or left <= PROBE_EVERY:
                return reply
            self.check()

    def ask(self, address: Any, message: Any, timeout: float | None = None) -> Any:
        began = time.monotonic()
        wait = MAX_WAIT if timeout is None else timeout
        reply = self.endpoint.ask(address, message, min(wait, PROBE_EVERY))
        if reply is not None or wait <= PROBE_EVERY:
            return reply
        self.check()
        return self.listen(max(0.0, wait - (time.monotonic() - began)))


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


class _ThreadEndpoint:
    """A thread's own actor-system endpoint, let go when the thread ends (its thread-local
    reference is the only one): a server that runs each request in a new thread would
    otherwise keep every one's sockets open until it runs out of file descriptors."""

    __slots__ = ("__weakref__", "context", "guarded", "pid", "release")

    def __init__(self, context: Any, pid: int, check: Callable[[], None]) -> None:
        self.context = context
        self.guarded = _Guarded(context, check)  # (one per thread, not one per call)
        self.pid = pid
        self.release = weakref.finalize(self, _exit_context, context, pid)


def _exit_context(context: Any, pid: int) -> None:
    if os.getpid() == pid:  # (a forked child's copies of its parent's sockets are not its own)
        with contextlib.suppress(Exception):
            context.exit_clone()


def _batches(items: list[CommandItem], batch_size: int) -> list[list[CommandItem]]:
    """``items`` in messages of at most ``batch_size`` commands and, where their sizes were
    measured (multiproc), at most :data:`MAX_SENDABLE` bytes: a message past what the
    transport takes would be refused unread, and every command in it time out."""
    batches: list[list[CommandItem]] = []
    batch: list[CommandItem] = []
    size = 0
    for item in items:
        if batch and (len(batch) >= batch_size or size + item.size > MAX_SENDABLE):
            batches.append(batch)
            batch, size = [], 0
        batch.append(item)
        size += item.size
    if batch:
        batches.append(batch)
    return batches


class Courier:
    """Sends a running system's commands and gathers their answers (see the module's
    docstring); ``check_running`` raises once the running system is stopped."""

    def __init__(
        self,
        app: Any,
        actor_system: Any,
        root: Any,
        base: str,
        settings: Settings,
        check_running: Callable[[], None],
        root_moved: Callable[[], bool] = lambda: False,
    ) -> None:
        self.app = app
        self.actor_system = actor_system
        self.root = root
        self.base = base
        self.settings = settings
        # The running system's shard count, as its answers tell (see Executed.shards); until
        # then this application's own.
        self.shards = settings.shards
        self._names_for, self._names = 0, frozenset[str]()  # see _lane_names
        self.check_running = check_running
        # Whether the application's root is elsewhere now (an attached handle's daemon started
        # again: see RunningSystem._root_moved); if so it updated root and forgot the router.
        self.root_moved = root_moved
        self._router: Any = None
        self._admin: tuple[str, int] | None = None  # where the admin listens (see check_admin)
        self._admin_key: bytes | None = None  # its secret (see check_admin)
        self._lock = _SystemLock()
        self._pid = self._owner_pid = os.getpid()  # the process whose main thread owns actor_system
        self._main = _Guarded(actor_system, self.check_admin)  # that main thread's (multiproc)
        self._local = threading.local()
        # Every thread's endpoint; one goes (its sockets closed) when its thread ends.
        self._contexts: weakref.WeakSet[_ThreadEndpoint] = weakref.WeakSet()
        # Every thread's lane connections (a thread's go when it ends; see _lane_client).
        self._lane_clients: weakref.WeakSet[_lane.LaneClient] = weakref.WeakSet()
        # Lanes of aggregates not heard from yet are named after the system (multiproc only).
        self._system_key = (
            _thespian.system_key(actor_system) if base != "simple" and _lane.available() else None
        )
        self._sent = 0
        # stream id -> (actor address, lane name or None) of the aggregates that answered
        self.aggregates: OrderedDict[str, tuple[Any, str | None]] = OrderedDict()
        self._home: Any = None  # the shard that answered last (in-process: the only one)
        # In-process callers' one queue (a thread already inside the actor system skips it).
        self.combiner = _combiner.Combiner(
            self._send_now, self._await_flush, self._late, self._lock.held_here
        )
        # Answers that reached a call they were not for (in-process, a dispatch made inside
        # another call's wait may read that call's reply): kept for their own call to claim.
        self._unclaimed: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._recorder: Any = None  # in-process: the shards' store, whose commits callers flush

    def close(self) -> None:
        """Let go of every thread's lane connections and actor-system handle."""
        with self._lock:
            lane_clients = list(self._lane_clients)
        for lanes in lane_clients:
            if lanes.pid == os.getpid():
                lanes.close()
        with self._lock:
            endpoints = list(self._contexts)
        for held in endpoints:
            held.release()

    def endpoint(self) -> contextlib.AbstractContextManager[Any]:
        """The actor-system handle this thread may use. A forked child (a pre-forking web
        server's worker) never uses its parent's: their copies of one socket would read each
        other's answers; each of its threads gets an endpoint of its own."""
        self.check_running()
        if self.base == "simple":
            return _Locked(self._lock, self.actor_system)
        pid = os.getpid()
        if pid != self._pid:
            self._forked(pid)
        if pid == self._owner_pid and threading.current_thread() is threading.main_thread():
            return _Locked(self._lock, self._main)
        held: _ThreadEndpoint | None = getattr(self._local, "endpoint", None)
        if held is None or held.pid != pid:
            context = _thespian.external_context(self.actor_system)
            held = _ThreadEndpoint(context, pid, self.check_admin)
            self._local.endpoint = held
            with self._lock:
                self._contexts.add(held)
        return contextlib.nullcontext(held.guarded)

    def check_admin(self) -> None:
        """:class:`SystemGone` if the system's admin no longer listens where it did (multiproc):
        nothing listens there, or what does answers not as a system holding its secret (the
        port was taken by another process after the system ended). One connection, one probe
        (``auth.probe``); an admin that accepts it but says nothing in time (busy, or stopped
        by a signal) is not taken for gone: the caller's own timeout still runs."""
        if self._admin is None:
            self._admin_key = _thespian.admin_key(self.actor_system)
            self._admin = _thespian.admin_location(self.actor_system) or ("", 0)
        host, port = self._admin
        if not port:
            return
        if self._admin_key is None:  # (a system started without authentication: no probe)
            holder: bool | None = True if _thespian.port_in_use(port, host) else None
        else:
            try:
                holder = _thespian.probe(host, port, self._admin_key, ADMIN_PATIENCE)
            except _thespian.NotAnswering:
                return
        if holder is None:
            raise SystemGone(
                f"the actor system on {host}:{port} is not running (it was stopped, or it crashed)"
            )
        if not holder:
            raise SystemGone(
                f"the actor system on {host}:{port} is not running: what listens there now does"
                " not answer as it (another process took the port, or a system with another secret)"
            )

    def _forked(self, pid: int) -> None:
        """In a forked child: a lock of its own (another thread of the parent may have held
        it at the fork), and none of the parent's endpoints."""
        self._lock = _SystemLock()
        self._contexts = weakref.WeakSet()
        self._pid = pid

    def router_address(self, refresh: bool = False, patience: float = 10.0) -> Any:
        """The router actor's address (looked up once, waiting ``patience`` seconds at most;
        ``refresh`` looks again). For tools that talk to the actors themselves; dispatching
        needs none of it."""
        router = self._router  # (read once: another thread may forget it meanwhile)
        if router is None or refresh:
            with self.endpoint() as endpoint:
                router = self._router = self._locate_router(endpoint, patience)
        return router

    def _locate_router(self, endpoint: Any, patience: float) -> Any:
        """The router, as the root tells. A root that does not answer within
        :data:`PROBE_EVERY` may be gone with its system, or one started again on the same port
        may have a new one: the admin is asked (``root_moved``), and the rest of ``patience``
        goes to the root it names (before, the whole of it went to the old one)."""
        began = time.monotonic()
        first = min(patience, PROBE_EVERY)
        try:
            return _shared.locate(endpoint, self.root, ROUTER, first, NO_ROUTER)
        except SystemGone:
            raise
        except SystemNotRunning:
            if first >= patience:
                raise
        self.check_admin()
        self.root_moved()
        left = max(0.05, patience - (time.monotonic() - began))
        return _shared.locate(endpoint, self.root, ROUTER, left, NO_ROUTER)

    def send(self, items: list[CommandItem], timeout: float, batch_size: int = 1000) -> list[Any]:
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
        self.check_running()
        if self.base == "simple":
            if self._recorder is None:  # (looked up while running: a stop closes it, see below)
                self._recorder = _shared.shared_store(self.settings).recorder
            # One queue for every thread; its server flushes outside it (see _combiner).
            return self.combiner.submit(items, timeout, batch_size)
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
            try:
                direct = self._by_lane(call, direct)
            except SystemGone as exc:
                self._gone(call, exc)
            if not call.waiting:
                return call.answers, 0
        try:
            self._by_message(call, direct, batch_size)
        except SystemGone as exc:
            self._gone(call, exc)
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
        call.sent = True
        reply = lanes.call(lane, request, min(DIRECT_PATIENCE, call.timeout / 2))
        if isinstance(reply, Executed):
            self._take(reply, call.waiting, call.answers, lane=lane)
        if call.waiting:
            # It stopped, crashed, moved or is slow: the router knows the way, if the system
            # still runs.
            self._forget(stream_id)
            lanes.forget(lane)  # (a failed call closed it already; an empty answer did not)
            self.check_admin()
            # Or the system was started again (same port, same secret): the router this
            # handle knows went with the old one; the new one's is looked up (root_moved).
            self.root_moved()
        return None

    def _by_message(
        self, call: _Call, direct: tuple[Any, str, str | None] | None, batch_size: int
    ) -> None:
        """Send by Thespian message (to the shard ``direct`` names, or the router) and listen
        for the answers until the deadline."""
        # Looked up within the call's own deadline (a dispatch's timeout bounds its wait): no
        # answer by then is this call's timeout, not "the system is not running".
        left = call.deadline - time.monotonic()
        try:
            router = self.router_address(patience=max(0.05, min(10.0, left)))
        except SystemGone:
            raise
        except SystemNotRunning:
            if left >= 10.0 or not call.sent:  # (nothing of it was sent: say why)
                raise
            return  # (the answers still waiting time out: _time_out)
        with self.endpoint() as endpoint:
            me = _thespian.own_address(endpoint)
            call.sent = True
            if direct is not None and me is not None:
                address, stream_id, _ = direct
                call.detour_at = time.monotonic() + min(DIRECT_PATIENCE, call.timeout / 2)
                for batch in _batches(call.items, batch_size):
                    if not _tell(endpoint, address, Execute(batch, me, False, stream_id or None)):
                        call.detour_at = 0.0  # the shard is gone: through the router at once
                        break
                call.direct = stream_id
            else:
                pending = [item for item in call.items if item.request_id in call.waiting]
                for batch in _batches(pending, batch_size):
                    router = self._tell_router(endpoint, call, router, batch, me)
                    if router is None:
                        return  # (what is left times out: _time_out)
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
                # Named: the shard may have run them before it stopped (in-process, a crash
                # after its commit); a repeat is answered from the store, not decided again.
                waiting = [
                    attrs.evolve(call.items[i], idempotent=True) for i in call.waiting.values()
                ]
                call.direct = None
                for batch in _batches(waiting, len(waiting)):
                    router = self._tell_router(endpoint, call, router, batch, me)
                    if router is None:
                        return
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

    def _tell_router(
        self, endpoint: Any, call: _Call, router: Any, items: list[CommandItem], me: Any
    ) -> Any:
        """Tell the router ``items``; if it died under this call (Thespian then raises), tell
        its next instance, the items named (the one that died may have passed them on). The
        router told, or None when none could be (what is left then times out)."""
        if _tell(endpoint, router, Execute(items, me)):
            return router
        self._router = None
        left = call.deadline - time.monotonic()
        try:
            router = self.router_address(patience=max(0.05, min(10.0, left)))
        except SystemGone:
            raise
        except SystemNotRunning:
            return None
        named = [attrs.evolve(item, idempotent=True) for item in items]
        return router if _tell(endpoint, router, Execute(named, me)) else None

    @staticmethod
    def _gone(call: _Call, exc: SystemGone) -> None:
        """What is still waiting gets ``exc``, saying whether it may have run."""
        for index in call.waiting.values():
            name = type(call.items[index].command).__name__
            fate = "it may or may not have been executed" if call.sent else "it was not executed"
            call.answers[index] = SystemGone(f"{name}: {exc}; {fate}")
        call.waiting.clear()

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
        # The store the shard committed to, even if the system stopped (and closed it, after a
        # last flush) since: looking it up again would open the database anew.
        recorder: Any = self._recorder
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
        self,
        reply: Executed,
        waiting: dict[str, int],
        answers: list[Any],
        durable_at: int = 0,
        lane: str | None = None,
    ) -> None:
        """Fill in the answers ``reply`` brings; learn where its aggregate lives. In-process,
        answers for another call are kept for it (see ``_unclaimed``)."""
        if reply.shards and reply.shards != self.shards:
            self._learn_shards(reply, lane)
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
        known = self.aggregates.get(stream_id)
        if known is not None:
            return (known[0], stream_id, known[1])
        if self.base == "simple" and self._home is not None:
            return (self._home, stream_id, None)  # in-process one shard hosts every stream
        if self._system_key is not None:
            return (None, stream_id, self._lane_of(shard_of(stream_id, self.shards)))
        return None

    def _learn_shards(self, reply: Executed, lane: str | None) -> None:
        """Name new streams' lanes after the running system's shard count, as an answer of one
        of its own shards tells it: one that came by a lane of this system (``lane``, the one
        called), or by message from a shard whose lane is one of this system's. In a cluster a
        forwarded command's answer, or a call to the lane it named, comes from another member,
        whose count may differ. The homes remembered so far came from answers: they hold."""
        if self._system_key is None:
            return
        if lane is None and reply.source is not None:
            lane = reply.source[2]
        if lane is None or lane not in self._lane_names(reply.shards):
            return
        log().info(
            "the running system has %d shards (this application says %d)",
            reply.shards,
            self.shards,
        )
        self.shards = reply.shards

    def _lane_names(self, count: int) -> frozenset[str]:
        """The lanes of this system's shards if it ran ``count`` of them (the last count asked
        for is kept: it is asked again only while the answers' count differs from ours)."""
        if self._names_for != count:
            self._names = frozenset(self._lane_of(index) for index in range(count))
            self._names_for = count
        return self._names

    def _lane_of(self, index: int) -> str:
        """The lane of this system's shard ``index`` (multiproc)."""
        assert self._system_key is not None
        return _lane.name_for(self._system_key, self.settings.database, shard_name(index))

    def _remember(self, stream_id: str, address: Any, lane: str | None = None) -> None:
        self._home = address
        if not stream_id:  # a batch's shard (see Executed.source)
            return
        with self._lock:
            self.aggregates[stream_id] = (address, lane)
            self.aggregates.move_to_end(stream_id)
            while len(self.aggregates) > MAX_REMEMBERED:
                self.aggregates.popitem(last=False)

    def _forget(self, stream_id: str) -> None:
        self._home = None
        with self._lock:
            self.aggregates.pop(stream_id, None)

    def _lane_client(self) -> _lane.LaneClient:
        """This thread's lane connections; a forked child closes its copies of its parent's."""
        client: _lane.LaneClient | None = getattr(self._local, "lanes", None)
        if client is not None and client.pid == os.getpid():
            return client
        if client is not None:
            client.close()
        client = _lane.LaneClient()
        with self._lock:
            self.check_running()
            self._lane_clients.add(client)
        self._local.lanes = client
        return client

    def _wait_step(self, remaining: float) -> float:
        # simpleSystemBase runs every actor inside tell(): the answers are there already, and a
        # long listen() would only sleep until the next timer. Poll briefly instead.
        return min(remaining, 0.01) if self.base == "simple" else remaining
