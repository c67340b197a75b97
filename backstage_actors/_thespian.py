"""Everything that touches Thespian's internals lives here, behind small functions.

* Thespian binds every TCP socket of an actor system to all interfaces. Its transport carries
  pickles, so anyone who can reach a port can run code: :func:`bind_to` makes the sockets of the
  actor systems this process starts (and the processes they fork) bind to one host, 127.0.0.1 by
  default. It is a patch of ``IPActorAddress``, the one place Thespian computes bind addresses.
* Its TCP transport registers every open socket in a fresh epoll selector each time it waits:
  :func:`use_poll_selector` has it use one poll(2) object instead, one system call for all of
  them and little Python per socket.
* Its transport formats every message it sends or receives for a debug log line, whether or
  not anything is logged (``str(message)``: a whole batch of results): :func:`terse_messages`
  has those lines name the message's type instead.
* A simpleSystemBase remembers every actor that ever ended: :func:`compact_registry` forgets.
  Before every message it delivers, it partitions its timers through ``functools.reduce`` and
  formats a debug line: :func:`lean_simple_base` makes both cheap.
"""

from __future__ import annotations

import math
import os
import select
import selectors
import socket
from typing import Any

from thespian.actors import ActorSystem
from thespian.system import isInternalActorSystemMessage

__all__ = [
    "attach",
    "bind_to",
    "compact_registry",
    "free_port",
    "lean_simple_base",
    "own_address",
    "port_in_use",
    "ready_response",
    "start_actor_system",
    "system_key",
    "terse_messages",
    "use_poll_selector",
]

_bind_host: str | None = None
_patched = False


def bind_to(host: str) -> None:
    """Bind the TCP sockets of actor systems started from now on to ``host``."""
    global _bind_host, _patched
    _bind_host = host
    # Thespian also advertises this address to peers instead of guessing a public one.
    os.environ["THESPIAN_BASE_IPADDR"] = host
    if _patched:
        return
    from thespian.system.transport import IPBase

    original = IPBase.IPActorAddress.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if _bind_host and _bind_host != "0.0.0.0" and self.bindname[0] in ("", "0.0.0.0"):
            self.bindname = (_bind_host, self.bindname[1])

    IPBase.IPActorAddress.__init__ = __init__
    _patched = True


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
    instead of a fresh epoll set filled a system call per socket.

    The transport builds a new selector and registers every open socket each time it waits, so
    with epoll every wait costs a system call per socket; poll(2) takes them all in one. With a
    hundred aggregate processes this was 25-30 % more commands per second (bench/). The change
    is confined to the transport module's own reference to ``selectors``.
    """
    import types

    from thespian.system.transport import TCPTransport

    if getattr(TCPTransport.selectors, "DefaultSelector", None) is LeanPollSelector:
        return
    TCPTransport.selectors = types.SimpleNamespace(
        DefaultSelector=LeanPollSelector,
        EVENT_READ=selectors.EVENT_READ,
        EVENT_WRITE=selectors.EVENT_WRITE,
    )


def terse_messages() -> None:
    """Have Thespian's transport describe a message by its type in its (debug) log lines.

    ``ReceiveEnvelope.identify`` and ``TransmitIntent.identify`` run for every message, logged or
    not, and they call ``str(message)``: for a batch of recorded events that cost as much as
    pickling it (about 10 % of an aggregate process's time on multiproc).
    """
    from thespian.system import transport

    def envelope(self: Any) -> str:
        return f"ReceiveEnvelope(from: {self.sender}, msg: {type(self.message).__name__})"

    def intent(self: Any) -> str:
        return f"TransmitIntent({self.targetAddr}, msg: {type(self.message).__name__})"

    transport.ReceiveEnvelope.identify = envelope
    transport.TransmitIntent.identify = intent


def lean_simple_base() -> None:
    """Make simpleSystemBase's per-message bookkeeping cheap; it runs ~3 times per command.

    * ``_pop_expired_wakeups`` partitions the pending timers with ``functools.reduce`` and two
      lambdas for every message; here it compares each timer's deadline with the time, and
      builds new lists only when one is due.
    * ``actor_base_receive`` calls ``logging.getLogger`` and ``debug`` before every delivery;
      here the debug line is formatted only when Thespian's logger would emit it.
    * ``_runSingleSend`` checks every message against the system's own kinds (exit requests,
      status requests, source loading, dead letters, retries of a failed delivery); a first
      delivery of a user message to a live actor goes straight to the actor here. A user
      message to an actor that was stopped but whose exit its parent has not handled yet goes
      to the dead-letter handler (Thespian drops it: its sender would never know). Everything
      else takes Thespian's way.
    """
    import logging

    from thespian.actors import ActorSystemMessage, DeadEnvelope
    from thespian.system import simpleSystemBase as simple

    if getattr(simple.WakeupManager._pop_expired_wakeups, "lean", False):
        return

    def pop_expired_wakeups(self: Any, ct: Any) -> list[Any]:
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

    pop_expired_wakeups.lean = True  # type: ignore[attr-defined]
    thespian_log = logging.getLogger("Thespian")

    def actor_base_receive(actor: Any, msg: Any, sender: Any) -> None:
        if thespian_log.isEnabledFor(logging.DEBUG):
            thespian_log.debug('Actor "%s" got message "%s" from "%s"', actor, msg, sender)
        actor.receiveMessage(msg, sender)

    thespian_send = simple.ActorSystemBase._runSingleSend

    def run_single_send(self: Any, pending: Any) -> None:
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
        thespian_send(self, pending)

    simple.WakeupManager._pop_expired_wakeups = pop_expired_wakeups
    simple.actor_base_receive = actor_base_receive
    simple.ActorSystemBase._runSingleSend = run_single_send


def ready_response(endpoint: Any) -> Any:
    """The next answer already delivered to a simpleSystemBase caller, or None.

    That base runs every actor inside ``tell()``: when it returns, the answers are in the
    caller's inbox, and ``listen()`` would only walk the timers and the send queue again first.
    """
    base = getattr(endpoint, "_systemBase", None)
    registry = getattr(base, "actorRegistry", None)
    if registry is None:
        return None
    responses = getattr(registry["System:ExternalRequester"].instance, "responses", None)
    while responses:
        response = responses.pop(0)
        if not isInternalActorSystemMessage(response):
            return response
    return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts connections on ``host:port`` (probe before attaching)."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def start_actor_system(
    base: str, port: int | None = None, host: str = "127.0.0.1", log_defs: Any = None
) -> Any:
    """A new actor system: ``simple`` in this thread, or ``multiproc`` (TCP admin on host:port)."""
    if base == "simple":
        lean_simple_base()
        return ActorSystem("simpleSystemBase", logDefs=log_defs, transientUnique=True)
    if base != "multiproc":
        raise ValueError(f"base must be 'simple' or 'multiproc', not {base!r}")
    bind_to(host)
    use_poll_selector()
    terse_messages()
    capabilities = {"Admin Port": port or free_port(host)}
    return ActorSystem("multiprocTCPBase", capabilities, logDefs=log_defs, transientUnique=True)


def own_address(endpoint: Any) -> Any:
    """The address actors see as this external endpoint's (None if it cannot be told)."""
    base = getattr(endpoint, "_systemBase", None)
    transport = getattr(base, "transport", None)
    if transport is not None:
        return getattr(transport, "myAddress", None)
    requester = getattr(base, "actorRegistry", {}).get("System:ExternalRequester")
    return getattr(requester, "address", None)


def system_key(handle: Any) -> str | None:
    """Text naming the actor system that ``handle`` (an ``ActorSystem`` or an actor) belongs
    to, the same from every process of it: its admin's address. None if it cannot be told."""
    admin = getattr(getattr(handle, "_systemBase", None), "adminAddr", None)
    if admin is None:
        admin = getattr(getattr(handle, "_myRef", None), "_adminAddr", None)
    return None if admin is None else str(admin)


def attach(port: int, host: str = "127.0.0.1") -> Any:
    """Attach to the running multiproc system on ``port`` without ever starting one."""
    if not port_in_use(port, host):
        raise ConnectionRefusedError(f"no actor system listens on {host}:{port}")
    bind_to(host)
    use_poll_selector()
    terse_messages()
    return ActorSystem("multiprocTCPBase", {"Admin Port": port}, transientUnique=True)


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
