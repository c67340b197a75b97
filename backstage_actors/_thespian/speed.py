"""The performance patches of Thespian (see the table in ``backstage_actors._thespian``).

Each is a function that patches once and can be called again; each keeps Thespian's behaviour
and changes only what it costs, except where its docstring says otherwise.
"""

from __future__ import annotations

import logging
import math
import select
import selectors
import types
from typing import Any

from thespian.actors import ActorAddress, ActorSystem, ActorSystemMessage, DeadEnvelope
from thespian.system import simpleSystemBase as simple

from .auth import AuthenticatedTCPTransport, current

__all__ = [
    "LeanPollSelector",
    "LeanSimpleBase",
    "compact_registry",
    "lean_simple_system",
    "run_actors_on_a_floor",
    "terse_messages",
    "use_poll_selector",
]


class LeanPollSelector:
    """The part of a ``selectors`` selector that Thespian's TCP transport uses (``register``,
    ``select``, ``close``) on one poll(2) object, with the standard ``PollSelector``'s answers
    and errors (``ValueError`` for a negative descriptor, which the transport handles as a bad
    one; ``KeyError`` for a second registration).

    The transport builds a selector and registers every open socket at each wait: the standard
    one spends ~2 µs of Python per registration, this one a dict insert and a C call.
    """

    __slots__ = ("_events", "_poll")

    def __init__(self) -> None:
        self._poll = select.poll()
        self._events: dict[int, int] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> None:
        fd = fileobj if isinstance(fileobj, int) else int(fileobj.fileno())
        if fd < 0:
            raise ValueError(f"Invalid file descriptor: {fd}")
        if fd in self._events:
            raise KeyError(f"{fileobj!r} (FD {fd}) is already registered")
        mask = (select.POLLIN if events & selectors.EVENT_READ else 0) | (
            select.POLLOUT if events & selectors.EVENT_WRITE else 0
        )
        self._poll.register(fd, mask)
        self._events[fd] = events

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None:
            timeout = 0 if timeout <= 0 else math.ceil(timeout * 1e3)
        ready = []
        for fd, event in self._poll.poll(timeout):
            events = 0
            if event & ~select.POLLIN:
                events |= selectors.EVENT_WRITE
            if event & ~select.POLLOUT:
                events |= selectors.EVENT_READ
            wanted = self._events.get(fd)
            if wanted is not None:
                ready.append((selectors.SelectorKey(fd, fd, wanted, None), events & wanted))
        return ready

    def close(self) -> None:
        self._events.clear()


def use_poll_selector() -> None:
    """Make Thespian's TCP transport wait with one poll(2) per wait (:class:`LeanPollSelector`)
    instead of a fresh epoll set filled a system call per socket, in Backstage's systems.

    The transport builds a new selector and registers every open socket each time it waits, so
    with epoll every wait costs a system call per socket; poll(2) takes them all in one. With a
    hundred aggregate processes this was 25-30 % more commands per second (bench/). The change
    is confined to the transport module's own reference to ``selectors``, and outside a
    Backstage system's transport that reference gives the standard selector.
    """
    from thespian.system.transport import TCPTransport

    if getattr(TCPTransport.selectors, "DefaultSelector", None) is _selector:
        return
    TCPTransport.selectors = types.SimpleNamespace(
        DefaultSelector=_selector,
        EVENT_READ=selectors.EVENT_READ,
        EVENT_WRITE=selectors.EVENT_WRITE,
    )


def _selector() -> Any:
    return LeanPollSelector() if current() is not None else selectors.DefaultSelector()


# Slots of the floor frame: 64 KiB and more, larger than any chunk CPython gives ordinary frames
# (16 KiB: a frame of over ~1,000 slots is needed for more), so the floor always begins a chunk
# of its own, of 128 KiB, and leaves the ~62 KiB after it to what the actor's loop calls.
FLOOR_SLOTS = 8_200


def _on_a_floor(run: Any, *args: Any) -> Any:
    return run(*args)


_on_a_floor.__code__ = _on_a_floor.__code__.replace(
    co_stacksize=_on_a_floor.__code__.co_stacksize + FLOOR_SLOTS
)


def run_actors_on_a_floor() -> None:
    """Start each actor process of a Backstage system (Thespian's ``startChild``) from a frame
    that begins a data-stack chunk of its own, in which its whole message loop then runs.

    CPython 3.11 keeps frames in 16 KiB chunks and frees a chunk as soon as the call that opened
    it returns (python/cpython#142183; 2026 releases of 3.13 on keep one spare): a loop whose
    calls cross a chunk's end maps and unmaps a chunk each time. Thespian forks an actor from
    inside its parent's message handling, so each generation starts deeper, at an arbitrary
    place in a chunk; measured in the bank's process manager under load, 7,000 mmap/munmap
    pairs a second and 30 % of its CPU in the kernel for them. Actor processes of other
    Thespian systems start as before.
    """
    from thespian.system import multiprocCommon

    thespian_start = multiprocCommon.startChild
    if getattr(thespian_start, "floored", False):
        return

    def startChild(*args: Any) -> Any:  # (Thespian's name: picklable as its own)
        transport = args[3] if len(args) > 3 else None
        if isinstance(transport, type) and issubclass(transport, AuthenticatedTCPTransport):
            return _on_a_floor(thespian_start, *args)
        return thespian_start(*args)

    startChild.floored = True  # type: ignore[attr-defined]
    startChild.__module__ = thespian_start.__module__
    startChild.__qualname__ = thespian_start.__qualname__
    multiprocCommon.startChild = startChild


def terse_messages() -> None:
    """Have Thespian's transport describe a message by its type in its (debug) log lines, in
    Backstage's systems (elsewhere Thespian's own description).

    ``ReceiveEnvelope.identify`` and ``TransmitIntent.identify`` run for every message, logged or
    not, and they call ``str(message)``: for a batch of recorded events that cost as much as
    pickling it (about 10 % of an aggregate process's time on multiproc).
    """
    from thespian.system import transport

    if getattr(transport.ReceiveEnvelope.identify, "terse", False):
        return
    thespian_envelope = transport.ReceiveEnvelope.identify
    thespian_intent = transport.TransmitIntent.identify

    def envelope(self: Any) -> str:
        if current() is None:
            return str(thespian_envelope(self))
        return f"ReceiveEnvelope(from: {self.sender}, msg: {type(self.message).__name__})"

    def intent(self: Any) -> str:
        if current() is None:
            return str(thespian_intent(self))
        return f"TransmitIntent({self.targetAddr}, msg: {type(self.message).__name__})"

    envelope.terse = intent.terse = True  # type: ignore[attr-defined]
    transport.ReceiveEnvelope.identify = envelope
    transport.TransmitIntent.identify = intent


class LeanSimpleBase(simple.ActorSystemBase):
    """simpleSystemBase with cheap per-message bookkeeping (it runs ~3 times per command), for
    the simple systems Backstage starts (:func:`lean_simple_system`); other systems keep
    Thespian's own base.

    * ``_pop_expired_wakeups`` partitions the pending timers with ``functools.reduce`` and two
      lambdas for every message; here it compares each timer's deadline with the time, and
      builds new lists only when one is due.
    * Thespian's ``actor_base_receive`` calls ``logging.getLogger`` and ``debug`` before every
      delivery; here the debug line is formatted only when Thespian's logger would emit it.
    * ``_runSingleSend`` checks every message against the system's own kinds (exit requests,
      status requests, source loading, dead letters, retries of a failed delivery); a first
      delivery of a user message to a live actor goes straight to the actor here. A user
      message to an actor that was stopped but whose exit its parent has not handled yet goes
      to the dead-letter handler (Thespian drops it: its sender would never know). Everything
      else takes Thespian's way.
    """

    _wakeUps: list[Any]

    def _pop_expired_wakeups(self, ct: Any) -> list[Any]:
        # (target, ExpirationTimer, payload); a timer without a deadline never expires
        for _, timer, _ in self._wakeUps:
            deadline = timer._time_to_quit
            if deadline is not None and ct >= deadline:
                break
        else:
            return []
        expired: list[Any] = []
        pending: list[Any] = []
        for wakeup in self._wakeUps:
            (expired if wakeup[1].view(ct).expired() else pending).append(wakeup)
        self._wakeUps = pending
        return expired

    def _newRefAndActor(self, *args: Any, **kwargs: Any) -> Any:
        ref = super()._newRefAndActor(*args, **kwargs)
        if ref.instance:
            ref.instance._receive = types.MethodType(_receive, ref.instance)
        return ref

    def _runSingleSend(self, pending: Any) -> None:
        if pending.attempts == 0 and not isinstance(pending.msg, ActorSystemMessage):
            to = pending.toActor.actorAddressString
            target = self.actorRegistry.get(to)
            if target is not None and target.instance:
                self._callActorWithMessage(target, pending, pending.msg, pending.sender)
                return
            letters = self.actorRegistry.get("DeadLetterBox")
            if target is not None and letters is not None and letters.instance:
                dead = DeadEnvelope(to, pending.msg)
                self._callActorWithMessage(letters, pending, dead, pending.sender)
                return
        super()._runSingleSend(pending)


_thespian_log = logging.getLogger("Thespian")


def _receive(actor: Any, msg: Any, sender: Any) -> None:
    if _thespian_log.isEnabledFor(logging.DEBUG):
        _thespian_log.debug('Actor "%s" got message "%s" from "%s"', actor, msg, sender)
    actor.receiveMessage(msg, sender)


def lean_simple_system(log_defs: Any = None) -> Any:
    """A new simpleSystemBase actor system on :class:`LeanSimpleBase`."""
    system = ActorSystem.__new__(ActorSystem)
    system.systemAddress = ActorAddress("/ActorSys")  # what ActorSystem.__init__ would set
    system.capabilities = {}
    base = LeanSimpleBase(system, logDefs=log_defs)
    system._startupActorSys(None, base, system.capabilities, log_defs)
    system._isTransientUnique = True
    return system


def compact_registry(actor_system: Any) -> int:
    """Forget the actors that ended in a simpleSystemBase; returns how many entries went.

    That base keeps a ``None`` under every dead actor's address forever (~200 bytes each): an
    application passivating aggregates all day would grow without bound. A missing entry and a
    ``None`` one are treated alike when a message arrives, so dropping them changes nothing else.
    """
    registry = getattr(getattr(actor_system, "_systemBase", None), "actorRegistry", None)
    if not isinstance(registry, dict):
        return 0
    dead = [address for address, ref in registry.items() if ref is None]
    for address in dead:
        del registry[address]
    return len(dead)
