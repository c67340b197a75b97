"""The authenticated TCP transport of Backstage's actor systems (see the table in ``_thespian``).

Thespian 4.0.1's ``TCPTransport`` sends a message as a frame ``b"<length>>" + pickle`` and
answers each with an ACK frame; the receiving side feeds the bytes to a ``ReceiveBuffer`` whose
``completed()`` unpickles the frame. Anyone who can connect to a port could run code there.

Here, in the actor systems Backstage starts or attaches to and in no other:

* A frame's body is ``tag + HMAC-SHA256(secret, pickle) + pickle``, the tag a MAC of the
  body's length, checked as soon as its bytes are in. The buffer checks the MAC with
  ``hmac.compare_digest`` before ``pickle.loads`` sees a byte; a frame whose header is not a
  length, that claims more than ``MAX_FRAME`` bytes, whose tag or MAC is wrong is refused: nothing of
  it is unpickled, the refusal is logged at a bounded rate (peer address, never the payload) and
  the connection is closed.
* The two ACK frames stay Thespian's constants; they are recognised by equality, never
  unpickled, and refused where a message is expected.
* ``AuthenticatedTCPTransport`` is a subclass made per secret (:func:`system_base`): Thespian hands
  ``transport.__class__`` to every process it forks, so the admin, the logger and every actor of
  the system use it, and the user's own Thespian systems in the same process keep Thespian's.
  Thespian builds receive buffers inside module functions that cannot see the transport: a
  thread-local scope, set while one of these transports runs or sends, and for the whole
  process in the system's own processes, tells the buffer factory which secret applies.
* :func:`probe` lets a client check the secret (both ways: the answer carries a MAC of the
  client's nonce) before it attaches, so a wrong secret is a clear error instead of a timeout.

A MAC per frame rather than a challenge on connect: it fits at the one point where bytes become
objects, needs no new state in Thespian's connection machine (sockets are reused in both
directions) and costs about a microsecond per frame (bench/bench_auth.py). It does not stop a
replay of recorded traffic and encrypts nothing: across hosts, use a private network.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import hmac
import logging
import os
import pickle
import socket
import threading
import weakref
from datetime import timedelta
from typing import Any

from thespian.system import utilis
from thespian.system.multiprocTCPBase import ActorSystemBase as TCPSystemBase
from thespian.system.timing import ExpirationTimer, ExpirationTimerView
from thespian.system.transport import IPBase, SendStatus
from thespian.system.transport import TCPTransport as tcp
from thespian.system.transport.streamBuffer import (
    ReceiveBuffer,
    ackDataErrMsg,
    ackDataErrPacket,
    ackMsg,
    ackPacket,
    toSendBuffer,
)

from .._security import RefusalLog

__all__ = [
    "MAX_FRAME",
    "AuthenticatedTCPTransport",
    "AuthenticationRefused",
    "FrameCodec",
    "NotAnswering",
    "Scope",
    "entered",
    "install",
    "probe",
    "system_base",
]

MAC_SIZE = 32  # HMAC-SHA256
# A body is tag + MAC + pickle; the tag is the MAC of the body's length, checked as soon as
# its bytes arrive: a peer without the secret cannot make a process buffer the length it
# claims (up to MAX_FRAME per connection) before the MAC of the whole can be checked.
TAG_SIZE = MAC_SIZE
HEAD = TAG_SIZE + MAC_SIZE
MAX_FRAME = 256 << 20  # bytes: a frame claiming more is refused before it is buffered
# Accepted connections that have not yet delivered an authentic frame, per transport: past
# this, the oldest is closed. Each costs a descriptor and a turn of every wait of the loop; a
# peer without the secret could otherwise hold the process's last descriptor (its admin then
# fails to make any socket and dies) or slow every wait with thousands of idle connections.
MAX_UNPROVEN = 64
# Log records on their way to Thespian's logger from one process: at most MAX_LOGS_IN_FLIGHT
# unacknowledged, the next ones held here in order (sent as those are acknowledged), past
# MAX_LOGS_HELD dropped (the next one sent says how many were). Thespian counts them with every
# other message against its 20 transmits in flight, in one queue: a logger that stops reading
# (stopped by a signal, a full disk) left an actor that logs unable to send anything to anyone,
# and one that logs fast waited for the logger between its messages.
MAX_LOGS_IN_FLIGHT = 8
MAX_LOGS_HELD = 10_000
_PROBE = b"backstage-probe\0"  # not a pickle: every pickle Thespian sends starts with b"\x80"
_PROBED = b"backstage-probed\0"
# Thespian's ACK frames are constants (b"<n>>" + pickle): their bodies, and what they mean.
_ACKS = {
    frame.split(b">", 1)[1]: packet
    for frame, packet in ((ackMsg, ackPacket), (ackDataErrMsg, ackDataErrPacket))
}
_ACK_SIZE = max(len(body) for body in _ACKS)


class AuthenticationRefused(ConnectionError):
    """The actor system at an address did not accept this process's secret."""


class NotAnswering(TimeoutError):
    """Something accepts connections at an address but says nothing in time: an admin that is
    stopped (SIGSTOP), or too busy to read its sockets. Not a wrong secret: that is answered."""


class FrameRejected(ValueError):
    """A frame that is not an authentic one of this system's (never unpickled)."""


class FrameCodec:
    """Sign and check frame bodies with one secret."""

    __slots__ = ("_keyed", "_tags", "key")

    def __init__(self, key: bytes) -> None:
        self.key = key
        # Keyed once; a copy per frame is ~1.3 µs (hmac.digest(key, data, "sha256") looks the
        # digest up by name each time: ~8 µs here).
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)
        self._tags: dict[int, bytes] = {}  # tags by size: most frames have a size seen before

    def mac(self, data: Any) -> bytes:
        keyed = self._keyed.copy()
        keyed.update(data)
        return keyed.digest()

    def tag(self, size: int) -> bytes:
        """The tag of a body of ``size`` bytes (its first :data:`TAG_SIZE` bytes)."""
        tag = self._tags.get(size)
        if tag is None:
            if len(self._tags) >= 4096:
                self._tags.clear()
            tag = self._tags[size] = self.mac(b"backstage-frame-length\0%d" % size)
        return tag

    def body(self, data: bytes) -> bytes:
        size = HEAD + len(data)
        return self.tag(size) + self.mac(data) + data

    def dumps(self, obj: Any) -> bytes:
        return self.body(pickle.dumps(obj))  # the protocol Thespian's own serializer uses

    def authentic(self, body: bytes | bytearray) -> bool:
        view = memoryview(body)
        return (
            len(body) > HEAD
            and hmac.compare_digest(view[:TAG_SIZE], self.tag(len(body)))
            and hmac.compare_digest(view[TAG_SIZE:HEAD], self.mac(view[HEAD:]))
        )

    def frame(self, data: bytes) -> bytes:
        return b"%d>" % (HEAD + len(data)) + self.body(data)


class Scope:
    """What one Backstage actor system's transports do differently: the secret's codec, the
    host to bind to and to advertise, where Thespian's own log goes, and the refusal log."""

    __slots__ = ("codec", "host", "refusals", "thespian_log")

    def __init__(self, key: bytes | None, host: str, thespian_log: str | None) -> None:
        self.codec = None if key is None else FrameCodec(key)
        self.host = host
        self.thespian_log = thespian_log
        self.refusals = RefusalLog("backstage_actors.auth")

    def signer(self) -> FrameCodec:
        if self.codec is None:
            raise ValueError("this system does not authenticate")
        return self.codec


_local = threading.local()
_member: Scope | None = None  # set in the processes of a Backstage system (admin, logger, actors)


def current() -> Scope | None:
    return getattr(_local, "scope", None) or _member


class entered:
    """``with entered(scope):`` this thread works for ``scope``'s system meanwhile."""

    __slots__ = ("previous", "scope")

    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    def __enter__(self) -> Scope:
        self.previous = getattr(_local, "scope", None)
        _local.scope = self.scope
        return self.scope

    def __exit__(self, *exc: object) -> None:
        _local.scope = self.previous


class AuthReceiveBuffer(ReceiveBuffer):
    """Thespian's receive buffer for one frame, refusing before it unpickles."""

    _buf: bytes | bytearray

    def __init__(self, codec: FrameCodec) -> None:
        super().__init__(pickle.loads)
        self.codec = codec
        self.rejected: str | None = None
        self.checked = False
        self.tagged = False

    def addMore(self, buf: bytes) -> None:
        if self.rejected is not None:
            return
        if self._size is None:  # the header: Thespian keeps its bytes in _buf until the '>'
            head = self._buf + buf
            mark = head.find(b">")
            digits = head if mark < 0 else head[:mark]
            if len(digits) > 10 or mark == 0 or (digits and not digits.isdigit()):
                self.rejected = "data that is not a frame"
                return
            if mark > 0 and int(digits) > MAX_FRAME:
                self.rejected = f"a frame of {int(digits)} bytes (more than {MAX_FRAME})"
                return
        super().addMore(buf)
        if type(self._buf) is bytes and self._size is not None and self._size > _ACK_SIZE:
            # Thespian's buffer is bytes, and ``_buf += chunk`` copies all received so far:
            # a frame of 250 MB arriving in chunks of ~200 KB took 80 s. A bytearray grows in
            # place (its own, not Thespian's, so acknowledgements stay bytes, hashable).
            self._buf = bytearray(self._buf)
        if (
            not self.tagged
            and self._size is not None
            and self._size > _ACK_SIZE
            and len(self._buf) >= TAG_SIZE
        ):
            self.tagged = True
            if not hmac.compare_digest(bytes(self._buf[:TAG_SIZE]), self.codec.tag(self._size)):
                self.rejected = "a frame that fails authentication (its length)"

    def isDone(self) -> bool:
        return self.rejected is not None or bool(super().isDone())

    def remainingAmount(self) -> int:
        return 1 if self.rejected is not None else int(super().remainingAmount())

    def verdict(self) -> str | None:
        """None if the complete frame is an authentic message; else why it is refused."""
        if self.rejected is None and not self.checked:
            body = self._buf
            if len(body) <= _ACK_SIZE and body in _ACKS:
                self.rejected = "an acknowledgement where a message was due"
            elif not self.codec.authentic(body):
                self.rejected = "a frame that fails authentication"
            self.checked = self.rejected is None
        return self.rejected

    def is_probe(self) -> bool:
        return bytes(self._buf[HEAD : HEAD + len(_PROBE)]) == _PROBE

    def completed(self) -> Any:
        if self.rejected is not None:
            raise FrameRejected(self.rejected)
        if self._size is None or self._blen != self._size:
            return None
        body = self._buf
        if len(body) <= _ACK_SIZE and body in _ACKS:
            return _ACKS[body], self._extra  # an answer, compared, never unpickled
        if self.verdict() is not None:
            raise FrameRejected(self.rejected)
        return pickle.loads(memoryview(body)[HEAD:]), self._extra


def _receive_buffer(deserialize: Any = pickle.loads) -> Any:
    """What ``TCPTransport``'s module calls ``ReceiveBuffer``: Thespian's own outside a Backstage
    system's transport, the authenticating one inside."""
    scope = current()
    if scope is None or scope.codec is None:
        return ReceiveBuffer(deserialize)
    return AuthReceiveBuffer(scope.codec)


class _DeadlineView(ExpirationTimerView):
    def remaining(self, forever: Any = None) -> Any:
        left = super().remaining(forever)
        if left is not None and not left and not self.expired():
            return _MICROSECOND
        return left


class _Deadline(ExpirationTimer):
    """An :class:`ExpirationTimer` whose remaining time is never zero before it expires."""

    def __init__(self, timer: ExpirationTimer) -> None:
        self.duration = timer.duration
        self._time_to_quit = timer._time_to_quit

    def view(self, curtime: Any = None) -> ExpirationTimerView:
        return _DeadlineView(self.duration, self._time_to_quit, curtime)


_MICROSECOND = timedelta(microseconds=1)


class AuthenticatedTCPTransport(tcp.TCPTransport):
    """Thespian's TCP transport with authenticated frames; subclassed per system with ``scope``."""

    scope: Scope
    codec: FrameCodec | None  # None: Thespian's frames (measurements only, on loopback)

    def __init__(self, init: Any, *args: Any) -> None:
        global _member
        if isinstance(init, tcp.TCPEndpoint):  # in a process of the system's own
            drop_inherited(init)
            _member = self.scope
            if self.scope.thespian_log:
                utilis._thesplog_file = self.scope.thespian_log
                utilis._thesplog_old_file = self.scope.thespian_log + ".old"
        with entered(self.scope):
            super().__init__(init, *args)
        (_members if isinstance(init, tcp.TCPEndpoint) else _clients).add(self)

    def serializer(self, intent: Any) -> Any:
        # A memoryview: Thespian sends ``serMsg[amtSent:]`` after each partial send, a copy of
        # all that is left when it is bytes (quadratic: 80 s for a frame of 250 MB), a view here.
        if self.codec is None:
            return memoryview(bytes(super().serializer(intent)))
        return memoryview(toSendBuffer((self.myAddress, intent.message), self.codec.dumps))

    def _runWithExpiry(self, incomingHandler: Any) -> Any:
        with entered(self.scope):
            return super()._runWithExpiry(incomingHandler)

    # The deadline of the transport's wait (its next wakeup): Thespian's loop waits on its
    # sockets for ``run_time.view(now).remaining()``, a timedelta, and leaves out delays that are
    # false. Less than half a microsecond before the deadline the remaining time rounds to
    # timedelta(0): the loop then waits with no timeout at all, and the wakeup (a subscriber's
    # next page, its slow poll) comes only when some message happens to arrive. Here a deadline
    # not yet passed always has at least a microsecond left.
    @property
    def run_time(self) -> Any:
        return self._run_time

    @run_time.setter
    def run_time(self, timer: Any) -> None:
        self._run_time = _Deadline(timer) if type(timer) is ExpirationTimer else timer

    def scheduleTransmit(self, address_manager: Any, intent: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(intent.message, logging.LogRecord):
            self._logs().hold(address_manager, intent)
            return None
        with entered(self.scope):
            return super().scheduleTransmit(address_manager, intent, *args, **kwargs)

    def _logs(self) -> _LogRecords:
        logs = self.__dict__.get("_log_records")
        if logs is None:
            logs = self.__dict__["_log_records"] = _LogRecords(self._send_log)
        return logs

    def _send_log(self, address_manager: Any, intent: Any) -> None:
        with entered(self.scope):
            super().scheduleTransmit(address_manager, intent)

    def _acceptNewIncoming(self) -> Any:
        if self.codec is None:
            return super()._acceptNewIncoming()
        before = {fd: inc.socket for fd, inc in self._incomingSockets.items()}
        try:
            return super()._acceptNewIncoming()
        finally:  # the connection accepted is the socket that was not there before
            self._cap_unproven(
                (fd, inc.socket)
                for fd, inc in self._incomingSockets.items()
                if before.get(fd) is not inc.socket
            )

    def _cap_unproven(self, accepted: Any) -> None:
        """Note sockets just accepted (nothing read yet); close the oldest unproven ones
        beyond :data:`MAX_UNPROVEN`."""
        unproven = self.__dict__.setdefault("_unproven", {})
        for fd, known in list(unproven.items()):  # forget the ones closed meanwhile
            inc = self._incomingSockets.get(fd)
            if inc is None or inc.socket is not known:
                del unproven[fd]
        unproven.update(accepted)
        while len(unproven) > MAX_UNPROVEN:
            fd = next(iter(unproven))
            del unproven[fd]
            inc = self._incomingSockets.pop(fd)
            self._refuse(inc.socket, "a connection that sent no authentic frame in time")
            inc.close()

    def _addedDataToIncoming(self, inc: Any, *args: Any, **kwargs: Any) -> Any:
        if self.codec is not None and inc.receivedAllData():
            buffer = inc._rData
            if isinstance(buffer, AuthReceiveBuffer):
                verdict = buffer.verdict()
            else:
                verdict = "a frame read without authentication"
            if verdict is not None:
                self._refuse(inc.socket, verdict)
                inc.close()
                return None
            with contextlib.suppress(AttributeError, OSError):
                if self._unproven.get(inc.socket.fileno()) is inc.socket:
                    del self._unproven[inc.socket.fileno()]
            if buffer.is_probe():
                self._answer_probe(inc, bytes(buffer._buf[HEAD + len(_PROBE) :]))
                return None
        return super()._addedDataToIncoming(inc, *args, **kwargs)

    def _check_XMIT_4_done(self, intent: Any, rcv: Any) -> Any:
        try:
            return super()._check_XMIT_4_done(intent, rcv)
        except FrameRejected as exc:  # the peer is not of this system: retry, as on a bad ACK
            self._refuse(intent.socket, f"an answer: {exc}")
            intent.backoffPause(True)
            intent.stage = self._XMITStepRetry
            return self._nextTransmitStep(intent)

    def external_transport_clone(self) -> Any:
        return self.__class__(
            tcp.ExternalTransportCopy(),
            self._adminAddr,
            self.txOnly,
            isinstance(self.myAddress.addressDetails, tcp.RoutedTCPv4ActorAddress),
        )

    def _refuse(self, sock: Any, what: str) -> None:
        try:
            host, port = sock.getpeername()[:2]
            peer = f"{host}:{port}"
        except (OSError, AttributeError, TypeError, ValueError):
            peer = "a peer that is gone"
        self.scope.refusals.refused(f"{what} (port {self.myAddress})", peer)

    def _answer_probe(self, inc: Any, nonce: bytes) -> None:
        with contextlib.suppress(OSError):
            inc.socket.send(self.scope.signer().frame(_PROBED + nonce))
        inc.close()


class _LogRecords:
    """One process's log records for Thespian's logger (see :data:`MAX_LOGS_IN_FLIGHT`)."""

    __slots__ = ("dropped", "held", "in_flight", "send", "sending")

    def __init__(self, send: Any) -> None:
        self.send = send
        self.in_flight = 0
        self.held: collections.deque[tuple[Any, Any]] = collections.deque()
        self.dropped = 0
        self.sending = False

    def hold(self, address_manager: Any, intent: Any) -> None:
        if len(self.held) >= MAX_LOGS_HELD:
            self.dropped += 1
            intent.tx_done(SendStatus.Failed)
            return
        self.held.append((address_manager, intent))
        self.flush()

    def flush(self) -> None:
        if self.sending:  # (an intent that failed at once, inside send: the loop goes on)
            return
        self.sending = True
        try:
            while self.held and self.in_flight < MAX_LOGS_IN_FLIGHT:
                address_manager, intent = self.held.popleft()
                if self.dropped:
                    intent.message.msg = (
                        f"[{self.dropped} log records of this process were dropped before this "
                        f"one: Thespian's logger did not take them in time] {intent.message.msg}"
                    )
                    self.dropped = 0
                self.in_flight += 1
                intent.addCallback(self.done, self.done)
                self.send(address_manager, intent)
        finally:
            self.sending = False

    def done(self, result: Any, intent: Any) -> None:
        self.in_flight -= 1
        self.flush()


# The transports of this process and of the processes it was forked from: the clients
# (``attach``, a thread's endpoint, the transport of the process that starts a system) and the
# system's own, whose sockets a process forked from here must let go of (see drop_inherited).
_clients: weakref.WeakSet[AuthenticatedTCPTransport] = weakref.WeakSet()
_members: weakref.WeakSet[AuthenticatedTCPTransport] = weakref.WeakSet()
LOGGER_INSTANCE = -1  # the instance number Thespian gives its logger's endpoint


def _transport_sockets(transport: Any) -> list[socket.socket]:
    """Every socket ``transport`` holds: its listening one and its connections."""
    held = [getattr(transport, "socket", None)]
    for attribute in ("_incomingSockets", "_transmitIntents", "_openSockets"):
        held += [
            getattr(each, "socket", None) for each in getattr(transport, attribute, {}).values()
        ]
    return [sock for sock in held if isinstance(sock, socket.socket)]


def drop_inherited(endpoint: Any) -> None:
    """In a process of a system just forked (its admin, its logger, an actor), before its own
    transport exists: close the sockets it inherited that are not its own. A fork closes
    nothing, close-on-exec or not. The admin forks from the process that starts the system
    (``backstage start``), whose transport listens for the admin's answer: every process of
    the daemon held that listening socket, kept its port bound after the starter exited and
    could accept connections meant for it. Thespian's logger, forked from the admin, kept the
    admin's listening socket and connections (Thespian closes those in the actors it forks,
    not in its logger). Each socket is detached first, so that the objects left over from the
    parent (never used here) cannot close a descriptor number this process reuses."""
    inherited = list(_clients)
    if endpoint.args[0] == LOGGER_INSTANCE:  # (an actor's: Thespian closed them already)
        inherited += list(_members)
    for transport in inherited:
        for sock in _transport_sockets(transport):
            with contextlib.suppress(OSError):
                os.close(sock.detach())
    _clients.clear()
    _members.clear()


def system_base(scope: Scope) -> type:
    """A multiprocTCPBase whose transports authenticate with ``scope``'s secret (Thespian's
    frames if it has none: measurements only)."""
    attributes = {"scope": scope, "codec": scope.codec, "__module__": __name__}
    transport = type("BackstageTCPTransport", (AuthenticatedTCPTransport,), attributes)
    return type(
        "BackstageTCPBase", (TCPSystemBase,), {"transportType": transport, "__module__": __name__}
    )


def probe(host: str, port: int, key: bytes, timeout: float = 5.0) -> bool | None:
    """Whether the actor system at ``host:port`` holds ``key``: True; False if something
    listens there and answers, but not as one that holds it; None if nothing listens.
    :class:`NotAnswering` if the connection is accepted (the kernel does that for a process
    that is stopped, too) but no answer comes within ``timeout`` seconds: that says nothing
    about the secret."""
    codec = FrameCodec(key)
    nonce = os.urandom(16)
    expected = codec.frame(_PROBED + nonce)
    try:
        sock = socket.create_connection((host, port), timeout)
    except TimeoutError:  # (a full queue of connections: someone listens, and is not reading)
        raise NotAnswering(f"{host}:{port} did not accept a connection within {timeout}s") from None
    except OSError:
        return None
    answer = b""
    with sock:
        try:
            sock.sendall(codec.frame(_PROBE + nonce))
            while len(answer) < len(expected) and answer == expected[: len(answer)]:
                chunk = sock.recv(4096)
                if not chunk:  # (it hung up)
                    break
                answer += chunk
        except TimeoutError:
            if answer:  # (it answered something, just not all of it: not a holder's answer)
                return False
            raise NotAnswering(
                f"{host}:{port} accepts connections but did not answer within {timeout}s"
            ) from None
        except OSError:
            return False
    return hmac.compare_digest(answer, expected)


_installed = False


def install() -> None:
    """Patch the two module-level names the transport reads at call time (inert for every
    transport but ``AuthenticatedTCPTransport``): its ``ReceiveBuffer`` factory, and
    ``IPActorAddress.__init__`` so that a Backstage system binds to and advertises its host."""
    global _installed
    if _installed:
        return
    tcp.ReceiveBuffer = _receive_buffer
    original = IPBase.IPActorAddress.__init__

    def __init__(
        self: Any,
        af: Any,
        socktype: Any,
        proto: Any,
        baseaddr: Any,
        port: Any,
        external: Any = False,
    ) -> None:
        scope = current()
        host = scope.host if scope is not None and scope.host != "0.0.0.0" else None
        if host and (baseaddr is None or (external and baseaddr in ("", "0.0.0.0"))):
            baseaddr = host  # what THESPIAN_BASE_IPADDR would say, for this system only
        original(self, af, socktype, proto, baseaddr, port, external)
        if host and self.bindname[0] in ("", "0.0.0.0"):
            self.bindname = (host, self.bindname[1])

    IPBase.IPActorAddress.__init__ = __init__
    _installed = True
