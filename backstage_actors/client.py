"""``RunningSystem``: the caller's side of a running application (public: what every user calls).

``Application.start()`` returns one that owns its actor system (``stop()`` ends it);
``Application.attach()`` returns one on a system started elsewhere (a daemon), which ``stop()``
leaves running. Dispatch commands, wait for consistency, look at the tree, rebuild projections.


Commands go to the router as :class:`Execute` messages; each shard answers the caller directly
with an :class:`Executed`, matched to its request by id (Thespian's ``ask`` returns whatever comes
next, stale answers of timed-out requests included). On simpleSystemBase the actors run inside
these calls: threads put their commands in one queue, and one of them at a time sends all that
is queued as one batch (``_combiner``); on multiproc each thread gets its own endpoint and
commands from many threads are in flight at once. How they travel is ``_courier``'s.
"""

from __future__ import annotations

import contextlib
import pickle
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import attrs

import supervisors

from . import _async, _courier, _shared, _thespian, history, telemetry
from ._event_bus import rebuild_projection, retry_dead_letters, wait_for_position
from ._protocol import Settings
from .aggregate import Aggregate
from .command import CommandItem, DispatchResult, new_item, sendable
from .errors import BackstageError, ConsistencyTimeout, SystemNotRunning
from .middleware import Pipeline
from .store import EventStore

__all__ = ["RunningSystem"]

CONSISTENCIES = ("eventual", "strong")


# What "wait as long as it takes" becomes: seconds (~11 days; poll() takes at most 2**31 ms).
MAX_TIMEOUT = 10.0**6

# What stops a call of the caller's own process (Ctrl-C, a signal handler's sys.exit()) rather
# than failing one command of a batch: dispatch_many lets it through, sending nothing.
_STOPS = (KeyboardInterrupt, SystemExit)

# Seconds an admin has to say where the application's root is (before tree() asks the root
# anyway; when a dispatch looks for a root that moved): one that takes longer is busy or
# stopped, not one whose root ended or moved.
ROOT_PATIENCE = 1.0


def _check_timeout(timeout: float) -> float:
    """A deadline that can never pass (NaN) would wait forever on multiproc: refuse it; an
    infinite one overflows Thespian's timers: it becomes a very long one."""
    if timeout != timeout:
        raise ValueError("timeout must be a number of seconds, not NaN")
    return min(float(timeout), MAX_TIMEOUT)


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
        self._stopped = False
        self._store: Any = None
        self._courier = _courier.Courier(
            app, actor_system, root, base, settings, self._check_running, self._root_moved
        )
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
        return self._courier.endpoint()

    def router_address(self, refresh: bool = False) -> Any:
        """The router actor's address (looked up once; ``refresh`` looks again). For tools that
        talk to the actors themselves; dispatching needs none of it."""
        return self._courier.router_address(refresh)

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
        timeout = _check_timeout(timeout)
        deadline = time.monotonic() + timeout  # (the strong wait gets what is left of it)
        pipeline = Pipeline(command, dict(metadata or {}), consistency)
        try:
            for middleware in self.app.middleware:
                middleware.before_dispatch(pipeline)
                if pipeline.halted:
                    break
        except Exception as exc:  # as a halt: the after_failure hooks hear of it (as in
            pipeline.error = exc  # dispatch_many)
            return self._failed(pipeline)
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
                    left = max(0.05, deadline - time.monotonic())  # (one round trip)
                    self._wait_for(answer.position, handlers, left, timeout)
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
        if timeout is not None:
            timeout = _check_timeout(timeout)
        if isinstance(metadata, Mapping) and metadata.get("command_id") and len(commands) > 1:
            raise ValueError(
                "one command_id for many commands: give metadata as a sequence, one per command"
            )
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
                except _STOPS:  # (Ctrl-C while a big batch is built: the whole call stops)
                    raise
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
            except _STOPS:
                raise
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
            try:
                for middleware in chain:
                    getattr(middleware, hooks)(sent)
            except Exception as exc:  # this command's answer, as dispatch() raises it; the
                answers[index] = exc  # others' answers (stored, some of them) still come back
        return [answer for answer in answers if answer is not None]

    def _item(self, command: Any, metadata: Mapping[str, Any] | None) -> CommandItem:
        """``command`` wrapped for sending, once checked against the application's limits (every
        way in comes here: the API, the CLI, the shell, ``send --file``)."""
        route = self.app.router.routes.get(type(command))
        identity = route.identity if route is not None else None
        item = new_item(command, metadata, self.settings.limits, identity)
        if self.base != "simple":  # it travels as a pickle: check it here, not mid-send
            # (its metadata, up to max_metadata_bytes of JSON, travels in the same message)
            data = sendable(command)
            meta = len(pickle.dumps(item.metadata, pickle.HIGHEST_PROTOCOL))
            item = attrs.evolve(item, size=len(data) + meta, pickled=data)
        return item

    def _send(self, items: list[CommandItem], timeout: float, batch_size: int = 1000) -> list[Any]:
        return self._courier.send(items, timeout, batch_size)

    # -- consistency ------------------------------------------------------------------------

    def wait_for(
        self, position: int, handlers: Sequence[str] | None = None, deadline_in: float = 5.0
    ) -> None:
        """Return once the handlers (named, or all strongly consistent ones) reached ``position``."""
        self._wait_for(position, handlers, deadline_in, deadline_in)

    def _wait_for(
        self, position: int, handlers: Sequence[str] | None, left: float, asked: float
    ) -> None:
        """:meth:`wait_for` within ``left`` seconds, what is left of a call of ``asked``."""
        if not self.app.subscribers:
            return
        if isinstance(handlers, str):  # one name (a str is a sequence: of its letters)
            handlers = [handlers]
        began = time.monotonic()
        try:
            with self._endpoint() as endpoint:
                wait_for_position(endpoint, self.root, position, handlers, left, asked)
        except ConsistencyTimeout:
            # An attached program's daemon may have been started again: its root moved.
            rest = left - (time.monotonic() - began)
            if not self._root_moved() or rest <= 0.05:
                raise
            with self._endpoint() as endpoint:
                wait_for_position(endpoint, self.root, position, handlers, rest, asked)

    def _root_moved(self) -> bool:
        """Whether the application's root is somewhere else now (an attached handle whose
        daemon was stopped and started again): then the handle uses the new one."""
        if self.owns_system or self.base == "simple" or self._stopped:
            return False
        try:
            with self._endpoint() as endpoint:
                return self._follow(self._root_now(endpoint, ROOT_PATIENCE))
        except BackstageError:  # the system is gone: nothing moved that can be found
            return False

    def _root_now(self, endpoint: Any, patience: float = 5.0) -> Any:
        """Where the admin says the application's root supervisor is now: its address; None
        if the admin knows none (the root gave up, or was killed); ``NOT_TOLD`` if that cannot
        be told (no admin answers within ``patience`` seconds; a simple system has none).
        :class:`SystemGone` if the actor system is gone. Looked up, never created (as
        ``attach`` does): an admin whose application ended would get an empty root."""
        if self.base == "simple":
            return _thespian.NOT_TOLD
        try:
            return _thespian.global_address(endpoint, self.app.root_name, patience)
        except _courier.SystemGone:
            raise
        except Exception:  # (no admin answers as one: nothing can be told)
            return _thespian.NOT_TOLD

    def _follow(self, root: Any) -> bool:
        """Use ``root`` (what :meth:`_root_now` found) if it is another than this handle's,
        and this handle does not own its system; whether it did."""
        if root is None or root is _thespian.NOT_TOLD or root == self.root or self.owns_system:
            return False
        self.root = self._courier.root = root
        self._courier._router = None
        return True

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
        """The live supervision tree as nested dicts.

        On multiproc the admin is asked first where the root supervisor is (one round trip):
        a root that ended is said at once, not after the whole timeout, and an attached
        handle whose daemon was started again asks the new one."""
        with self._endpoint() as endpoint:
            root = self._root_now(endpoint, min(timeout, ROOT_PATIENCE))
            if root is None:
                raise SystemNotRunning(
                    f"application {self.app.name!r} is not running: its root supervisor "
                    "ended (it gave up after too many crashes, or was killed); its actor "
                    "system still runs"
                )
            if root is _thespian.NOT_TOLD and self.base != "simple":
                self._courier.check_admin()  # (SystemGone at once if it is gone)
            self._follow(root)
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

    def shutdown(self, timeout: float = 30.0, *, system_deadline: float | None = None) -> None:
        """Stop the application's tree in order (within ``timeout`` seconds), and the actor
        system if this handle owns it: Thespian's admin then waits for its actors, until
        ``system_deadline`` (a ``time.monotonic()`` instant; default: for Thespian's 10 s)."""
        if self._stopped:
            return
        if self.waker is not None:
            self.waker.close()
        until = time.monotonic() + timeout  # (the look at the admin comes out of it)
        try:
            with self._endpoint() as endpoint:
                if not self._root_ended(endpoint, timeout):
                    left = max(0.05, until - time.monotonic())
                    supervisors.stop_supervisor(endpoint, self.root, timeout=left)
        except (supervisors.SupervisionError, BackstageError):
            pass
        finally:
            if self.owns_system:
                _thespian.shutdown(
                    self.actor_system,
                    None if system_deadline is None else system_deadline - time.monotonic(),
                )
            self._release()

    def _root_ended(self, endpoint: Any, timeout: float) -> bool:
        """Whether the admin says the application's root supervisor is gone (it gave up, or
        was killed): then nothing answers a Stop, and asking it waited out the whole timeout
        (30 s by default) before the actor system was shut down."""
        return self._root_now(endpoint, min(timeout, 5.0)) is None

    def _release(self) -> None:
        self._stopped = True
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if self.async_pool is not None:
            _async.close_pool(self)
        self._courier.close()
        _shared.close_shared(self.settings.database)
        if self._store is not None:
            self._store.close()
