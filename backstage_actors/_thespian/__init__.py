"""Every adaptation of Thespian, and every read of its internals, for the version pinned below.

| target (Thespian 4.0.1) | change | reason | kind | felt by |
|---|---|---|---|---|
| ``TCPTransport``: a subclass per system (``auth``) | an HMAC on every frame, checked before anything is unpickled; refusals logged at a bounded rate | its ports unpickle what anyone sends | security | Backstage's systems only |
| ``TCPTransport._acceptNewIncoming``, ``_incomingSockets`` (``auth``) | at most 64 accepted connections per port that have sent no authentic frame; the oldest is closed | idle connections from anyone exhaust the process's descriptors (the admin then dies) | security | Backstage's systems only |
| ``TCPTransport.__init__`` in a process of the system (``auth.drop_inherited``) | first close the sockets inherited from client transports (the starter's listening one) and, in Thespian's logger, the admin's | a fork closes nothing: every daemon process held the starter's listening socket, the logger the admin's port | security | Backstage's systems only |
| ``TCPTransport`` module's ``ReceiveBuffer`` name (``auth``) | a factory: the authenticating buffer while a Backstage transport works | Thespian makes buffers where the transport is out of sight | security | nobody else: Thespian's own buffer otherwise |
| ``IPBase.IPActorAddress.__init__`` (``auth``) | bind to and advertise the system's host (127.0.0.1) | Thespian binds every interface | security | nobody else: unchanged outside a Backstage system |
| ``utilis._thesplog_file`` (``start_actor_system``, ``auth``) | Thespian's own log in a private file | ``/tmp/thespian.log`` is world-readable and opened through symlinks | security | the system's processes; the process that starts or attaches only if it would log to that default |
| ``TCPTransport.scheduleTransmit`` of the same subclass, for ``logging.LogRecord`` messages (``auth._LogRecords``) | at most 8 records in flight to Thespian's logger per process; the next wait in that process, in order, sent as those are acknowledged; past 10,000 held, dropped and counted (the next record sent says how many) | Thespian counts log records with every other message against its 20 transmits in flight, in one queue, and waits for the logger's acknowledgement of each: with the logger stopped (SIGSTOP, a full disk) an actor that logs could send nothing to anyone after 20 lines (a strong handler's dispatches timed out); with a healthy logger one that logs fast waited for it between its messages (5,000 logging events: 10.6 s to settle, 0.9 s now) | semantics, performance | Backstage's systems only |
| ``TCPTransport`` module's ``selectors`` (``speed``) | one poll(2) per wait | a fresh epoll set per wait | performance | nobody else: the standard selector outside a Backstage system |
| ``ReceiveEnvelope.identify``, ``TransmitIntent.identify`` (``speed``) | name a message's type | ``str(message)`` for every message | performance | nobody else: Thespian's text outside a Backstage system |
| ``multiprocCommon.startChild`` (``speed.run_actors_on_a_floor``) | an actor process's loop runs from a frame that opens a 128 KiB data-stack chunk | CPython 3.11 maps and unmaps a 16 KiB chunk at every call across a chunk's end (python/cpython#142183), and a forked actor starts at an arbitrary depth: up to 30 % of an actor process's CPU, half the daemon's in the bank's chaos drill | performance | Backstage's systems only: other transports' actors start as before |
| ``wakeupTransportBase.run_time`` of ``TCPTransport``: a property of the same subclass (``auth``) | a deadline not yet due has at least 1 µs left | its loop waits on its sockets for the deadline's ``remaining()`` timedelta, and one under 0.5 µs rounds to ``timedelta(0)``, which it drops: it then waits with no timeout, and a wakeup (a subscriber's next page, its slow poll) comes only with the next message | semantics | Backstage's systems only |
| ``wakeupTransportBase._run_subtransport``, for a Backstage transport run with ``TransmitOnly`` (``timers``) | it waits for its transmits up to the caller's limit and leaves the wakeups pending; the next run that handles messages delivers them, overdue; it puts the transport's deadline back as it ends (the drain runs inside a handler's send, and the loop that ran the handler waits for that deadline) | with 950 messages queued (to a stopped or slow target) a process drains its queue with ``run(TransmitOnly)``, which returned each wakeup that came due to that drain loop, and the loop dropped it: a subscriber whose reports to a stopped event bus piled up lost its slow poll, and every later one (events stored with no notice to the bus were never handled); a drain left the deadline at its own limit, so a wakeup armed before it came up to 5 minutes late (300 s measured) | semantics | Backstage's systems only |
| simpleSystemBase ``_pop_expired_wakeups``, ``_newRefAndActor`` (its ``actor_base_receive``): a subclass (``speed.LeanSimpleBase``) | cheap timers and debug lines | ~3 times per command | performance | Backstage's simple systems only |
| simpleSystemBase ``_runSingleSend``: the same subclass | a first delivery goes straight to a live actor; to a stopped one whose exit its parent has not handled, to the dead letters | cost; Thespian drops that message silently | performance, semantics | Backstage's simple systems only |
| simpleSystemBase ``actorRegistry`` (``compact_registry``) | forget ended actors | it grows without bound | performance | the system passed |
| ``admin.convention.CONVENTION_REREGISTRATION_PERIOD``, ``CONVENTION_RESTART_PERIOD`` (``convention``, a cluster member only) | 2 s instead of 7 min 22 s and 3 min 22 s | a dead member is seen after 3 missed registrations (6 s); a member's first check comes before the leader drops it | failure detection | the admins of cluster members |
| ``multiprocCommon.MultiProcAdmin.logDefs`` (``keep_the_logger``) | a property reading the ``logdefs`` the admin keeps | when its logger process dies the admin starts another with ``self.logDefs``, an attribute it never set: the AttributeError ended the admin, and the whole daemon with it | semantics | Backstage's systems only (an admin forked by ``start_actor_system``) |
| ``systemBase.MAX_SYSTEM_SHUTDOWN_DELAY`` during one ``shutdown`` call (``shutdown``) | what is left of the caller's deadline instead of 10 s | ``backstage stop --timeout T`` must end within T | semantics | the process that stops a daemon, for that call |
| reads: ``_systemBase``, ``actorRegistry``, ``System:ExternalRequester``, ``transport.myAddress``, ``adminAddr``, ``_myRef._adminAddr``, ``external_clone()`` | none | answers already delivered, own address, a system's identity, a context per thread | read | - |

Thespian's behaviour Backstage relies on without patching it (tested in
``tests/test_thespian_patches.py``): a message to an actor that has exited reaches the actor
that called ``handleDeadLetters()`` as a ``DeadEnvelope`` carrying the message, on both bases
(the router routes such commands again).

Importing this module with another Thespian version fails: the patches reach into internals.
"""

from __future__ import annotations

import errno
import socket
from importlib.metadata import version as _installed_version
from typing import Any

THESPIAN_VERSION = "4.0.1"
if _installed_version("thespian") != THESPIAN_VERSION:  # before anything reaches inside it
    raise ImportError(
        f"backstage_actors is written against thespian=={THESPIAN_VERSION} (it adapts its "
        f"internals, authentication included) and found {_installed_version('thespian')}: "
        f"pip install thespian=={THESPIAN_VERSION}"
    )

from thespian.actors import ActorAddress, ActorSystem, ExternalContext  # noqa: E402
from thespian.system import isInternalActorSystemMessage  # noqa: E402
from thespian.system import utilis as _utilis  # noqa: E402
from thespian.system.messages.status import (  # noqa: E402
    Thespian_StatusReq,
    Thespian_SystemStatus,
)

from .. import _security  # noqa: E402
from . import auth  # noqa: E402
from .auth import AuthenticationRefused, NotAnswering, probe  # noqa: E402
from .speed import (  # noqa: E402
    LeanPollSelector,
    LeanSimpleBase,
    compact_registry,
    lean_simple_system,
    run_actors_on_a_floor,
    terse_messages,
    use_poll_selector,
)
from .timers import keep_wakeups_while_transmitting  # noqa: E402

__all__ = [
    "NOT_TOLD",
    "THESPIAN_VERSION",
    "AuthenticationRefused",
    "LeanPollSelector",
    "LeanSimpleBase",
    "NotAnswering",
    "admin_key",
    "admin_location",
    "admin_status",
    "attach",
    "compact_registry",
    "external_context",
    "free_port",
    "global_address",
    "lean_simple_system",
    "local_address",
    "own_address",
    "port_in_use",
    "probe",
    "ready_response",
    "shutdown",
    "start_actor_system",
    "system_key",
    "terse_messages",
    "use_poll_selector",
]

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def start_actor_system(
    base: str,
    port: int | None = None,
    host: str = "127.0.0.1",
    log_defs: Any = None,
    secret: bytes | None = None,
    thespian_log: str | None = None,
    authenticate: bool = True,
    capabilities: dict[str, Any] | None = None,
) -> Any:
    """A new actor system: ``simple`` in this thread, or ``multiproc`` (TCP admin on host:port).

    ``capabilities`` are added to the admin's (a cluster member's: see ``convention``).

    On multiproc every connection is authenticated with ``secret`` (default: ``_security.secret()``,
    from the environment or ``$BACKSTAGE_HOME/secret``) and Thespian's own log goes to
    ``thespian_log`` (default ``$BACKSTAGE_HOME/thespian.log``). ``authenticate=False`` exists for
    measurements, and only on a loopback host.
    """
    if base == "simple":
        return lean_simple_system(log_defs)
    if base != "multiproc":
        raise ValueError(f"base must be 'simple' or 'multiproc', not {base!r}")
    if not authenticate and host not in LOOPBACK:
        raise ValueError(f"refusing to listen on {host} without authentication")
    use_poll_selector()
    terse_messages()
    run_actors_on_a_floor()
    keep_the_logger()
    keep_wakeups_while_transmitting()
    capabilities = {**(capabilities or {}), "Admin Port": port or free_port(host)}
    return _system(_scope(secret, host, thespian_log, authenticate), capabilities, log_defs)


def keep_the_logger() -> None:
    """Let the admin start a new logger process when its logger dies (see the table above)."""
    from thespian.system.multiprocCommon import MultiProcAdmin

    if not hasattr(MultiProcAdmin, "logDefs"):
        MultiProcAdmin.logDefs = property(lambda admin: admin.logdefs)


def attach(
    port: int,
    host: str = "127.0.0.1",
    secret: bytes | None = None,
    thespian_log: str | None = None,
    authenticate: bool = True,
    patience: float = 5.0,
) -> Any:
    """Attach to the running multiproc system on ``port`` without ever starting one.

    ConnectionRefusedError if nothing listens there; :class:`AuthenticationRefused` if what
    listens does not hold this process's secret; :class:`NotAnswering` if it accepts the
    connection but says nothing within ``patience`` seconds (a stopped or overloaded admin).
    ``authenticate=False`` (measurements, loopback only) attaches to a system started without
    authentication.
    """
    use_poll_selector()
    terse_messages()
    if not authenticate:
        if host not in LOOPBACK or not port_in_use(port, host):
            raise ConnectionRefusedError(f"no unauthenticated actor system on {host}:{port}")
        return _system(_scope(None, host, thespian_log, False), {"Admin Port": port}, None)
    scope = _scope(secret, local_address(host), thespian_log)
    try:
        verdict = probe(host, port, scope.signer().key, patience)
    except NotAnswering:
        raise NotAnswering(
            f"the actor system on {host}:{port} accepts connections but did not answer within "
            f"{patience:.1f}s (its admin is stopped, or too busy to read its sockets)"
        ) from None
    if verdict is None:
        raise ConnectionRefusedError(f"no actor system listens on {host}:{port}")
    if not verdict:
        raise AuthenticationRefused(
            f"the actor system on {host}:{port} refused this client's secret (it was started "
            "with another: check BACKSTAGE_HOME, BACKSTAGE_SECRET and BACKSTAGE_SECRET_FILE)"
        )
    return _system(scope, {"Admin Port": port}, None)


def local_address(host: str) -> str:
    """The address of this machine that reaches ``host``: what a client binds to and gives as
    its own (``host`` itself on this machine's loopback, where the tests' members live)."""
    if host in LOOPBACK or host.startswith("127.") or host in ("", "0.0.0.0"):
        return host
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((host, 9))  # (UDP: no packet is sent; the kernel picks the route)
            return str(sock.getsockname()[0])
        except OSError:
            return host


def _scope(
    secret: bytes | None, host: str, thespian_log: str | None, authenticate: bool = True
) -> auth.Scope:
    auth.install()
    log = thespian_log or str(_security.home() / "thespian.log")
    _security.create_private(log)  # refuses a symlink; Thespian then appends to this file
    _own_thesplog(log)
    if not authenticate:
        return auth.Scope(None, host, log)
    return auth.Scope(secret if secret is not None else _security.secret(), host, log)


def _own_thesplog(path: str) -> None:
    """Point this process's Thespian log at ``path`` if it would go to Thespian's default file
    in the shared temporary directory (a ``THESPLOG_FILE`` of the user's is kept)."""
    import os
    import tempfile

    default = os.path.join(os.getenv("TMPDIR", tempfile.gettempdir()), "thespian.log")
    if not os.getenv("THESPLOG_FILE") and _utilis._thesplog_file in (None, default):
        _utilis._thesplog_file = path
        _utilis._thesplog_old_file = path + ".old"


def _system(scope: auth.Scope, capabilities: dict[str, Any], log_defs: Any) -> Any:
    """An ActorSystem on ``auth.system_base(scope)``, built as ``ActorSystem.__init__`` would."""
    system = ActorSystem.__new__(ActorSystem)
    system.systemAddress = ActorAddress("/ActorSys")  # what ActorSystem.__init__ would set
    system.capabilities = capabilities
    base_class = auth.system_base(scope)
    # The admin is forked in here: it takes the scope and the log file with it.
    saved = _utilis._thesplog_file, _utilis._thesplog_old_file
    _utilis._thesplog_file, _utilis._thesplog_old_file = (
        scope.thespian_log,
        f"{scope.thespian_log}.old",
    )
    try:
        with auth.entered(scope):
            base = base_class(system, logDefs=log_defs)
    finally:
        _utilis._thesplog_file, _utilis._thesplog_old_file = saved
    system._startupActorSys(None, base, capabilities, log_defs)
    system._isTransientUnique = True
    return system


def external_context(actor_system: Any) -> Any:
    """A context of its own for a thread other than the one that made ``actor_system``."""
    return ExternalContext(actor_system._systemBase.external_clone())


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
    """Whether something listens on ``host:port`` (probe before attaching or binding).

    Only a refusal (or no route) says no: a connection that does not complete in time is a
    listener whose queue of connections is full, as under a flood of them, not an empty port.
    Every address ``host`` resolves to is tried, IPv6 too (a name for both, ``localhost``, is in
    use if either is); ``socket.gaierror`` if it resolves to none.
    """
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        try:
            sock = socket.socket(family, kind, proto)
        except OSError:  # (a family this machine cannot open)
            continue
        with sock:
            sock.settimeout(0.5)
            if sock.connect_ex(address) not in _NOBODY_THERE:
                return True
    return False


_NOBODY_THERE = frozenset(
    {
        errno.ECONNREFUSED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EADDRNOTAVAIL,
        errno.EAFNOSUPPORT,
    }
)


def own_address(endpoint: Any) -> Any:
    """The address actors see as this external endpoint's (None if it cannot be told)."""
    base = getattr(endpoint, "_systemBase", None)
    transport = getattr(base, "transport", None)
    if transport is not None:
        return getattr(transport, "myAddress", None)
    requester = getattr(base, "actorRegistry", {}).get("System:ExternalRequester")
    return getattr(requester, "address", None)


def admin_status(endpoint: Any, timeout: float = 5.0) -> Any:
    """Thespian's own status of the admin ``endpoint`` is attached to (its capabilities, the
    global names it holds, its convention), or None if it does not answer in ``timeout``.
    How a client learns what runs at a ``host:port`` it has no state file for."""
    admin = getattr(getattr(endpoint, "_systemBase", None), "adminAddr", None)
    if admin is None:
        return None
    import time

    deadline = time.monotonic() + timeout
    reply = endpoint.ask(admin, Thespian_StatusReq(), timeout)
    # (an answer that came too late for an earlier question of this endpoint's may come first)
    while not isinstance(reply, Thespian_SystemStatus):
        left = deadline - time.monotonic()
        if reply is None and left <= 0:
            return None
        reply = endpoint.listen(max(0.0, left))
        if reply is None and deadline <= time.monotonic():
            return None
    return reply


def shutdown(actor_system: Any, timeout: float | None = None) -> None:
    """``actor_system.shutdown()``, waiting at most ``timeout`` seconds for the admin to say it
    stopped (Thespian waits ``MAX_SYSTEM_SHUTDOWN_DELAY``, 10 s, whatever the caller can wait;
    None keeps that). A caller with a deadline (``backstage stop --timeout``) ends whatever is
    left by signals."""
    if timeout is None:
        actor_system.shutdown()
        return
    from datetime import timedelta

    from thespian.system import systemBase

    saved = systemBase.MAX_SYSTEM_SHUTDOWN_DELAY
    systemBase.MAX_SYSTEM_SHUTDOWN_DELAY = timedelta(seconds=max(0.0, timeout))
    try:
        actor_system.shutdown()
    finally:
        systemBase.MAX_SYSTEM_SHUTDOWN_DELAY = saved


def admin_location(handle: Any) -> tuple[str, int] | None:
    """``(host, port)`` where the admin of the system ``handle`` talks to listens (None if it
    cannot be told): :func:`probe` it to learn whether the system still runs."""
    admin = getattr(getattr(handle, "_systemBase", None), "adminAddr", None)
    if admin is None:
        return None
    try:
        host, port = admin.addressDetails.connectArgs[0][:2]
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    return str(host or "127.0.0.1"), int(port)


def admin_key(handle: Any) -> bytes | None:
    """The secret the system ``handle`` talks to authenticates with (None: it does not, or it
    cannot be told): :func:`probe` tells its admin from another process on its port."""
    transport = getattr(getattr(handle, "_systemBase", None), "transport", None)
    codec = getattr(getattr(transport, "scope", None), "codec", None)
    key = getattr(codec, "key", None)
    return key if isinstance(key, bytes) else None


class NOT_TOLD:
    """What :func:`global_address` returns when no admin answers (a simple system has none)."""


def global_address(endpoint: Any, name: str, timeout: float = 5.0) -> Any:
    """The address of the actor known by ``globalName=name`` to the admin ``endpoint`` is
    attached to, None if it knows no such actor, :class:`NOT_TOLD` if it does not answer.

    Never creates one, as ``createActor(cls, globalName=name)`` does when the name is free: a
    client looking for an application's root in an admin whose application has ended (its root
    supervisor gave up, or was killed) would start an empty root supervisor there."""
    status = admin_status(endpoint, timeout)
    if status is None:
        return NOT_TOLD
    return status.globalActors.get(name)


def system_key(handle: Any) -> str | None:
    """Text naming the actor system that ``handle`` (an ``ActorSystem`` or an actor) belongs
    to, the same from every process of it: its admin's address. None if it cannot be told."""
    admin = getattr(getattr(handle, "_systemBase", None), "adminAddr", None)
    if admin is None:
        admin = getattr(getattr(handle, "_myRef", None), "_adminAddr", None)
    return None if admin is None else str(admin)
